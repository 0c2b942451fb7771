"""BackupAndRestore as a drop-in for Keras's: lifecycle, arguments, the end of a job.

Real TensorFlow, in process: a small model, a few batches.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import ExitStack
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from support import as_if_supervised

from ftharness.checkpoint.local import DELETE_ON_SUCCESS_MARKER, LocalCheckpointStore
from ftharness.config import ENV_KEEP
from ftharness.keras import BackupAndRestore

BATCHES_PER_EPOCH = 3
X = np.random.default_rng(0).random((12, 3)).astype("float32")
Y = np.random.default_rng(1).random((12, 1)).astype("float32")


@pytest.fixture(autouse=True)
def unsupervised(monkeypatch):
    for name in [n for n in os.environ if n.startswith("FTHARNESS_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def as_supervised(monkeypatch):
    """Call with a directory: the test runs as a supervisor's worker on it."""
    with ExitStack() as stack:

        def enter(local_dir: Path) -> None:
            for name, value in stack.enter_context(as_if_supervised(local_dir)).items():
                monkeypatch.setenv(name, value)

        yield enter


def small_model() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(1)])
    model.compile(loss="mse", optimizer="sgd")
    return model


def fit(model, callbacks, epochs=2):
    return model.fit(X, Y, batch_size=4, epochs=epochs, verbose=0, callbacks=callbacks)


class RaiseAt(keras.callbacks.Callback):
    """Raises `error` at the end of the `step`-th batch (1-based) of training."""

    def __init__(self, step: int, error: BaseException, hook: str = "on_train_batch_end"):
        super().__init__()
        self.step, self.error, self.seen = step, error, 0
        setattr(self, hook, self._count)

    def _count(self, *args, **kwargs):
        self.seen += 1
        if self.seen == self.step:
            raise self.error


class SeesIterationsAtBegin(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.iterations: list[int] = []

    def on_train_begin(self, logs=None):
        self.iterations.append(int(self.model.optimizer.iterations.numpy()))


def steps_committed(directory: Path) -> list[int]:
    return [ref.step for ref in LocalCheckpointStore(directory).list_committed()]


def handlers() -> dict:
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


# -- constructor checks, as Keras's --------------------------------------------------------


def test_an_empty_backup_dir_is_refused_at_construction_with_keras_wording():
    with pytest.raises(ValueError, match="Empty `backup_dir` argument passed"):
        BackupAndRestore(backup_dir="")


def test_no_backup_dir_without_a_supervisor_is_refused_at_construction():
    with pytest.raises(ValueError, match="Empty `backup_dir` argument passed"):
        BackupAndRestore(backup_dir=None)


def test_no_backup_dir_under_a_supervisor_is_its_directory(as_supervised, tmp_path):
    as_supervised(tmp_path / "local")
    callback = BackupAndRestore(backup_dir=None, delete_checkpoint=False)
    fit(small_model(), [callback], epochs=1)
    assert steps_committed(tmp_path / "local") == [BATCHES_PER_EPOCH]


@pytest.mark.parametrize("save_freq", ["batch", 0.15, 0, -1, True])
def test_an_invalid_save_freq_is_refused_at_construction_with_keras_wording(save_freq):
    with pytest.raises(ValueError, match="Invalid value for argument `save_freq`"):
        BackupAndRestore(backup_dir="b", save_freq=save_freq)


# -- every way out of fit() ----------------------------------------------------------------


@pytest.mark.parametrize("same_instance", [True, False], ids=["same", "new"])
def test_fit_again_after_an_exception_resumes_at_the_newest_checkpoint(tmp_path, same_instance):
    model = small_model()
    first = BackupAndRestore(tmp_path / "b", save_freq=1, async_save=False)
    with pytest.raises(RuntimeError):
        fit(model, [first, RaiseAt(5, RuntimeError("boom"))])
    # Batch 5 raised in a callback before every callback had seen it: not saved.
    assert steps_committed(tmp_path / "b")[-1] == 4
    watcher = SeesIterationsAtBegin()
    again = first if same_instance else BackupAndRestore(tmp_path / "b", save_freq=1)
    history = fit(small_model(), [watcher, again])
    assert watcher.iterations == [4]
    # Epoch 1 resumed at its 2nd batch; History's record of epoch 0 is restored.
    assert history.epoch == [0, 1]


def test_a_callback_before_ours_sees_the_restored_optimizer_in_on_train_begin(tmp_path):
    fit(small_model(), [BackupAndRestore(tmp_path / "b", delete_checkpoint=False)], epochs=1)
    watcher = SeesIterationsAtBegin()
    fit(small_model(), [watcher, BackupAndRestore(tmp_path / "b")], epochs=2)
    assert watcher.iterations == [BATCHES_PER_EPOCH]


@pytest.mark.parametrize(
    "error, hook",
    [
        (RuntimeError("in a batch hook"), "on_train_batch_end"),
        (RuntimeError("at epoch end"), "on_epoch_end"),
        (RuntimeError("at epoch begin"), "on_epoch_begin"),
        (KeyboardInterrupt(), "on_train_batch_begin"),
    ],
)
def test_signal_handlers_and_the_lock_are_given_back_when_fit_raises(tmp_path, error, hook):
    before = handlers()
    with pytest.raises(type(error)):
        fit(small_model(), [BackupAndRestore(tmp_path / "b", save_freq=1), RaiseAt(2, error, hook)])
    assert handlers() == before
    # The lock is free: another callback takes the directory at once.
    fit(small_model(), [BackupAndRestore(tmp_path / "b", delete_checkpoint=False)], epochs=2)


def test_ctrl_c_raises_keyboard_interrupt_again_after_a_failed_fit(tmp_path):
    # Python's own Ctrl-C before fit(), whatever an earlier test in this
    # process left (once in CI, under pytest-xdist, it was not).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(RuntimeError):
            fit(small_model(), [BackupAndRestore(tmp_path / "b"), RaiseAt(2, RuntimeError())])
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            signal.sigtimedwait([], 0.5)  # let the handler run: Python runs it between bytecodes
            raise AssertionError("SIGINT did not raise KeyboardInterrupt")
    finally:
        signal.signal(signal.SIGINT, previous)


class FailsAtStep(keras.layers.Layer):
    """Counts its calls in a variable; the train step fails at call `limit`."""

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        self.calls.assign_add(1.0)
        tf.debugging.assert_less(self.calls, self.limit, message="failing step")
        return x


def model_failing_at(limit: float) -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.layers.Input((3,)), FailsAtStep(limit), keras.layers.Dense(1)])
    model.compile(loss="mse", optimizer="sgd")
    return model


def test_an_exception_in_the_train_step_gives_everything_back(tmp_path):
    before = handlers()
    with pytest.raises(tf.errors.InvalidArgumentError):
        fit(
            model_failing_at(3.0), [BackupAndRestore(tmp_path / "b", save_freq=1, async_save=False)]
        )
    assert handlers() == before
    assert steps_committed(tmp_path / "b") == [1, 2]
    watcher = SeesIterationsAtBegin()
    fit(model_failing_at(100.0), [watcher, BackupAndRestore(tmp_path / "b")])
    assert watcher.iterations == [2]


def test_a_write_in_flight_is_finished_when_fit_raises(tmp_path):
    with pytest.raises(RuntimeError):
        fit(
            small_model(),
            [BackupAndRestore(tmp_path / "b", save_freq=1), RaiseAt(4, RuntimeError())],
        )
    assert not [t for t in threading.enumerate() if t.name == "ftharness-checkpoint-writer"]
    assert steps_committed(tmp_path / "b")[-2:] == [2, 3]
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.startswith(".tmp-")]


def test_stop_training_ends_fit_like_success(tmp_path):
    class Stop(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model.stop_training = True

    before = handlers()
    fit(small_model(), [BackupAndRestore(tmp_path / "b", delete_checkpoint=False), Stop()])
    assert handlers() == before
    fit(small_model(), [BackupAndRestore(tmp_path / "b", delete_checkpoint=False)], epochs=1)


# -- the end of a job ----------------------------------------------------------------------


def test_a_finished_fit_removes_its_backup_and_keeps_a_users_files(tmp_path):
    backup = tmp_path / "b"
    backup.mkdir()
    (backup / "notes.txt").write_text("mine")
    events = backup / ".ftharness" / "events"
    events.mkdir(parents=True)
    (events / "run-1-attempt-0001.json").write_text("{}")
    callback = BackupAndRestore(backup, save_freq=1)
    fit(small_model(), [callback])
    assert sorted(p.relative_to(backup).as_posix() for p in backup.rglob("*")) == [
        ".ftharness",
        ".ftharness/events",
        ".ftharness/events/run-1-attempt-0001.json",
        "notes.txt",
    ]
    # Re-running the finished script trains from the start, as with Keras's.
    watcher = SeesIterationsAtBegin()
    fit(small_model(), [watcher, BackupAndRestore(backup)])
    assert watcher.iterations == [0]


def test_a_finished_fit_in_an_otherwise_empty_directory_leaves_no_directory(tmp_path):
    fit(small_model(), [BackupAndRestore(tmp_path / "b")])
    assert not (tmp_path / "b").exists()


def test_delete_checkpoint_false_keeps_everything(tmp_path):
    fit(small_model(), [BackupAndRestore(tmp_path / "b", delete_checkpoint=False)])
    assert steps_committed(tmp_path / "b") == [BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH]
    assert (tmp_path / "b" / ".ftharness.lock").exists()


def test_under_a_supervisor_a_finished_fit_keeps_its_backup_and_asks_for_deletion(
    as_supervised, tmp_path
):
    local = tmp_path / "local"
    as_supervised(local)
    fit(small_model(), [BackupAndRestore()])
    assert steps_committed(local) == [BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH]
    assert (local / DELETE_ON_SUCCESS_MARKER).is_file()


def test_under_a_supervisor_delete_checkpoint_false_asks_for_nothing(as_supervised, tmp_path):
    local = tmp_path / "local"
    as_supervised(local)
    fit(small_model(), [BackupAndRestore(delete_checkpoint=False)])
    assert not (local / DELETE_ON_SUCCESS_MARKER).exists()


def test_a_failed_fit_keeps_its_backup(tmp_path):
    with pytest.raises(RuntimeError):
        fit(small_model(), [BackupAndRestore(tmp_path / "b"), RaiseAt(5, RuntimeError())])
    assert steps_committed(tmp_path / "b") == [BATCHES_PER_EPOCH]


# -- arguments on resume -------------------------------------------------------------------


def test_more_epochs_on_resume_continue_to_the_new_total(tmp_path):
    model = small_model()
    fit(model, [BackupAndRestore(tmp_path / "b", delete_checkpoint=False)], epochs=2)
    history = fit(model, [BackupAndRestore(tmp_path / "b")], epochs=4)
    assert history.epoch == [0, 1, 2, 3]
    assert int(model.optimizer.iterations.numpy()) == 4 * BATCHES_PER_EPOCH


@pytest.mark.parametrize("keep_from", ["argument", "supervisor"])
def test_double_checkpoint_keeps_two_checkpoints_even_under_keep_1(
    monkeypatch, tmp_path, keep_from
):
    keep = 1 if keep_from == "argument" else None
    if keep_from == "supervisor":
        monkeypatch.setenv(ENV_KEEP, "1")  # what `ftharness supervise --keep 1` passes
    callback = BackupAndRestore(
        tmp_path / "b", save_freq=1, keep=keep, double_checkpoint=True, delete_checkpoint=False
    )
    fit(small_model(), [callback])
    assert steps_committed(tmp_path / "b") == [5, 6]
    single = tmp_path / "single"
    fit(small_model(), [BackupAndRestore(single, save_freq=1, keep=1, delete_checkpoint=False)])
    assert steps_committed(single) == [6]
