"""write_durable: the bytes, size and CRC-32 of every kind of chunk list."""

from __future__ import annotations

import errno
import os
import resource
import zlib

import numpy as np
import pytest

from ftharness.checkpoint import checksum
from ftharness.checkpoint.durable import PIECE_BYTES, write_durable


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
