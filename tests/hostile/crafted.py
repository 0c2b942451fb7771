"""Damaged and crafted checkpoints, built on disk for the hostile-checkpoint suite.

Every case is a backup with two checkpoints written by the real
`LocalCheckpointStore`: `ckpt-000000000010` (intact: the one to fall back
to) and `ckpt-000000000020` (the newest), which one `Damage` then breaks
or crafts. Beside the backup sits an `outside/` directory holding a
"secret" file whose size and CRC a crafted manifest can name, so a reader
that followed a traversal or a symlink would find it *verifying*: the only
thing between it and being read is the check under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.manifest import MANIFEST_NAME, WriterInfo
from ftharness.events import RunRecorder
from ftharness.policy import Outcome
from ftharness.process import ExitStatus

PREVIOUS = "ckpt-000000000010"
NEWEST = "ckpt-000000000020"
DATA = "arrays.bin"
STATE = "state.json"
SECRET = b"the user's secret, never to be read by ftharness\n"


@dataclass(frozen=True)
class Case:
    """One backup on disk, ready to be damaged."""

    root: Path  # everything of the case: backup/, outside/, and what tests add
    backup: Path
    outside: Path

    @property
    def newest(self) -> Path:
        return self.backup / NEWEST

    @property
    def previous(self) -> Path:
        return self.backup / PREVIOUS

    def manifest(self) -> dict:
        return json.loads((self.newest / MANIFEST_NAME).read_text())

    def write_manifest(self, record: dict | str) -> None:
        text = record if isinstance(record, str) else json.dumps(record, indent=1)
        path = self.newest / MANIFEST_NAME
        if path.is_symlink() or not path.is_file():
            path.unlink()
        path.write_text(text)


@dataclass(frozen=True)
class Damage:
    """What is done to the newest checkpoint; `corrupts` is False when it may stay intact."""

    family: str
    label: str
    apply: Callable[[Case], None]
    corrupts: bool = True


def build_case(root: Path, with_records: bool = True) -> Case:
    """Two committed checkpoints (and the run's event records) under `root/backup`."""
    backup, outside = root / "backup", root / "outside"
    outside.mkdir(parents=True)
    (outside / "secret").write_bytes(SECRET)
    store = LocalCheckpointStore(backup)
    writer = WriterInfo("host-1", 4242, "run-1")
    for step in (10, 20):
        payload = bytes((step * i) % 251 for i in range(3000))
        state = json.dumps({"step": step}).encode()
        store.commit(
            step=step,
            epoch=step // 10,
            batch=3,
            files={DATA: [payload], STATE: [state]},
            writer=writer,
        )
    if with_records:
        recorder = RunRecorder.beside(backup, run_id="run-1")
        recorder.attempt_launched(1, 999, start=None)
        recorder.attempt_ended(ExitStatus(code=143, signal=None), Outcome.STOPPED, 20, 0.5)
    return Case(root, backup, outside)


def tree_digest(directory: Path) -> dict[str, str]:
    """Every entry under `directory` (not followed): its kind and content hash."""
    digest = {}
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = str(path.relative_to(directory))
            if path.is_symlink():
                digest[relative] = "link:" + os.readlink(path)
            elif path.is_file():
                digest[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                digest[relative] = "dir"
            else:
                digest[relative] = "special"
    return digest


# -- the damages ------------------------------------------------------------------


def truncate(file_name: str, keep: int) -> Damage:
    def apply(case: Case) -> None:
        path = case.newest / file_name
        os.truncate(path, min(keep, path.stat().st_size - 1))

    return Damage("truncation", f"{file_name} cut to {keep} bytes", apply)


def flip_bit(file_name: str, offset: int, bit: int) -> Damage:
    def apply(case: Case) -> None:
        path = case.newest / file_name
        data = bytearray(path.read_bytes())
        data[offset % len(data)] ^= 1 << bit
        path.write_bytes(bytes(data))

    # A flipped bit in the manifest can leave valid JSON that still verifies
    # (a digit of `created` changed): only data flips always corrupt (CRC-32).
    label = f"{file_name} bit {bit} at {offset}"
    return Damage("bit flip", label, apply, corrupts=file_name != MANIFEST_NAME)


def set_file_entry(field: str, value: object, family: str | None = None) -> Damage:
    def apply(case: Case) -> None:
        record = case.manifest()
        if record["files"][DATA][field] == value:
            value_used = value + 1 if isinstance(value, int) else value
        else:
            value_used = value
        record["files"][DATA][field] = value_used
        case.write_manifest(record)

    family = family or ("wrong size" if field == "size" else "wrong crc")
    return Damage(family, f"{DATA}.{field} = {value!r:.60}", apply)


def raw_field(path: tuple[str, ...], raw: str) -> Damage:
    """Put `raw` JSON text (as `1e400`, `NaN`, `[[[...]]]`) in place of a manifest field."""

    def apply(case: Case) -> None:
        record = case.manifest()
        marker = "__RAW__"
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = marker
        case.write_manifest(json.dumps(record).replace(json.dumps(marker), raw))

    family = "deep json" if raw.startswith("[[") or raw.startswith('{"a":{') else "absurd number"
    return Damage(family, f"{'.'.join(path)} = {raw[:40]}", apply)


def huge_manifest(size: int) -> Damage:
    def apply(case: Case) -> None:
        record = case.manifest()
        record["padding"] = "x" * size
        case.write_manifest(record)

    return Damage("huge size", f"manifest padded to {size} bytes", apply)


def special_file(target: str, kind: str) -> Damage:
    """Replace `target` (a data file or the manifest) of the newest by a special file."""

    def apply(case: Case) -> None:
        path = case.newest / target
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink to /dev/zero":
            path.symlink_to("/dev/zero")
        elif kind == "symlink to /dev/urandom":
            path.symlink_to("/dev/urandom")
        elif kind == "char device":  # root only: a node that reads like /dev/zero
            os.mknod(path, 0o600 | 0o020000, os.makedev(1, 5))
        elif kind == "directory":
            path.mkdir()
        elif kind == "socket":
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(path))
            server.close()
        if target == DATA and kind != "directory":
            # The size and CRC of what reading it "empty" would give: a reader
            # that stat()s and trusts the size would find it intact.
            record = case.manifest()
            record["files"][DATA] = {"size": 0, "crc32": 0}
            case.write_manifest(record)

    return Damage("special file", f"{target} is a {kind}", apply)


def symlink_outside(what: str) -> Damage:
    def apply(case: Case) -> None:
        if what == "data file":
            # A symlink to the user's secret, listed with the secret's own size and CRC.
            (case.newest / DATA).unlink()
            (case.newest / DATA).symlink_to(case.outside / "secret")
            record = case.manifest()
            record["files"][DATA] = {"size": len(SECRET), "crc32": zlib.crc32(SECRET)}
            case.write_manifest(record)
        elif what == "manifest":
            elsewhere = case.outside / "manifest.json"
            elsewhere.write_text((case.newest / MANIFEST_NAME).read_text())
            (case.newest / MANIFEST_NAME).unlink()
            (case.newest / MANIFEST_NAME).symlink_to(elsewhere)
        else:  # the checkpoint directory itself, pointing at a copy outside
            copy = case.outside / "checkpoint-copy"
            os.rename(case.newest, copy)
            case.newest.symlink_to(copy, target_is_directory=True)

    return Damage("symlink", f"{what} is a symlink out of the backup", apply)


def named(name: str) -> Damage:
    """List a file under `name` (a traversal, an absolute path, an odd or NUL name).

    Where the name would resolve to the outside secret (`../../outside/secret`,
    or its absolute path), the entry carries the secret's size and CRC.
    """

    def apply(case: Case) -> None:
        real = name.replace("{OUTSIDE}", str(case.outside))
        record = case.manifest()
        points_at_secret = "secret" in real
        entry = (
            {"size": len(SECRET), "crc32": zlib.crc32(SECRET)}
            if points_at_secret
            else record["files"][DATA]
        )
        record["files"][real] = entry
        case.write_manifest(record)

    family = "nul in name" if "\0" in name else "traversal and odd names"
    return Damage(family, f"a file named {name!r:.60}", apply)


def duplicate_key(where: str) -> Damage:
    def apply(case: Case) -> None:
        text = (case.newest / MANIFEST_NAME).read_text()
        if where == "step":
            text = text.replace('"step": 20', '"step": 20, "step": 10', 1)
        elif where == "files":
            text = text.replace('"files": {', '"files": {}, "files": {', 1)
        else:  # the same file listed twice, the second with another size
            twice = f'"{DATA}": {{"size": 1, "crc32": 1}}, "{DATA}": {{'
            text = text.replace(f'"{DATA}": {{', twice, 1)
        case.write_manifest(text)

    return Damage("duplicate keys", f"{where} appears twice", apply)


def writer_string(field: str, value: str) -> Damage:
    def apply(case: Case) -> None:
        record = case.manifest()
        record["writer"][field] = value
        case.write_manifest(record)

    # Escapes in the writer are shown escaped, not refused: the checkpoint is intact.
    return Damage("odd writer string", f"writer.{field} = {value!r:.40}", apply, corrupts=False)


def crafted_record(case: Case, raw_field_name: str, raw: str) -> Path:
    """An event record beside the real one, with `raw` JSON text for one field."""
    events = case.backup / ".ftharness" / "events"
    real = next(events.glob("*.json"))
    record = json.loads(real.read_text())
    record["session"] = "20990101T000000Z-beef"
    record[raw_field_name] = "__RAW__"
    path = events / "crafted-attempt-0001.json"
    path.write_text(json.dumps(record).replace('"__RAW__"', raw))
    return path
