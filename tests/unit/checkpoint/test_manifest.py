from __future__ import annotations

import json

import pytest

from ftharness.checkpoint.manifest import (
    MAX_MANIFEST_BYTES,
    CorruptCheckpointError,
    FileEntry,
    Manifest,
    WriterInfo,
    check_file_name,
)


def good_record(**changes) -> dict:
    manifest = Manifest(
        step=20,
        epoch=2,
        batch=3,
        files={"arrays.bin": FileEntry(10, 123), "state.json": FileEntry(2, 0)},
        writer=WriterInfo("host-1", 42, "run-1"),
        created=1_700_000_000.5,
    )
    record = json.loads(manifest.to_json())
    record.update(changes)
    return record


def parse(record: dict | str) -> Manifest:
    text = record if isinstance(record, str) else json.dumps(record)
    return Manifest.from_json(text, "ckpt-000000000020")


def test_a_manifest_round_trips():
    manifest = parse(good_record())
    assert manifest.step == 20 and manifest.files["arrays.bin"] == FileEntry(10, 123)
    assert Manifest.from_json(manifest.to_json().encode(), "x") == manifest


@pytest.mark.parametrize(
    "name",
    [
        "../../PWNED",
        "/etc/passwd",
        "a/b",
        ".",
        "..",
        "",
        "a\0b",
        "a\nb",
        "\x1b[2J",
        "é",
        "x" * 256,
        "manifest.json",
        "a b",
        "a\\b",
    ],
)
def test_a_file_name_that_is_not_one_plain_component_makes_the_checkpoint_corrupt(name):
    record = good_record()
    record["files"][name] = {"size": 1, "crc32": 1}
    with pytest.raises(CorruptCheckpointError) as raised:
        parse(record)
    assert "file name" in raised.value.reason
    assert raised.value.location == "ckpt-000000000020"


@pytest.mark.parametrize("name", ["arrays.bin", "state.json", "a-b_c.1", "x" * 255, "..."])
def test_plain_names_are_allowed(name):
    assert check_file_name(name) == name


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("epoch", "1e400"),
        ("epoch", "-1"),
        ("epoch", "1.5"),
        ("epoch", "true"),
        ("epoch", '"2"'),
        ("epoch", str(2**64)),
        ("step", "-20"),
        ("batch", "null"),
        ("created", "NaN"),
        ("created", "Infinity"),
        ("created", "1e300"),
        ("created", "-1"),
        ("format_version", "0"),
        ("format_version", "2"),
        ("files", "[]"),
        ("writer", "7"),
    ],
)
def test_a_number_out_of_range_makes_the_checkpoint_corrupt(field, raw):
    record = good_record(**{field: "__RAW__"})
    text = json.dumps(record).replace('"__RAW__"', raw)
    with pytest.raises(CorruptCheckpointError, match="unreadable manifest"):
        parse(text)


@pytest.mark.parametrize(
    ("field", "value"),
    [("size", -1), ("size", 2**51), ("crc32", 2**32), ("crc32", -1), ("size", True)],
)
def test_file_entries_are_range_checked(field, value):
    record = good_record()
    record["files"]["arrays.bin"][field] = value
    with pytest.raises(CorruptCheckpointError):
        parse(record)


def test_duplicate_keys_make_the_checkpoint_corrupt():
    text = json.dumps(good_record()).replace('"step": 20', '"step": 20, "step": 10')
    with pytest.raises(CorruptCheckpointError, match="appears twice"):
        parse(text)


def test_deep_nesting_makes_the_checkpoint_corrupt():
    text = json.dumps(good_record(extra="__RAW__")).replace('"__RAW__"', "[" * 10**5 + "]" * 10**5)
    with pytest.raises(CorruptCheckpointError, match="nested deeper"):
        parse(text)


def test_a_manifest_over_the_size_bound_is_corrupt():
    text = json.dumps(good_record(padding="x" * MAX_MANIFEST_BYTES))
    with pytest.raises(CorruptCheckpointError, match="allowed"):
        parse(text)


def test_writer_strings_are_bounded_but_kept_verbatim():
    record = good_record()
    record["writer"]["host"] = "evil\x1b[2J\nhost"
    assert parse(record).writer.host == "evil\x1b[2J\nhost"  # shown escaped, see untrusted
    record["writer"]["host"] = "h" * 1025
    with pytest.raises(CorruptCheckpointError, match="at most 1024"):
        parse(record)
