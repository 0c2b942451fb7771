"""arrays.pack / unpack: the flat file image, and arrays of one buffer as one chunk."""

from __future__ import annotations

import numpy as np

from ftharness.checkpoint import arrays


def file_image(chunks) -> bytes:
    return b"".join(bytes(chunk) for chunk in chunks)


def test_arrays_side_by_side_in_one_buffer_become_one_chunk_with_the_same_bytes():
    owner = np.arange(64, dtype=np.uint8)
    first = owner[0:24].view(np.float32).reshape(2, 3)
    second = owner[24:32].view(np.int32)
    separate = np.array([7.0])
    named = [("a", first), ("b", second), ("c", separate), ("d", owner[40:48])]
    index, chunks = arrays.pack(named)
    assert len(chunks) == 3  # a+b, c, d (d does not follow b in the buffer)
    assert chunks[0].nbytes == 32
    expected = b"".join(np.ascontiguousarray(a).tobytes() for _, a in named)
    assert file_image(chunks) == expected
    restored = arrays.unpack(index, bytearray(expected))
    for (_, original), back in zip(named, restored, strict=True):
        np.testing.assert_array_equal(original, back)
        assert original.dtype == back.dtype and original.shape == back.shape


def test_views_of_memory_numpy_does_not_own_stay_separate_chunks():
    data = bytearray(range(16))
    one = np.frombuffer(data, dtype=np.uint8, count=8)
    two = np.frombuffer(data, dtype=np.uint8, offset=8)
    index, chunks = arrays.pack([("one", one), ("two", two)])
    assert len(chunks) == 2
    assert file_image(chunks) == bytes(data)
    assert [entry.offset for entry in index] == [0, 8]
