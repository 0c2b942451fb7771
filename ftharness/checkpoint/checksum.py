"""CRC-32 of checkpoint files: zlib's checksum, computed fast when possible.

ISA-L (the `isal` package) computes the very same CRC-32 as `zlib.crc32`,
bit for bit, several times faster (carry-less multiplication instead of
tables): on a 400 MB checkpoint that is ~0.04 s instead of ~0.2 s, which is
most of the difference between a restore and a plain read of the bytes.
Without `isal`, zlib's is used; checkpoints are the same either way.
"""

from __future__ import annotations

from collections.abc import Callable

crc32: Callable[..., int]
try:
    from isal.isal_zlib import crc32

    IMPLEMENTATION = "isal"
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import crc32

    IMPLEMENTATION = "zlib"

__all__ = ["IMPLEMENTATION", "crc32"]
