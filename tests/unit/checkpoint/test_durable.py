"""write_durable: the bytes, size and CRC-32 of every kind of chunk list; direct I/O."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import resource
import tracemalloc
import zlib

import numpy as np
import pytest

from ftharness.checkpoint import checksum
from ftharness.checkpoint.durable import (
    DIRECT_ALIGNMENT,
    DIRECT_MIN_BYTES,
    PIECE_BYTES,
    write_durable,
)


def expected(chunks) -> tuple[bytes, int]:
    data = b"".join(bytes(memoryview(chunk).cast("B")) for chunk in chunks)
    return data, zlib.crc32(data)


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([], id="empty"),
        pytest.param([b"", b"abc", b""], id="empty-chunks"),
        pytest.param([memoryview(np.arange(12, dtype=np.float64).reshape(3, 4))], id="2d-float"),
        pytest.param(
            [memoryview(np.arange(n, dtype=np.int32)).cast("B") for n in range(1, 2500)],
            id="many-small-more-than-iov-max",
        ),
        pytest.param(
            [b"head", memoryview(np.random.default_rng(0).bytes(2 * PIECE_BYTES + 123)), b"tail"],
            id="larger-than-a-piece",
        ),
    ],
)
def test_writes_the_concatenation_and_returns_its_size_and_zlib_crc(tmp_path, chunks):
    path = tmp_path / "file.bin"
    size, crc = write_durable(path, chunks)
    data, crc_expected = expected(chunks)
    assert path.read_bytes() == data
    assert (size, crc) == (len(data), crc_expected)


def test_a_generator_of_chunks_is_consumed_once(tmp_path):
    path = tmp_path / "file.bin"
    size, crc = write_durable(path, (bytes([i]) * 1000 for i in range(10)))
    data = b"".join(bytes([i]) * 1000 for i in range(10))
    assert (path.read_bytes(), size, crc) == (data, len(data), zlib.crc32(data))


def test_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"x" * 100)
    write_durable(path, [b"new"])
    assert path.read_bytes() == b"new"


def test_a_write_that_hits_the_file_size_limit_raises_instead_of_being_short(tmp_path):
    # Past RLIMIT_FSIZE the kernel writes what fits (a short write), then
    # fails with EFBIG (Python ignores SIGXFSZ): the error must surface.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = PIECE_BYTES + PIECE_BYTES // 2
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(OSError) as raised:
            write_durable(tmp_path / "big.bin", [bytes(PIECE_BYTES), bytes(PIECE_BYTES)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert raised.value.errno == errno.EFBIG
    assert os.path.getsize(tmp_path / "big.bin") == limit


def test_the_fast_crc_is_zlibs_bit_for_bit():
    data = np.random.default_rng(1).bytes(3_000_001)
    assert checksum.IMPLEMENTATION in {"isal", "zlib"}
    assert checksum.crc32(data) == zlib.crc32(data)
    incremental = 0
    for start in range(0, len(data), 65_537):
        incremental = checksum.crc32(memoryview(data)[start : start + 65_537], incremental)
    assert incremental == zlib.crc32(data)


def aligned_buffer(size: int, seed: int = 2) -> np.ndarray:
    raw = np.empty(size + DIRECT_ALIGNMENT, dtype=np.uint8)
    skip = -raw.ctypes.data % DIRECT_ALIGNMENT
    buffer = raw[skip : skip + size]
    buffer[:] = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    return buffer


def resident_pages(path) -> int:
    """Pages of `path` in the page cache (mincore of a read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) as mapped:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        view = np.frombuffer(mapped, dtype=np.uint8)
        status = libc.mincore(view.ctypes.data, size, vector)
        del view  # before the mapping closes
        assert status == 0, ctypes.get_errno()
        return sum(byte & 1 for byte in vector)


def direct_io_works(directory) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except (OSError, AttributeError):
        return False
    os.close(fd)
    return True


@pytest.mark.parametrize("tail", [0, 123])
def test_page_aligned_pieces_among_others_give_the_same_file(tmp_path, tail):
    big = aligned_buffer(2 * PIECE_BYTES + 5 * DIRECT_ALIGNMENT + tail)
    chunks = [memoryview(big), b"after", memoryview(aligned_buffer(DIRECT_MIN_BYTES, seed=3))]
    path = tmp_path / "file.bin"
    size, crc = write_durable(path, chunks)
    data, crc_expected = expected(chunks)
    assert path.read_bytes() == data
    assert (size, crc) == (len(data), crc_expected)


def unaligned_view(size: int, seed: int = 4) -> memoryview:
    """Memory that is not page-aligned, as a TensorFlow variable's buffer usually is."""
    return memoryview(aligned_buffer(size + 64, seed)[64:])


LARGE = PIECE_BYTES + 7 * DIRECT_ALIGNMENT + 123  # a partial last block


@pytest.mark.parametrize(
    "make_chunks",
    [
        pytest.param(lambda: [memoryview(aligned_buffer(LARGE))], id="page-aligned-memory"),
        pytest.param(lambda: [unaligned_view(LARGE)], id="unaligned-memory"),
        pytest.param(lambda: [bytes(unaligned_view(LARGE))], id="bytes"),
        pytest.param(
            lambda: [
                b"head",
                memoryview(aligned_buffer(LARGE)),
                b"t" * 5000,
                unaligned_view(LARGE),
            ],
            id="mixed",
        ),
        pytest.param(
            lambda: [memoryview(np.full(300, n, dtype=np.float32)) for n in range(3000)],
            id="many-small-arrays",
        ),
    ],
)
def test_a_large_file_goes_to_the_disk_without_the_page_cache(tmp_path, make_chunks):
    if not direct_io_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    chunks = make_chunks()
    path = tmp_path / "file.bin"
    size, crc = write_durable(path, chunks)
    data, crc_expected = expected(chunks)
    assert (size, crc) == (len(data), crc_expected)
    # Only the partial last block, if any, went through the page cache.
    assert resident_pages(path) == (1 if size % DIRECT_ALIGNMENT else 0)
    assert path.read_bytes() == data


def test_a_small_file_goes_through_the_page_cache(tmp_path):
    chunks = [b"{}", memoryview(np.arange(2000, dtype=np.int64))]
    path = tmp_path / "small.json"
    write_durable(path, chunks)
    assert resident_pages(path) == -(-path.stat().st_size // mmap.PAGESIZE)
    assert path.read_bytes() == expected(chunks)[0]


@pytest.mark.parametrize(("memory", "copied"), [("page-aligned", False), ("unaligned", True)])
def test_only_memory_out_of_line_with_the_file_is_copied(tmp_path, memory, copied):
    """A periodic snapshot's page-aligned buffer is written from its own memory;
    anything else through the 8 MiB staging buffer (traced by tracemalloc,
    which sees NumPy's allocations)."""
    if not direct_io_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT")
    size = 2 * PIECE_BYTES  # whole blocks: no partial last block to stage
    view = memoryview(aligned_buffer(size)) if memory == "page-aligned" else unaligned_view(size)
    tracemalloc.start()
    try:
        write_durable(tmp_path / "file.bin", [view])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (peak >= PIECE_BYTES) is copied
