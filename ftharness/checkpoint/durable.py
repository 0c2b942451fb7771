"""Write one file durably at disk speed: checksum while writing, fsync once.

`write_durable` is what the commit protocol calls for every file of a
checkpoint. Compared with `write(); fsync()` of the whole file it:
- computes the CRC-32 of each piece right before writing it, while the piece
  is hot in the CPU cache (one pass over the memory, not two);
- writes in large pieces, gathering small arrays (biases, counters) into one
  `writev` call, so a model of a thousand small variables costs few syscalls;
- asks the kernel to start writing each piece to disk as soon as it is in
  the page cache (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`, a hint that
  waits for nothing), so the disk works while we copy the next pieces and the
  final `fsync` only waits for the tail.
- writes page-aligned pieces of at least 1 MiB (a periodic snapshot's
  buffer) with O_DIRECT, from that memory straight to the disk.
The durability contract is unchanged: the file is complete on disk when
`fsync` returns, and only then; `sync_file_range` alone guarantees nothing
and is used only to start the work earlier.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ftharness.checkpoint.checksum import crc32

log = logging.getLogger("ftharness.checkpoint")

# 8 MiB pieces: large enough that a syscall's cost is nothing, small enough
# that writeback starts early and the CRC of a piece runs in the CPU cache.
PIECE_BYTES = 8 * 1024 * 1024
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


def _load_sync_file_range():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux: fsync does all the work at the end
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def write_durable(path: Path, chunks: Iterable[bytes | memoryview]) -> tuple[int, int]:
    """Create `path` with the concatenation of `chunks`, fsynced; returns (size, crc32)."""
    size = 0
    crc = 0
    pending: list[memoryview] = []
    pending_bytes = 0
    writeback_from = 0
    writeback = _sync_file_range
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    direct = _DirectWriter(path)
    try:
        for piece in _pieces(chunks):
            crc = crc32(piece, crc)
            aligned = direct.aligned_length(piece, size + pending_bytes)
            if aligned:
                if pending:
                    _write_all(fd, pending, size)
                    size += pending_bytes
                    pending, pending_bytes = [], 0
                if direct.write(piece[:aligned], size):
                    size += aligned
                    piece = piece[aligned:]
                if not piece:
                    continue
            pending.append(piece)
            pending_bytes += len(piece)
            if pending_bytes >= PIECE_BYTES or len(pending) >= _IOV_MAX:
                _write_all(fd, pending, size)
                size += pending_bytes
                pending, pending_bytes = [], 0
                if writeback is not None and writeback(
                    fd, writeback_from, size - writeback_from, _SYNC_FILE_RANGE_WRITE
                ):
                    writeback = None  # unsupported here (some file systems): fsync suffices
                writeback_from = size
        if pending:
            _write_all(fd, pending, size)
            size += pending_bytes
        os.fsync(fd)  # also what the direct writes left in the disk's cache, and the size
    finally:
        direct.close()
        os.close(fd)
    return size, crc


# Direct I/O (O_DIRECT) needs the memory, the file offset and the length
# aligned to the device's block size; 4096 covers the usual 512 and 4096.
DIRECT_ALIGNMENT = 4096
# Smaller pieces go through the page cache: not worth a synchronous device write.
DIRECT_MIN_BYTES = 1024 * 1024


class _DirectWriter:
    """Writes page-aligned pieces of a file with O_DIRECT, beside the buffered fd.

    A periodic snapshot lives in one page-aligned buffer (state.SnapshotBuffers):
    written directly, its bytes go from that memory to the disk without the
    kernel's copy into the page cache (measured here: a tenth of a second of
    CPU per 400 MB, that training gets back) and without filling the cache.
    Where O_DIRECT is refused (tmpfs, an alignment this file system does not
    accept), everything goes through the page cache as before.
    """

    def __init__(self, path: Path) -> None:
        self._fd: int | None = None
        flag = getattr(os, "O_DIRECT", 0)
        if flag:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
            except OSError:
                self._fd = None

    def aligned_length(self, piece: memoryview, offset: int) -> int:
        """How many leading bytes of `piece`, at file `offset`, can be written directly."""
        if self._fd is None or offset % DIRECT_ALIGNMENT or len(piece) < DIRECT_MIN_BYTES:
            return 0
        if _address(piece) % DIRECT_ALIGNMENT:
            return 0
        return len(piece) - len(piece) % DIRECT_ALIGNMENT

    def write(self, piece: memoryview, offset: int) -> bool:
        """Write `piece` at `offset`; False (and buffered from now on) if refused."""
        view = piece
        try:
            while view:
                view = view[os.pwrite(self._fd, view, offset + len(piece) - len(view)) :]
        except OSError as error:
            if error.errno != errno.EINVAL or len(view) != len(piece):
                raise
            log.debug("direct I/O refused for %s: %s; writing through the page cache", piece, error)
            self.close()
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _address(view: memoryview) -> int:
    return np.frombuffer(view, dtype=np.uint8).ctypes.data if len(view) else 0


def _pieces(chunks: Iterable[bytes | memoryview]) -> Iterator[memoryview]:
    """Byte views of at most PIECE_BYTES each, without copying."""
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), PIECE_BYTES):
            yield view[start : start + PIECE_BYTES]


def _write_all(fd: int, views: list[memoryview], offset: int) -> None:
    many = len(views) > 1
    written = os.pwritev(fd, views, offset) if many else os.pwrite(fd, views[0], offset)
    total = sum(len(view) for view in views)
    if written == total:
        return
    # A short write (a signal, a nearly full disk): finish piece by piece, so
    # that a real error (ENOSPC) is raised by the write that hits it.
    position = offset + written
    for view in views:
        if written >= len(view):
            written -= len(view)
            continue
        remaining = view[written:]
        written = 0
        while remaining:
            count = os.pwrite(fd, remaining, position)
            remaining = remaining[count:]
            position += count
