"""Verification through the reader: sizes, checksums, damage named file by file."""

from __future__ import annotations

import io
import os
import select

import pytest

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import MANIFEST_NAME, WriterInfo
from ftharness.inspect.backup import BackupError, open_backup
from ftharness.inspect.verify import check_sizes, verify_checkpoint
from ftharness.progress import Progress, human_bytes


@pytest.fixture
def backup(tmp_path):
    store = LocalCheckpointStore(tmp_path)
    for step in (10, 20):
        store.commit(
            step=step,
            epoch=1,
            batch=step,
            files={"arrays.bin": [os.urandom(3000)], "state.json": [b"{}"]},
            writer=WriterInfo("h", 1, "r"),
        )
    return open_backup(f"file://{tmp_path}")


def newest(backup):
    return backup.list_committed()[-1]


def test_an_intact_checkpoint_passes_both_checks(backup):
    sized, full = check_sizes(backup, newest(backup)), verify_checkpoint(backup, newest(backup))
    assert sized.intact and full.intact
    assert (sized.checksums, full.checksums) == (False, True)
    assert full.manifest is not None and full.manifest.step == 20


def test_flipped_bytes_fail_only_the_checksum(backup):
    path = newest(backup).path / "arrays.bin"
    data = bytearray(path.read_bytes())
    data[1234] ^= 0x01
    path.write_bytes(data)
    assert check_sizes(backup, newest(backup)).intact  # same size: the cheap check cannot tell
    verdict = verify_checkpoint(backup, newest(backup))
    assert verdict.problems == ("arrays.bin fails its checksum",)


def test_truncated_and_missing_files_are_named(backup):
    ref = newest(backup)
    (ref.path / "arrays.bin").write_bytes(b"short")
    (ref.path / "state.json").unlink()
    expected = ("arrays.bin has 5 bytes, manifest says 3000", "state.json is missing")
    assert check_sizes(backup, ref).problems == expected
    assert verify_checkpoint(backup, ref).problems == expected


def test_an_unreadable_manifest_is_damage(backup):
    ref = newest(backup)
    (ref.path / MANIFEST_NAME).write_text("{not json")
    verdict = verify_checkpoint(backup, ref)
    assert verdict.manifest is None
    assert len(verdict.problems) == 1 and "unreadable manifest" in verdict.problems[0]


def test_urls_no_filesystem_serves(tmp_path):
    with pytest.raises(BackupError, match="nosuchprotocol://bucket/run"):
        open_backup("nosuchprotocol://bucket/run")
    with pytest.raises(BackupError, match="no such backup directory"):
        open_backup(str(tmp_path / "absent"))


def test_progress_is_drawn_on_a_terminal_only():
    quiet = io.StringIO()
    progress = Progress("verifying", total=100, stream=quiet)
    progress.advance(50)
    progress.done()
    assert quiet.getvalue() == ""

    leader, follower = os.openpty()  # a real terminal
    with open(follower, "w") as terminal:
        shown = Progress("verifying ckpt", total=2048, stream=terminal)
        shown.advance(1024)
        shown.done()
        terminal.flush()
        # Read while the terminal is open (after it closes, reads fail with
        # EIO), until nothing more comes: the line may arrive in pieces.
        drawn = b""
        while select.select([leader], [], [], 0.5)[0]:
            drawn += os.read(leader, 4096)
    drawn = drawn.decode()
    os.close(leader)
    assert "verifying ckpt:  50% of 2.0 KiB" in drawn
    assert drawn.endswith("\r\x1b[K")  # the line is cleared for the result


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
    ]
