"""Write one file durably at disk speed: checksum while writing, fsync once.

`write_durable` is what the commit protocol calls for every file of a
checkpoint. Compared with `write(); fsync()` of the whole file it:
- computes the CRC-32 of each piece right before writing it, while the piece
  is hot in the CPU cache (one pass over the memory, not two);
- writes in large pieces, gathering small arrays (biases, counters) into one
  `writev` call, so a model of a thousand small variables costs few syscalls;
- writes every file of at least 1 MiB with O_DIRECT, straight to the disk:
  from the pieces' own memory where it is page-aligned (a periodic
  snapshot's buffer), else through one 8 MiB page-aligned staging buffer
  (`_DirectSink`, which says why);
- where O_DIRECT is refused, writes through the page cache and asks the
  kernel to start writing each piece to disk at once (Linux
  `sync_file_range(SYNC_FILE_RANGE_WRITE)`, a hint that waits for nothing),
  so the disk works while we copy the next pieces and the final `fsync`
  only waits for the tail.
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
    crc = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    direct = _DirectWriter(path)
    sink = _DirectSink(fd, direct) if direct.available else _BufferedSink(fd)
    try:
        for piece in _pieces(chunks):
            crc = crc32(piece, crc)
            sink.write(piece)
        sink.finish()
        os.fsync(fd)  # also what the direct writes left in the disk's cache, and the size
    finally:
        direct.close()
        os.close(fd)
    return sink.size, crc


class _BufferedSink:
    """The file through the page cache, in large gathered writes, writeback started early."""

    def __init__(self, fd: int) -> None:
        self.size = 0
        self._fd = fd
        self._pending: list[memoryview] = []
        self._pending_bytes = 0
        self._writeback_from = 0
        self._writeback = _sync_file_range

    def write(self, piece: memoryview) -> None:
        self._pending.append(piece)
        self._pending_bytes += len(piece)
        if self._pending_bytes >= PIECE_BYTES or len(self._pending) >= _IOV_MAX:
            self._write_pending()
            if self._writeback is not None and self._writeback(
                self._fd,
                self._writeback_from,
                self.size - self._writeback_from,
                _SYNC_FILE_RANGE_WRITE,
            ):
                self._writeback = None  # unsupported here (some file systems): fsync suffices
            self._writeback_from = self.size

    def finish(self) -> None:
        self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            _write_all(self._fd, self._pending, self.size)
            self.size += self._pending_bytes
            self._pending, self._pending_bytes = [], 0


class _DirectSink:
    """The file through O_DIRECT, whatever memory its bytes come from.

    Pieces whose memory lines up with their place in the file (a periodic
    snapshot's page-aligned buffer) are written from that memory; all other
    bytes (the variables' own memory of a final checkpoint, small arrays)
    are copied into one page-aligned staging buffer of PIECE_BYTES and
    written from it when it is full. Why not the page cache for those: here
    (a virtual disk), writing 400 MB from TensorFlow's memory through the
    page cache and fsyncing it took 0.14-1.1 s from one save to the next,
    the same bytes staged and written directly 0.14-0.24 s every time; the
    copy of 8 MiB costs about a millisecond. A file smaller than DIRECT_MIN_BYTES (a
    manifest, a callback's state) goes through the page cache: a
    synchronous device write is not worth it.
    """

    def __init__(self, fd: int, direct: _DirectWriter) -> None:
        self.size = 0  # bytes of the file so far, the staged ones included
        self._fd = fd
        self._direct = direct
        self._held: list[memoryview] | None = []  # until the file reaches DIRECT_MIN_BYTES
        self._held_bytes = 0
        self._staging: np.ndarray | None = None  # made when first needed
        # Bytes in the staging buffer: the file's last ones, from an aligned offset.
        self._staged = 0

    def write(self, piece: memoryview) -> None:
        if self._held is not None:
            if self._held_bytes + len(piece) < DIRECT_MIN_BYTES:
                self._held.append(piece)
                self._held_bytes += len(piece)
                return
            held, self._held = self._held, None
            for view in held:
                self._stage(view)
        offset = self.size
        if len(piece) >= DIRECT_MIN_BYTES and (_address(piece) - offset) % DIRECT_ALIGNMENT == 0:
            head = -offset % DIRECT_ALIGNMENT
            self._stage(piece[:head])  # the staged bytes now end at an aligned offset
            self._write_staged()
            body = len(piece) - head - (len(piece) - head) % DIRECT_ALIGNMENT
            self._write_direct(piece[head : head + body], offset + head)
            self.size += body
            piece = piece[head + body :]
        self._stage(piece)

    def finish(self) -> None:
        if self._held is not None:  # a small file: the page cache's way
            small = _BufferedSink(self._fd)
            for view in self._held:
                small.write(view)
            small.finish()
            self.size, self._held = small.size, []
            return
        if not self._staged:
            return
        offset = self.size - self._staged
        aligned = self._staged - self._staged % DIRECT_ALIGNMENT
        self._write_direct(memoryview(self._staging[:aligned]), offset)
        if aligned < self._staged:  # the file's last, partial block
            _write_all(
                self._fd, [memoryview(self._staging[aligned : self._staged])], offset + aligned
            )
        self._staged = 0

    def _stage(self, data: memoryview) -> None:
        if data and self._staging is None:
            self._staging = _aligned_empty(PIECE_BYTES)
        while data:
            count = min(len(data), PIECE_BYTES - self._staged)
            self._staging[self._staged : self._staged + count] = np.frombuffer(
                data[:count], dtype=np.uint8
            )
            self._staged += count
            self.size += count
            data = data[count:]
            if self._staged == PIECE_BYTES:
                self._write_staged()

    def _write_staged(self) -> None:
        if self._staged:
            self._write_direct(memoryview(self._staging[: self._staged]), self.size - self._staged)
            self._staged = 0

    def _write_direct(self, view: memoryview, offset: int) -> None:
        if view and not self._direct.write(view, offset):
            _write_all(self._fd, [view], offset)  # refused: through the page cache from now on


def _aligned_empty(size: int) -> np.ndarray:
    raw = np.empty(size + DIRECT_ALIGNMENT, dtype=np.uint8)
    skip = -raw.ctypes.data % DIRECT_ALIGNMENT
    return raw[skip : skip + size]


# Direct I/O (O_DIRECT) needs the memory, the file offset and the length
# aligned to the device's block size; 4096 covers the usual 512 and 4096.
DIRECT_ALIGNMENT = 4096
# Smaller pieces go through the page cache: not worth a synchronous device write.
DIRECT_MIN_BYTES = 1024 * 1024


class _DirectWriter:
    """Writes page-aligned pieces of a file with O_DIRECT, beside the buffered fd.

    Written directly, bytes go from memory to the disk without the kernel's
    copy into the page cache (measured here: a tenth of a second of CPU per
    400 MB, that training gets back) and without filling the cache. Where
    O_DIRECT is refused (tmpfs, an alignment this file system does not
    accept), everything goes through the page cache.
    """

    def __init__(self, path: Path) -> None:
        self._fd: int | None = None
        flag = getattr(os, "O_DIRECT", 0)
        if flag:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | flag)
            except OSError:
                self._fd = None

    @property
    def available(self) -> bool:
        """False where O_DIRECT is refused at open (tmpfs) or unknown (not Linux)."""
        return self._fd is not None

    def write(self, piece: memoryview, offset: int) -> bool:
        """Write `piece` at `offset`; False (and False from now on) if refused."""
        if self._fd is None:
            return False
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
