"""The inspection subcommands: `ls`, `verify`, `status`, `timeline`, `gc`.

`add_subcommands()` adds them to the `ftharness` parser; `run()` runs the
one parsed and returns its exit code:

    0   done (verify: the checkpoint is intact)
    64  usage error: bad arguments, a URL that names no backup, no such
        checkpoint, a missing optional extra (matplotlib for `timeline`)
    66  verify: the checkpoint is damaged, or there is none (CHECKPOINT_DAMAGED)
    73  a backup cannot be read or written: a remote one (credentials, endpoint,
        bucket, unreachable host), a local one the system refuses (another
        user's directory, a read-only mount)
    75  gc: another run holds the backup directory's lock (BACKUP_DIR_LOCKED)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftharness import config
from ftharness.checkpoint.lock import DirectoryLockedError
from ftharness.checkpoint.manifest import MAX_STEP, checkpoint_name, step_of
from ftharness.events import EVENTS_DIR, AttemptRecord, read_records
from ftharness.exitcodes import ExitCode
from ftharness.inspect import gc, report
from ftharness.inspect.backup import (
    BackupError,
    BackupReader,
    BackupUnreachableError,
    LocalBackup,
    RefT,
    RemoteBackup,
    open_backup,
)
from ftharness.inspect.story import implausible, tell
from ftharness.inspect.verify import Verdict, check_sizes, verify_checkpoint
from ftharness.logs import print_error
from ftharness.progress import human_bytes
from ftharness.redact import describe_error, redact_url
from ftharness.untrusted import shown

NAMES = ("ls", "verify", "status", "timeline", "gc")


class _Refused(Exception):
    """Ends a command with a one-line message and an exit code."""

    def __init__(self, message: str, code: int = ExitCode.USAGE_ERROR) -> None:
        super().__init__(message)
        self.code = int(code)


def add_subcommands(commands: argparse._SubParsersAction) -> None:
    ls = commands.add_parser(
        "ls",
        help="list the checkpoints of a backup, newest first",
        description="List the committed checkpoints under URL, newest first: step, epoch, "
        "batch, size, age, writer, and a check (sizes against the manifest; --verify "
        "recomputes the checksums).",
    )
    ls.add_argument("url", metavar="URL", help="the backup directory (a path or file:// URL)")
    ls.add_argument("--verify", action="store_true", help="recompute every checksum (reads all)")
    ls.add_argument("--json", action="store_true", help="one JSON array on stdout")

    verify = commands.add_parser(
        "verify",
        help="recompute a checkpoint's checksums; exit 0 only if it is intact",
        description="Recompute the sizes and CRC-32s of the newest checkpoint under URL (or "
        "CKPT: a name like ckpt-000000000040, or a step). Exit 0 if it is intact, 66 if it "
        "is damaged or there is none; a damaged newest one is followed by the older ones "
        "until one is intact, which is where a restore would fall back to.",
    )
    verify.add_argument("url", metavar="URL")
    verify.add_argument("checkpoint", nargs="?", metavar="CKPT", help="name or step")
    verify.add_argument("--json", action="store_true", help="the verdicts as JSON on stdout")

    status = commands.add_parser(
        "status",
        help="the run's story: attempts, interruptions, lost work, goodput",
        description="Tell what the run under URL did, from the event records the supervisor "
        "keeps beside the checkpoints (.ftharness/events/): each attempt, how it ended, the "
        "work each interruption cost, where the wall time went, and the goodput.",
    )
    status.add_argument("url", metavar="URL")
    status.add_argument("--json", action="store_true", help="the story as JSON on stdout")

    timeline = commands.add_parser(
        "timeline",
        help="draw the run's attempts and checkpoints on a time axis (.png, .svg, .html)",
        description="Draw the run under URL: attempts as bars, checkpoints as ticks, stop "
        "signals and crashes marked, goodput in the title. Needs matplotlib "
        "(pip install 'ftharness[plot]').",
    )
    timeline.add_argument("url", metavar="URL")
    timeline.add_argument("-o", "--output", required=True, type=Path, metavar="PATH")
    timeline.add_argument("--size", type=_size, metavar="WxH", help="pixels (default: 1000 wide)")

    collect = commands.add_parser(
        "gc",
        help="delete all but the newest N checkpoints (never the newest)",
        description="Delete all but the newest N committed checkpoints under URL, holding the "
        "directory's lock. Refuses with exit 75 while another run holds it.",
    )
    collect.add_argument("url", metavar="URL")
    collect.add_argument("--keep", type=int, required=True, metavar="N")
    collect.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted; take no lock"
    )


def run(args: argparse.Namespace) -> int:
    commands: dict[str, Callable[[LocalBackup | RemoteBackup, argparse.Namespace], int]] = {
        "ls": _ls,
        "verify": _verify,
        "status": _status,
        "timeline": _timeline,
        "gc": _gc,
    }
    backup = None
    try:
        backup = open_backup(args.url, storage_options_from_environment())
        return commands[args.subcommand](backup, args)
    except BackupUnreachableError as error:
        return _fail(str(error), ExitCode.BACKUP_DIR_UNUSABLE)
    except BackupError as error:
        return _fail(str(error), ExitCode.USAGE_ERROR)
    except _Refused as refusal:
        return _fail(str(refusal), refusal.code)
    except Exception as error:
        if isinstance(backup, RemoteBackup):
            # The store's own errors (credentials, endpoint, bucket): one line,
            # its type and text, never the storage options.
            return _fail(
                f"{redact_url(args.url)} is not readable: {describe_error(error)}",
                ExitCode.BACKUP_DIR_UNUSABLE,
            )
        if isinstance(error, OSError):
            # A local backup the system will not let us read or write: another
            # user's mode-700 directory, a read-only mount (gc), a full disk.
            where = f": {error.filename}" if error.filename else ""
            return _fail(
                f"{args.url} is not usable: {error.strerror or error}{where}",
                ExitCode.BACKUP_DIR_UNUSABLE,
            )
        raise


# -- the commands -------------------------------------------------------------------


def _ls(backup: BackupReader[Any], args: argparse.Namespace) -> int:
    refs = list(reversed(backup.list_committed()))
    check = verify_checkpoint if args.verify else check_sizes
    verdicts = [check(backup, ref) for ref in refs]
    now = time.time()
    if args.json:
        _print_json([report.verdict_json(v, now) for v in verdicts])
    else:
        print(report.ls_text(verdicts, now))
    return ExitCode.FINISHED


def _verify(backup: BackupReader[Any], args: argparse.Namespace) -> int:
    refs = backup.list_committed()
    if args.checkpoint is not None:
        candidates = [_named(refs, args.checkpoint, backup.url)]
    else:
        candidates = list(reversed(refs))
    if not candidates:
        raise _Refused(
            f"{backup.url}: no committed checkpoint to verify", ExitCode.CHECKPOINT_DAMAGED
        )
    verdicts: list[Verdict] = []
    for ref in candidates:
        verdicts.append(verify_checkpoint(backup, ref))
        if verdicts[-1].intact:
            break  # the newest intact one is where a restore lands
    if args.json:
        _print_json([report.verdict_json(v, time.time()) for v in verdicts])
    else:
        for verdict in verdicts:
            print(_verdict_line(verdict))
            for problem in verdict.problems:
                print(f"  {shown(problem, limit=400)}")
    target = verdicts[0]
    if target.intact:
        return ExitCode.FINISHED
    fallback = next((v for v in verdicts[1:] if v.intact), None)
    if args.checkpoint is not None:
        consequence = ""
    elif fallback is not None:
        consequence = f"; a restore would fall back to {fallback.name}"
    else:
        consequence = "; no older checkpoint is intact"
    raise _Refused(f"checkpoint {target.name} is damaged{consequence}", ExitCode.CHECKPOINT_DAMAGED)


def _status(backup: BackupReader[Any], args: argparse.Namespace) -> int:
    records = _records(backup)
    refs = backup.list_committed()
    newest = check_sizes(backup, refs[-1]) if refs else None
    now = time.time()
    if not records:
        message = (
            f"no event records under {backup.url}/{EVENTS_DIR}: the run was not supervised "
            "by this version of ftharness"
        )
        if args.json:
            _print_json({"url": backup.url, "state": "no records", "attempts": []})
        else:
            print(message)
            if newest is not None:
                print(f"newest checkpoint: step {newest.step}, {report.check_label(newest)}")
        return ExitCode.FINISHED
    story = tell(records)
    if args.json:
        _print_json(report.status_json(story, backup.url, newest, now))
    else:
        print(report.status_text(story, backup.url, newest, now))
    return ExitCode.FINISHED


def _timeline(backup: BackupReader[Any], args: argparse.Namespace) -> int:
    from ftharness.inspect import timeline  # matplotlib is optional: only imported here

    records = _records(backup)
    if not records:
        raise _Refused(f"no event records under {backup.url}/{EVENTS_DIR}: nothing to draw")
    data = timeline.timeline_data(tell(records))
    try:
        timeline.render(data, args.output, args.size)
    except timeline.TimelineUnavailable as error:
        raise _Refused(str(error)) from None
    except OSError as error:
        raise _Refused(f"cannot write {args.output}: {error.strerror or error}") from None
    print(f"{args.output}: {data.title}")
    return ExitCode.FINISHED


def _gc(backup: LocalBackup | RemoteBackup, args: argparse.Namespace) -> int:
    try:
        decided = gc.plan(backup, args.keep)
    except ValueError as error:
        raise _Refused(str(error)) from None
    if args.dry_run:
        holder = backup.live_holder()
        for ref in decided.doomed:
            print(f"would delete {ref.name} (step {ref.step})")
        print(f"would keep {', '.join(ref.name for ref in decided.kept) or 'nothing'}")
        if holder is not None:
            raise _Refused(
                f"{backup.url} is locked by another run ({holder}): gc would refuse",
                ExitCode.BACKUP_DIR_LOCKED,
            )
        return ExitCode.FINISHED
    try:
        done = gc.collect(backup, args.keep)
    except DirectoryLockedError as error:
        raise _Refused(f"{error}; not deleting anything", ExitCode.BACKUP_DIR_LOCKED) from None
    for ref in done.doomed:
        print(f"deleted {ref.name} (step {ref.step})")
    print(f"kept {', '.join(ref.name for ref in done.kept) or 'nothing'}")
    return ExitCode.FINISHED


# -- helpers ---------------------------------------------------------------------------


def _records(backup: BackupReader[Any]) -> list[AttemptRecord]:
    """The run's records that can be told; each one skipped is said on one line."""
    records, problems = read_records(backup.event_files())
    told = []
    for record in records:
        reason = implausible(record)
        if reason is None:
            told.append(record)
        else:
            problems.append(f"{record.file_name}: skipped an event record ({reason})")
    for problem in problems:
        print(f"ftharness: warning: {shown(problem, limit=400)}", file=sys.stderr)
    return told


def _named(refs: list[RefT], text: str, url: str) -> RefT:
    # ASCII digits only: "²" is a digit to str.isdigit() but not to int().
    step = int(text) if text.isascii() and text.isdigit() else step_of(text)
    for ref in refs:
        if ref.step == step:
            return ref
    have = ", ".join(str(ref.step) for ref in refs) or "none"
    name = checkpoint_name(step) if step is not None and step <= MAX_STEP else shown(text)
    raise _Refused(f"{url}: no committed checkpoint {name} (steps: {have})")


def _verdict_line(verdict: Verdict) -> str:
    head = f"{verdict.name} (step {verdict.step})"
    if not verdict.intact:
        return f"{head}: DAMAGED"
    manifest = verdict.manifest
    files = len(manifest.files) if manifest else 0
    size = sum(f.size for f in manifest.files.values()) if manifest else 0
    plural = "s" if files != 1 else ""
    return f"{head}: intact: {files} file{plural}, {human_bytes(size)}, checksums match"


def _size(text: str) -> tuple[int, int]:
    width, separator, height = text.lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        size = (0, 0)
    if not separator or not 100 <= size[0] <= 10000 or not 100 <= size[1] <= 10000:
        raise argparse.ArgumentTypeError(f"--size takes WIDTHxHEIGHT in pixels, got {text!r}")
    return size


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=1))


def _fail(message: str, code: int) -> int:
    print_error(message)
    return code


def storage_options_from_environment() -> dict:
    """fsspec options for remote URLs, as `ftharness supervise` takes them."""
    try:
        return config.storage_options_from_environment()
    except ValueError as error:
        raise BackupError(str(error)) from None
