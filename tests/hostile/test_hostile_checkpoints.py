"""The hostile-checkpoint suite: damaged and crafted checkpoints against every reader.

Each case damages or crafts the newest of two checkpoints (see `crafted`),
then runs what reads a backup: `ls`, `ls --verify`, `verify`, `verify
--json`, `gc --keep 2 --dry-run`, `gc --keep 2`, `status` (in process,
through `ftharness.cli.main`), the supervisor's start-up fetch from the
backup as a file:// remote into a fresh local directory, and the worker's
restore. Every one must end with its documented exit code and no exception
(a traceback), within a deadline (no hang); afterwards the intact previous
checkpoint and everything outside the backup are byte for byte what they
were (nothing lost, nothing written outside), and the restore and the fetch
land on the checkpoint `verify` says they would.

A chosen subset runs through real `ftharness supervise` subprocesses too.
Cases tried per family are counted and printed at the end of the session.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import select
import signal
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import psutil
import pytest
from hostile.counts import COUNTS
from hostile.crafted import (
    DATA,
    NEWEST,
    PREVIOUS,
    STATE,
    Damage,
    build_case,
    crafted_record,
    duplicate_key,
    flip_bit,
    huge_manifest,
    named,
    raw_field,
    set_file_entry,
    special_file,
    symlink_outside,
    tree_digest,
    truncate,
    writer_string,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import BASE_ENV, PYTHON, ftharness_command

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.cli import main
from ftharness.startup import fetch_newest

ALLOWED = re.compile(r"[A-Za-z0-9._-]+")
DEADLINE_SECONDS = 20  # per command; a hang is the failure, not slowness
CHILD_MEMORY = 2 * 1024**3  # bytes of address space for one case's readers
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure reproduces
    suppress_health_check=[HealthCheck.too_slow],
)


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(what: str):
    """Fail (instead of waiting forever) when `what` blocks: SIGALRM interrupts it."""

    def alarm(signum, frame):
        raise Hang(f"{what} did not finish within {DEADLINE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, DEADLINE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with no_hang(" ".join(args)), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def assert_one_line_messages(stderr: str, command: str) -> None:
    assert "Traceback" not in stderr, f"{command}: {stderr}"
    for line in stderr.splitlines():
        assert line.startswith("ftharness: ") or line.startswith("  "), (
            f"{command}: stderr line that is not one of ours: {line!r}"
        )


def check_every_reader(damage: Damage) -> None:
    """`every_reader(damage)` in a forked child, killed if it outlives its deadline.

    In a child because a reader that loops in C (reading /dev/zero to its
    end) never returns to Python, where SIGALRM could stop it; the child's
    address space is limited too, so such a read fails instead of eating the
    machine's memory.
    """
    COUNTS[damage.family] += 1
    isolated(damage.label, every_reader, damage)


def isolated(label: str, function, *args) -> None:
    """Run `function(*args)` in a forked child with bounded memory and time."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, never return into pytest
        os.close(read_end)
        # On top of what the process already maps: a pytest worker that has
        # imported TensorFlow maps gigabytes of address space it never uses.
        limit = psutil.Process().memory_info().vms + CHILD_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            function(*args)
            report = b""
        except BaseException:
            report = traceback.format_exc().encode()
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(report)
        os._exit(0)
    os.close(write_end)
    report, deadline = b"", time.monotonic() + 4 * DEADLINE_SECONDS
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"{label}: hung (killed after {4 * DEADLINE_SECONDS} s)")
            chunk = pipe.read(65536)
            if not chunk:
                break
            report += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"{label}: the child died ({status})"
    if report:
        pytest.fail(f"{label}:\n{report.decode(errors='replace')}", pytrace=False)


def every_reader(damage: Damage) -> None:
    """Build a case, damage it, run every reader on it, check what must hold."""
    with tempfile.TemporaryDirectory(prefix="hostile-") as temporary:
        case = build_case(Path(temporary))
        damage.apply(case)
        previous = tree_digest(case.previous)
        outside = tree_digest(case.outside)
        entries = set(os.listdir(case.root))

        def unchanged(after: str) -> None:
            assert tree_digest(case.previous) == previous, f"{damage.label}: {after} changed it"
            assert tree_digest(case.outside) == outside, f"{damage.label}: {after} wrote outside"
            assert set(os.listdir(case.root)) <= entries | {"local"}, (
                f"{damage.label}: {after} wrote beside the backup: {os.listdir(case.root)}"
            )

        url = str(case.backup)
        readers = (["ls"], ["ls", "--verify"], ["ls", "--json"], ["status"], ["status", "--json"])
        for args in readers:
            code, _out, err = cli(args[0], url, *args[1:])
            assert code == 0, f"{damage.label}: {args} exit {code}: {err}"
            assert_one_line_messages(err, f"{damage.label}: {args}")
            unchanged(" ".join(args))

        code, out, err = cli("verify", url)
        assert_one_line_messages(err, f"{damage.label}: verify")
        if damage.corrupts:
            assert code == 66, f"{damage.label}: verify exit {code}: {out} {err}"
            assert f"fall back to {PREVIOUS}" in err, err
        else:
            assert code in (0, 66), f"{damage.label}: verify exit {code}: {err}"
        intact_newest = code == 0
        json_code, out, err = cli("verify", url, "--json")
        assert json_code == code and isinstance(json.loads(out), list), damage.label
        unchanged("verify")

        for args in (["--keep", "2", "--dry-run"], ["--keep", "2"]):
            code, _out, err = cli("gc", url, *args)
            assert code == 0, f"{damage.label}: gc {args} exit {code}: {err}"
            assert_one_line_messages(err, f"{damage.label}: gc {args}")
            unchanged(f"gc {args}")

        # The supervisor's start-up fetch: the backup as a file:// remote.
        remote_before = tree_digest(case.backup)
        local = LocalCheckpointStore(case.root / "local")
        with no_hang("the start-up fetch"):
            fetch_newest(RemoteCheckpointStore(f"file://{case.backup}"), local)
        fetched = [ref.name for ref in local.list_committed()]
        assert fetched == [NEWEST if intact_newest else PREVIOUS], f"{damage.label}: {fetched}"
        assert local.verify(local.list_committed()[-1]) == []
        assert tree_digest(case.backup) == remote_before, f"{damage.label}: the fetch changed it"
        unchanged("the start-up fetch")

        # The worker's restore, from the damaged directory itself.
        with no_hang("the restore"):
            loaded = LocalCheckpointStore(case.backup).load_latest()
        assert loaded is not None
        assert loaded.ref.name == (NEWEST if intact_newest else PREVIOUS), damage.label
        assert json.loads(bytes(loaded.files[STATE])) == {"step": loaded.ref.step}
        unchanged("the restore")


# -- the families --------------------------------------------------------------------


@SETTINGS
@given(file_name=st.sampled_from([DATA, STATE, MANIFEST_NAME]), keep=st.integers(0, 5000))
def test_truncated_files(file_name, keep):
    check_every_reader(truncate(file_name, keep))


@SETTINGS
@given(
    file_name=st.sampled_from([DATA, STATE, MANIFEST_NAME]),
    offset=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_flipped_bits(file_name, offset, bit):
    check_every_reader(flip_bit(file_name, offset, bit))


@SETTINGS
@given(
    field=st.sampled_from(["size", "crc32"]),
    value=st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
        st.text(max_size=5),
    ),
)
def test_wrong_sizes_and_checksums(field, value):
    check_every_reader(set_file_entry(field, value))


ABSURD = [
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "-1",
    "1.5",
    "true",
    "null",
    '"20"',
    "[]",
    "{}",
    "1" * 30,
    "1" * 5000,
    str(2**64),
    "1e308",
]
FIELDS = [
    ("step",),
    ("epoch",),
    ("batch",),
    ("created",),
    ("format_version",),
    ("writer", "pid"),
    ("files", DATA, "size"),
    ("files", DATA, "crc32"),
    ("writer",),
    ("files",),
]


@SETTINGS
@given(path=st.sampled_from(FIELDS), raw=st.sampled_from(ABSURD))
def test_absurd_numbers(path, raw):
    check_every_reader(raw_field(path, raw))


@SETTINGS
@given(path=st.sampled_from(FIELDS), depth=st.integers(33, 200_000), objects=st.booleans())
def test_deep_json(path, depth, objects):
    raw = '{"a":' * depth + "1" + "}" * depth if objects else "[" * depth + "]" * depth
    check_every_reader(raw_field(path, raw))


@pytest.mark.parametrize("size", [MAX_MANIFEST_BYTES + 1, 4 * MAX_MANIFEST_BYTES])
def test_huge_manifests(size):
    check_every_reader(huge_manifest(size))


@SETTINGS
@given(size=st.integers(2**40, 2**80))
def test_huge_sizes_in_the_manifest(size):
    check_every_reader(set_file_entry("size", size, family="huge size"))


SPECIAL_KINDS = [
    "fifo",
    "symlink to /dev/zero",
    "symlink to /dev/urandom",
    "char device",
    "directory",
    "socket",
]


@pytest.mark.parametrize("target", [DATA, MANIFEST_NAME])
@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_special_files(target, kind):
    check_every_reader(special_file(target, kind))


@pytest.mark.parametrize("what", ["data file", "manifest", "checkpoint directory"])
def test_symlinks_out_of_the_backup(what):
    check_every_reader(symlink_outside(what))


TRAVERSALS = [
    "../../PWNED",
    "../outside/secret",
    "../../outside/secret",
    "{OUTSIDE}/secret",
    "/etc/passwd",
    "sub/dir",
    ".",
    "..",
    "",
    "manifest.json",
    "a\nb",
    "\x1b[2Jx",
    "é",
    "x" * 256,
    " ",
    "arrays.bin/",
    "./arrays.bin",
    "..\\..\\PWNED",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_and_odd_names(name):
    check_every_reader(named(name))


@SETTINGS
@given(name=st.text(max_size=40).filter(lambda n: not ALLOWED.fullmatch(n) or n in (".", "..")))
def test_generated_odd_names(name):
    check_every_reader(named(name))


@SETTINGS
@given(before=st.text(max_size=8), after=st.text(max_size=8))
def test_nul_in_names(before, after):
    check_every_reader(named(f"{before}\0{after}"))


@pytest.mark.parametrize("where", ["step", "files", "file entry"])
def test_duplicate_keys(where):
    check_every_reader(duplicate_key(where))


@SETTINGS
@given(field=st.sampled_from(["host", "run_id"]), value=st.text(max_size=60))
def test_odd_writer_strings(field, value):
    check_every_reader(writer_string(field, value))


def test_escape_sequences_in_the_writer_are_shown_escaped(tmp_path):
    isolated("escapes in the writer", ls_shows_the_writer_escaped, tmp_path)


def ls_shows_the_writer_escaped(tmp_path: Path) -> None:
    case = build_case(tmp_path)
    writer_string("host", "evil\x1b[2J\nFAKE LINE\u202e").apply(case)
    code, out, _err = cli("ls", str(case.backup))
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out
    assert "evil\\x1b[2J\\x0aFAKE LINE\\u202e" in out
    assert len(out.splitlines()) == 3  # the header and two checkpoints: no forged line


RECORD_FIELDS = [
    "launched_at",
    "updated_at",
    "attempt",
    "start_step",
    "checkpoints",
    "stop",
    "end",
    "run_id",
    "host",
]
RECORD_VALUES = [
    *ABSURD,
    "1e300",
    "-5",
    '"x"',
    '[{"step": 1e400, "committed_at": 1, "seen_at": 1, "bytes": 1}]',
    '{"signal": "SIGNOPE", "requested_at": 1}',
    '{"signal": "SIGTERM", "requested_at": 1e300}',
    '"' + "\\u001b[2J" * 50 + '"',
    "[" * 5000 + "]" * 5000,
]


@SETTINGS
@given(field=st.sampled_from(RECORD_FIELDS), raw=st.sampled_from(RECORD_VALUES))
def test_crafted_event_records_are_skipped_with_one_line(field, raw):
    COUNTS["event record"] += 1
    isolated(f"{field} = {raw[:40]}", status_skips_the_crafted_record, field, raw)


def status_skips_the_crafted_record(field: str, raw: str) -> None:
    with tempfile.TemporaryDirectory(prefix="hostile-") as temporary:
        case = build_case(Path(temporary))
        crafted_record(case, field, raw)
        for args in (["status", str(case.backup)], ["status", str(case.backup), "--json"]):
            code, out, err = cli(*args)
            assert code == 0, f"{field}={raw[:40]}: {args} exit {code}: {err}"
            assert_one_line_messages(err, f"{field}={raw[:40]}")
            assert "\x1b" not in out and "\x1b" not in err
            # The real record is still told (the crafted one may be, if it is harmless).
            assert "1 attempt" in out or "2 attempts" in out or '"attempts"' in out, out


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero"])
def test_special_files_among_event_records_are_skipped(tmp_path, kind):
    COUNTS["event record"] += 1
    isolated(kind, status_skips_the_special_record, tmp_path, kind)


def status_skips_the_special_record(tmp_path: Path, kind: str) -> None:
    case = build_case(tmp_path)
    path = case.backup / ".ftharness" / "events" / "special.json"
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    code, out, err = cli("status", str(case.backup))
    assert code == 0, err
    assert "special.json: unreadable event record (no content)" in err
    assert "1 attempt" in out


# -- through the real processes: `ftharness supervise` and its worker ---------------

RESTORING_WORKER = (
    "from ftharness.worker import WorkerSession\n"
    "session = WorkerSession.open(None)\n"
    "loaded = session.load_latest()\n"
    "print('RESTORED', loaded.ref.name if loaded else None, flush=True)\n"
)
THROUGH_PROCESSES = [
    named("../../PWNED"),
    named("{OUTSIDE}/PWNED"),
    named("../../outside/secret"),
    named("a\0b"),
    special_file(DATA, "fifo"),
    special_file(MANIFEST_NAME, "symlink to /dev/zero"),
    special_file(DATA, "char device"),
    raw_field(("epoch",), "1e400"),
    raw_field(("created",), "NaN"),
    duplicate_key("step"),
    symlink_outside("data file"),
    raw_field(("files",), "[" * 100_000 + "]" * 100_000),
]


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 * CHILD_MEMORY, 2 * CHILD_MEMORY))


@pytest.mark.parametrize("damage", THROUGH_PROCESSES, ids=lambda d: d.label)
@pytest.mark.parametrize("tier", ["remote file:// into a fresh local dir", "local"])
def test_supervise_and_its_worker_fall_back(tmp_path, damage, tier):
    """The start-up fetch and the worker's restore, as real processes, land on the previous."""
    COUNTS[f"through supervise ({damage.family})"] += 1
    case = build_case(tmp_path)
    damage.apply(case)
    previous, outside = tree_digest(case.previous), tree_digest(case.outside)
    entries = set(os.listdir(tmp_path))
    if tier == "local":
        where = ["--backup-dir", str(case.backup)]
    else:
        where = ["--backup-dir", f"file://{case.backup}", "--local-dir", str(tmp_path / "local")]
    result = subprocess.run(
        ftharness_command(
            "supervise", *where, "--max-restarts", "0", "--", PYTHON, "-c", RESTORING_WORKER
        ),
        capture_output=True,
        text=True,
        timeout=180,
        env=BASE_ENV,
        cwd=tmp_path,
        preexec_fn=limit_memory,  # a reader of /dev/zero fails instead of eating the machine
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output, output
    assert f"RESTORED {PREVIOUS}" in output, output
    assert tree_digest(case.previous) == previous, output
    assert tree_digest(case.outside) == outside, "wrote outside the backup"
    assert set(os.listdir(tmp_path)) <= entries | {"local"}, os.listdir(tmp_path)
    assert not (tmp_path / "PWNED").exists() and not Path("/PWNED").exists()
