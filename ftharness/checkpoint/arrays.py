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
    """The index and the byte chunks (no copies of contiguous arrays).

    Arrays that lie one after the other in one buffer (a snapshot's
    `SnapshotBuffers`) become one chunk: large, page-aligned writes.
    """
    index = []
    chunks: list[memoryview] = []
    offset = 0
    run: tuple[np.ndarray, int, int] | None = None  # (owner, start, end) in owner's bytes
    for name, array in named_arrays:
        contiguous = np.ascontiguousarray(array)
        index.append(
            ArrayEntry(name, array.dtype.name, tuple(array.shape), offset, contiguous.nbytes)
        )
        offset += contiguous.nbytes
        place = _place_in_owner(contiguous)
        if run is not None and place is not None and place[0] is run[0] and place[1] == run[2]:
            run = (run[0], run[1], place[2])
            continue
        if run is not None:
            chunks.append(_run_view(run))
        if place is not None:
            run = place
        else:
            run = None
            chunks.append(memoryview(contiguous.reshape(-1).view(np.uint8)))
    if run is not None:
        chunks.append(_run_view(run))
    return index, chunks


def _place_in_owner(array: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """(owner, start, end): where `array`'s bytes lie in the flat uint8 NumPy array
    that owns them, or None when it is not such a view (TensorFlow's memory)."""
    owner = array
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    if not (owner.flags.owndata and owner.ndim == 1 and owner.dtype == np.uint8):
        return None
    start = array.__array_interface__["data"][0] - owner.__array_interface__["data"][0]
    if not 0 <= start <= owner.nbytes - array.nbytes:
        return None
    return owner, start, start + array.nbytes


def _run_view(run: tuple[np.ndarray, int, int]) -> memoryview:
    owner, start, end = run
    return memoryview(owner[start:end])


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
