"""Recompute a checkpoint's sizes and checksums against its manifest.

Works through any `CheckpointStore`, streaming each file in chunks, so that a
checkpoint larger than memory (or on a remote store) can be checked. The
problems are named file by file, in the words `LocalCheckpointStore` uses.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ftharness.checkpoint.manifest import CorruptCheckpointError, Manifest
from ftharness.checkpoint.safe_read import NotRegularFileError
from ftharness.checkpoint.store import CheckpointStore as BackupReader
from ftharness.checkpoint.store import RefT
from ftharness.progress import Progress

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Verdict:
    """What checking one checkpoint found."""

    name: str
    step: int
    manifest: Manifest | None  # None when the manifest itself is unreadable
    problems: tuple[str, ...]
    checksums: bool  # True when the checksums were recomputed, not only the sizes

    @property
    def intact(self) -> bool:
        return not self.problems


def check_sizes(reader: BackupReader[RefT], ref: RefT) -> Verdict:
    """The cheap check: the manifest parses and every file has its listed size."""
    manifest, problems = _manifest(reader, ref)
    if manifest is not None:
        for file_name, entry in sorted(manifest.files.items()):
            try:
                size = reader.file_size(ref, file_name)
            except NotRegularFileError as error:
                problems.append(str(error))
                continue
            if size is None:
                problems.append(f"{file_name} is missing")
            elif size != entry.size:
                problems.append(f"{file_name} has {size} bytes, manifest says {entry.size}")
    return Verdict(ref.name, ref.step, manifest, tuple(problems), checksums=False)


def verify_checkpoint(reader: BackupReader[RefT], ref: RefT, show_progress: bool = True) -> Verdict:
    """The full check: sizes first (cheap), then every file's CRC-32."""
    sized = check_sizes(reader, ref)
    if sized.manifest is None or sized.problems:
        # A file of the wrong size cannot match its checksum either; reading
        # gigabytes to say so again would only be slower.
        return Verdict(ref.name, ref.step, sized.manifest, sized.problems, checksums=True)
    manifest = sized.manifest
    total = sum(entry.size for entry in manifest.files.values())
    progress = Progress(f"verifying {ref.name}", total) if show_progress else None
    problems = []
    for file_name, entry in sorted(manifest.files.items()):
        try:
            crc, size = _checksum(reader, ref, file_name, entry.size, progress)
        except NotRegularFileError as error:  # replaced since the size check
            problems.append(str(error))
            continue
        except FileNotFoundError:
            problems.append(f"{file_name} is missing")
            continue
        except OSError as error:
            problems.append(f"{file_name} is unreadable ({error.strerror or error})")
            continue
        if size != entry.size:  # changed since the size check
            problems.append(f"{file_name} has {size} bytes, manifest says {entry.size}")
        elif crc != entry.crc32:
            problems.append(f"{file_name} fails its checksum")
    if progress is not None:
        progress.done()
    return Verdict(ref.name, ref.step, manifest, tuple(problems), checksums=True)


def _manifest(reader: BackupReader[RefT], ref: RefT) -> tuple[Manifest | None, list[str]]:
    try:
        return reader.read_manifest(ref), []
    except CorruptCheckpointError as error:
        return None, [error.reason]


def _checksum(
    reader: BackupReader[RefT], ref: RefT, file_name: str, expected: int, progress: Progress | None
) -> tuple[int, int]:
    """CRC-32 and size of at most `expected` + 1 bytes: one more says "too long"."""
    crc, size = 0, 0
    with reader.open_file(ref, file_name) as file:
        while size <= expected and (chunk := file.read(min(_CHUNK, expected + 1 - size))):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    return crc, size
