"""Named arrays packed into one flat binary file, with a JSON index.

One file instead of one per variable keeps a checkpoint to a handful of
files (cheap to list, fsync and upload) and lets the restore read it with one
sequential read. The index records name, dtype, shape and byte range, so a
checkpoint from a model of another architecture is refused by comparing
indexes, before any variable is touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArrayEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "offset": self.offset,
            "nbytes": self.nbytes,
        }

    @classmethod
    def from_json(cls, record: dict) -> ArrayEntry:
        return cls(
            name=str(record["name"]),
            dtype=str(record["dtype"]),
            shape=tuple(int(d) for d in record["shape"]),
            offset=int(record["offset"]),
            nbytes=int(record["nbytes"]),
        )


def pack(
    named_arrays: Sequence[tuple[str, np.ndarray]],
) -> tuple[list[ArrayEntry], list[memoryview]]:
    """The index and the byte chunks (no copies of contiguous arrays)."""
    index = []
    chunks = []
    offset = 0
    for name, array in named_arrays:
        contiguous = np.ascontiguousarray(array)
        view = memoryview(contiguous.reshape(-1).view(np.uint8))
        index.append(
            ArrayEntry(name, array.dtype.name, tuple(array.shape), offset, contiguous.nbytes)
        )
        chunks.append(view)
        offset += contiguous.nbytes
    return index, chunks


def unpack(index: Sequence[ArrayEntry], buffer: bytearray | bytes) -> list[np.ndarray]:
    """Arrays viewing `buffer` (no copies), in index order."""
    arrays = []
    for entry in index:
        dtype = np.dtype(entry.dtype)
        flat = np.frombuffer(
            buffer, dtype=dtype, count=entry.nbytes // max(dtype.itemsize, 1), offset=entry.offset
        )
        arrays.append(flat.reshape(entry.shape))
    return arrays
