"""ftharness.tf.TrainingCheckpoint in process: round trip, refusal, stop signal."""

from __future__ import annotations

import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

import ftharness.tf
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.exitcodes import ExitCode

pytestmark = pytest.mark.slow


def objects(units: int = 4):
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(units), keras.layers.Dropout(0.5)]
    )
    optimizer = keras.optimizers.Adam(0.1)
    optimizer.build(model.trainable_variables)
    data = np.arange(60, dtype="float32").reshape(20, 3)
    iterator = iter(tf.data.Dataset.from_tensor_slices(data).shuffle(20).batch(2).repeat())
    generator = tf.random.Generator.from_seed(2)
    return model, optimizer, iterator, generator


def step(model, optimizer, iterator, generator):
    x = next(iterator) + generator.normal((2, 3))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))


def state_of(model, optimizer, generator):
    return [v.numpy().tolist() for v in [*model.variables, *optimizer.variables]] + [
        generator.state.numpy().tolist()
    ]


def test_a_restored_loop_continues_exactly(tmp_path):
    model, optimizer, iterator, generator = objects()
    trackables = dict(model=model, optimizer=optimizer, iterator=iterator, noise=generator)
    with ftharness.tf.TrainingCheckpoint(tmp_path, save_freq=3, **trackables) as checkpoint:
        assert checkpoint.restore() == 0
        for done in range(1, 5):
            step(model, optimizer, iterator, generator)
            checkpoint.step_end(done)
    assert [ref.step for ref in LocalCheckpointStore(tmp_path).list_committed()] == [3]
    # Two more steps after the checkpoint's: what a resumed run must reproduce.
    model2, optimizer2, iterator2, generator2 = objects()
    with ftharness.tf.TrainingCheckpoint(
        tmp_path, model=model2, optimizer=optimizer2, iterator=iterator2, noise=generator2
    ) as checkpoint:
        assert checkpoint.restore() == 3
        step(model2, optimizer2, iterator2, generator2)

    reference = objects()
    for _ in range(4):
        step(*reference)
    assert state_of(model2, optimizer2, generator2) == state_of(
        reference[0], reference[1], reference[3]
    )


def test_a_checkpoint_of_another_model_is_refused_with_exit_65(tmp_path, capsys):
    model, optimizer, _, _ = objects()
    with ftharness.tf.TrainingCheckpoint(tmp_path, model=model, optimizer=optimizer) as checkpoint:
        checkpoint.save(1)
    other, other_optimizer, _, _ = objects(units=5)
    checkpoint = ftharness.tf.TrainingCheckpoint(tmp_path, model=other, optimizer=other_optimizer)
    with pytest.raises(SystemExit) as raised:
        checkpoint.restore()
    assert raised.value.code == ExitCode.INCOMPATIBLE_CHECKPOINT
    errors = [line for line in capsys.readouterr().err.splitlines() if "ftharness: error" in line]
    assert len(errors) == 1 and "does not fit the objects given" in errors[0]


def test_a_stop_signal_saves_at_the_next_step_end_and_exits_143(tmp_path):
    model, optimizer, iterator, generator = objects()
    checkpoint = ftharness.tf.TrainingCheckpoint(
        tmp_path, model=model, optimizer=optimizer, iterator=iterator
    )
    step(model, optimizer, iterator, generator)
    checkpoint.step_end(1)  # no save_freq: nothing saved
    assert not checkpoint.preemption_requested()
    os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag
    assert checkpoint.preemption_requested()
    with pytest.raises(SystemExit) as raised:
        checkpoint.step_end(2)
    assert raised.value.code == ExitCode.PREEMPTED == 143
    assert [ref.step for ref in LocalCheckpointStore(tmp_path).list_committed()] == [2]
    assert signal.getsignal(signal.SIGTERM) is not checkpoint  # handlers given back


@pytest.mark.parametrize("delete", [True, False])
def test_finish_removes_the_backup_unless_asked_to_keep_it(tmp_path, delete):
    (tmp_path / "notes.txt").write_text("mine")
    model, optimizer, iterator, generator = objects()
    with ftharness.tf.TrainingCheckpoint(
        tmp_path, save_freq=2, delete_checkpoint=delete, model=model, optimizer=optimizer
    ) as checkpoint:
        for done in range(1, 5):
            step(model, optimizer, iterator, generator)
            checkpoint.step_end(done)
        checkpoint.finish()
    steps = [ref.step for ref in LocalCheckpointStore(tmp_path).list_committed()]
    assert steps == ([] if delete else [2, 4])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_loop_restarted_after_its_final_checkpoint_has_no_step_left(tmp_path):
    model, optimizer, iterator, generator = objects()
    with ftharness.tf.TrainingCheckpoint(
        tmp_path, save_freq=2, delete_checkpoint=False, model=model, optimizer=optimizer
    ) as checkpoint:
        for done in range(1, 5):
            step(model, optimizer, iterator, generator)
            checkpoint.step_end(done)
        checkpoint.finish()
    again, again_optimizer, _, _ = objects()
    with ftharness.tf.TrainingCheckpoint(
        tmp_path, model=again, optimizer=again_optimizer
    ) as checkpoint:
        assert checkpoint.restore() == 4
        checkpoint.finish()
    assert (
        state_of(again, again_optimizer, generator)[:-1]
        == state_of(model, optimizer, generator)[:-1]
    )
