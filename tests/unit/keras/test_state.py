"""state: zero-copy views for synchronous saves, reused buffers for periodic ones.

Real TensorFlow, in process: a small model trained a few steps.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ftharness.keras import state
from ftharness.keras.data_position import DataPosition
from ftharness.keras.state import (
    ARRAYS_FILE,
    GROUP_TRAINING,
    Position,
    SnapshotBuffers,
    TrainingState,
)

X = np.random.default_rng(0).random((32, 64)).astype("float32")


def trained_model(width: int = 64) -> keras.Model:
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.layers.Input((64,)), keras.layers.Dense(width), keras.layers.Dense(64)]
    )
    model.compile(loss="mse", optimizer="adam", metrics=["mae"])
    train(model)
    return model


def train(model: keras.Model) -> None:
    model.fit(X, X, batch_size=8, epochs=1, shuffle=False, verbose=0)


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def values(arrays: dict) -> dict[str, list[bytes]]:
    return {group: [value.tobytes() for _, value in named] for group, named in arrays.items()}


def arrays_file(arrays: dict) -> bytes:
    files = TrainingState(
        position=Position(0, 0, 0),
        data=DataPosition.from_json({"iterators_before": 0, "skip": 0}),
        rng={},
        callbacks=[],
        input=None,
        fit={},
        arrays=arrays,
    ).to_files()
    return b"".join(bytes(chunk) for chunk in files[ARRAYS_FILE])


def test_host_views_are_the_variables_own_memory_read_only():
    model = trained_model()
    variables = state.training_variables(model)
    first, second = state.host_views(variables), state.host_views(variables)
    # No copy: every read gives the variable's own buffer.
    assert [address(a) for a in first] == [address(a) for a in second]
    for view, variable in zip(first, variables, strict=True):
        assert not view.flags.writeable
        np.testing.assert_array_equal(view, variable.numpy())
        with pytest.raises(ValueError):
            view[...] = 0


def test_a_view_keeps_its_values_when_training_goes_on():
    # TensorFlow copies a variable on write while a read of it is alive.
    model = trained_model()
    views = state.host_views(state.training_variables(model))
    before = [view.copy() for view in views]
    train(model)
    assert all(np.array_equal(v, b) for v, b in zip(views, before, strict=True))
    after = state.host_views(state.training_variables(model))
    assert not all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))


def test_buffers_hold_a_copy_allocated_once_and_reused():
    model = trained_model()
    buffers = SnapshotBuffers()
    first = buffers.capture(model)
    assert values(first) == values(state.capture_views(model))
    addresses = [address(value) for _, value in first[GROUP_TRAINING]]
    views = state.host_views(state.training_variables(model))
    assert not set(addresses) & {address(view) for view in views}  # a copy, not a view
    copied = values(first)
    train(model)
    assert values(first) == copied  # training did not touch the copy
    second = buffers.capture(model)
    assert [address(value) for _, value in second[GROUP_TRAINING]] == addresses  # reused
    assert values(second) == values(state.capture_views(model))
    assert values(second) != copied
    assert buffers.nbytes == sum(len(b) for group in copied.values() for b in group)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_buffers_give_the_same_file_as_views_with_any_number_of_threads(threads, monkeypatch):
    monkeypatch.setattr(state, "_SPLIT_BYTES", 1)  # split even this small model
    model = trained_model(width=37)  # odd sizes: ranges cut arrays anywhere
    buffers = SnapshotBuffers(threads=threads)
    assert arrays_file(buffers.capture(model)) == arrays_file(state.capture_views(model))


def test_buffers_follow_a_new_layout():
    buffers = SnapshotBuffers()
    small = buffers.capture(trained_model(width=8))
    wide_model = trained_model(width=40)
    wide = buffers.capture(wide_model)
    assert values(wide) == values(state.capture_views(wide_model))
    assert [v.shape for _, v in wide[GROUP_TRAINING]] != [v.shape for _, v in small[GROUP_TRAINING]]
    buffers.release()
    assert buffers.nbytes == 0


@pytest.mark.parametrize(
    ("sizes", "parts"), [([10, 1, 7], 2), ([5], 3), ([4, 4, 4, 4], 4), ([1, 0, 9, 2], 3)]
)
def test_split_covers_every_byte_once_in_equal_ranges(sizes, parts):
    sources = [np.arange(n, dtype=np.uint8) + 10 * i for i, n in enumerate(sizes)]
    destinations = [np.zeros(n, dtype=np.uint8) for n in sizes]
    state._SPLIT_BYTES, saved = 0, state._SPLIT_BYTES
    try:
        ranges = state._split(list(zip(destinations, sources, strict=True)), parts)
    finally:
        state._SPLIT_BYTES = saved
    assert len(ranges) <= parts
    lengths = [sum(len(source) for _, source in part) for part in ranges]
    assert sum(lengths) == sum(sizes)
    share = -(-sum(sizes) // parts)
    assert all(length == share for length in lengths[:-1]) and lengths[-1] <= share
    for part in ranges:
        state._copy_range(part)
    for destination, source in zip(destinations, sources, strict=True):
        np.testing.assert_array_equal(destination, source)


def test_a_snapshot_is_one_page_aligned_chunk_per_group():
    model = trained_model()
    captured = SnapshotBuffers().capture(model)
    files = TrainingState(
        position=Position(0, 0, 0),
        data=DataPosition.from_json({"iterators_before": 0, "skip": 0}),
        rng={},
        callbacks=[],
        input=None,
        fit={},
        arrays=captured,
    ).to_files()
    chunks = files[ARRAYS_FILE]
    assert len(chunks) == len(captured)  # training, metrics: one chunk each
    training_bytes = sum(value.nbytes for _, value in captured[GROUP_TRAINING])
    assert chunks[0].nbytes == training_bytes
    # Page-aligned: the writer can hand it to the disk directly (O_DIRECT).
    assert np.frombuffer(chunks[0], dtype=np.uint8).ctypes.data % 4096 == 0
