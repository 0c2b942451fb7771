"""state: zero-copy views for synchronous saves, reused buffers for periodic ones.

Real TensorFlow, in process: a small model trained a few steps.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from ftharness.keras import state
from ftharness.keras.data_position import DataPosition
from ftharness.keras.state import (
    ARRAYS_FILE,
    GROUP_METRICS,
    GROUP_TRAINING,
    REPLICAS_SUFFIX,
    Position,
    SnapshotBuffers,
    TrainingState,
)
from ftharness.worker import IncompatibleCheckpointError

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


def training_state(arrays: dict, replicas: int | None = None) -> TrainingState:
    return TrainingState(
        position=Position(0, 0, 0),
        data=DataPosition.from_json({"iterators_before": 0, "skip": 0}),
        rng={},
        callbacks=[],
        input=None,
        fit={},
        arrays=arrays,
        replicas=replicas,
    )


def arrays_file(arrays: dict) -> bytes:
    files = training_state(arrays).to_files()
    return b"".join(bytes(chunk) for chunk in files[ARRAYS_FILE])


def read_back(written: TrainingState) -> TrainingState:
    files = {
        name: b"".join(bytes(c) for c in chunks) for name, chunks in written.to_files().items()
    }
    return TrainingState.from_files(files, "test")


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


# -- per-replica parts (a strategy's sync-on-read variables) --------------------
# With one device in process; several replicas run in real processes
# (tests/integration/exactness/test_mirrored_replicas.py and the matrix's
# mirrored_strategy row).

METRICS = "metrics"
PARTS = METRICS + REPLICAS_SUFFIX


def halves(named_arrays: list) -> list:
    """Two parts of each array that add up to it, as two replicas' components."""
    return [
        (f"{name}/replica_{index}", part)
        for name, value in named_arrays
        for index, part in enumerate((value / 4, value - value / 4))
    ]


def test_one_device_has_no_per_replica_parts():
    model = trained_model()
    assert state.replica_count(model) == 1
    assert state.replica_parts(state.metric_variables(model)) == []
    assert set(state.capture_views(model)) == {GROUP_TRAINING, GROUP_METRICS}
    assert set(SnapshotBuffers().capture(model)) == {GROUP_TRAINING, GROUP_METRICS}


def test_per_replica_parts_and_their_count_are_read_back():
    sums = [("total", np.array([4.0, 8.0], dtype="float32")), ("count", np.array(3.0, "float32"))]
    restored = read_back(training_state({METRICS: sums, PARTS: halves(sums)}, replicas=2))
    assert restored.replicas == 2
    assert [name for name, _ in restored.arrays[PARTS]] == [
        "total/replica_0", "total/replica_1", "count/replica_0", "count/replica_1"
    ]  # fmt: skip
    assert values(restored.arrays) == values({METRICS: sums, PARTS: halves(sums)})
    older = read_back(training_state({METRICS: sums}))
    assert older.replicas is None and PARTS not in older.arrays


SUMS = [("total", np.array([4.0, 8.0], dtype="float32"))]


@pytest.mark.parametrize(
    ("arrays", "replicas"),
    [
        pytest.param({METRICS: SUMS, PARTS: halves(SUMS)}, 3, id="count-of-3-for-parts-of-2"),
        pytest.param({METRICS: SUMS, PARTS: halves(SUMS)[:1]}, 2, id="a-part-missing"),
        pytest.param({METRICS: SUMS, PARTS: halves(SUMS)}, None, id="parts-without-a-count"),
        pytest.param({METRICS: SUMS, PARTS: halves(SUMS)}, 1, id="parts-of-one-replica"),
        pytest.param({PARTS: halves(SUMS)}, 2, id="parts-without-their-group"),
        pytest.param(
            {METRICS: SUMS, PARTS: [(n, v[:1]) for n, v in halves(SUMS)]}, 2, id="another-shape"
        ),
        pytest.param(
            {METRICS: SUMS, PARTS: [(n, v.astype("float64")) for n, v in halves(SUMS)]},
            2,
            id="another-dtype",
        ),
    ],
)
def test_damaged_per_replica_parts_are_not_a_training_state(arrays, replicas):
    with pytest.raises(IncompatibleCheckpointError, match="is not a Keras training state"):
        read_back(training_state(arrays, replicas=replicas))


@pytest.mark.parametrize("replicas", [0, -2, True, "2", 2.0, [2]])
def test_a_replica_count_that_is_not_a_positive_integer_is_refused(replicas):
    written = training_state({METRICS: SUMS})
    files = {
        name: b"".join(bytes(c) for c in chunks) for name, chunks in written.to_files().items()
    }
    record = json.loads(files[state.STATE_FILE])
    record["replicas"] = replicas
    files[state.STATE_FILE] = json.dumps(record).encode()
    with pytest.raises(IncompatibleCheckpointError, match="replicas"):
        TrainingState.from_files(files, "test")


def test_one_device_restores_an_older_or_single_device_checkpoint_silently():
    model = trained_model()
    views = state.capture_views(model)
    saved = {
        group: [(name, value.copy()) for name, value in named] for group, named in views.items()
    }
    train(model)
    for replicas in (None, 1):
        restored = training_state(saved, replicas=replicas)
        for group, variables in (
            (GROUP_TRAINING, state.training_variables(model)),
            (GROUP_METRICS, state.metric_variables(model)),
        ):
            assert state.assign_group(variables, restored, group) is None
            now = [(v.path, v.numpy()) for v in variables]
            assert values({group: now}) == values({group: saved[group]})


def test_one_device_restores_a_checkpoint_of_two_replicas_from_the_sum_and_says_so():
    model = trained_model()
    variables = state.metric_variables(model)
    sums = [(v.path, v.numpy() + 1) for v in variables]
    restored = training_state({METRICS: sums, PARTS: halves(sums)}, replicas=2)
    reason = state.assign_group(variables, restored, GROUP_METRICS)
    assert "written on 2 replica(s) and this training runs on 1" in reason
    assert values({METRICS: [(v.path, v.numpy()) for v in variables]}) == values({METRICS: sums})


@pytest.mark.parametrize(
    "text",
    [
        b'{"format_version": 2, "format_version": 1}',  # two readers could disagree
        b'{"format_version": NaN}',
        b"[" * 10_000 + b"]" * 10_000,  # deep enough to exhaust the stack
        b"\xff\xfe{}",  # not UTF-8
        b" ",
    ],
)
def test_a_state_file_no_writer_produced_is_not_a_training_state(text):
    written = training_state({METRICS: SUMS})
    files = {
        name: b"".join(bytes(c) for c in chunks) for name, chunks in written.to_files().items()
    }
    files[state.STATE_FILE] = text
    with pytest.raises(IncompatibleCheckpointError, match="is not a Keras training state"):
        TrainingState.from_files(files, "test")
