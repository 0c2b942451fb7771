"""Custom training loops: exact resume through `tf.train.Checkpoint`.

For loops written by hand (`tf.GradientTape`, `tf.function`), where no
Keras callback runs. Everything the loop hands over is saved with
`tf.train.Checkpoint` (model, optimizer and its slots, a `tf.data`
iterator with its position and shuffle buffer, `tf.random.Generator`s,
any other trackable), together with the step, Python's and NumPy's global
generators, TensorFlow's global generator and `keras.random`'s, in one
ftharness checkpoint: written to a temporary directory, then committed
atomically by the same store as the Keras callback's (a `ckpt-*` directory
with a manifest, retention, the supervisor's lock and protocol).

The loop polls: `step_end(step)` after each step saves when `save_freq`
says so or the supervisor asked (SIGUSR1), and on SIGTERM / SIGINT /
SIGHUP saves a final checkpoint and exits with 128 + the signal number.
Loops that want to decide themselves use `preemption_requested()`,
`save(step)` and `exit_preempted()`.

Example::

    import ftharness.tf

    keras.utils.set_random_seed(1)
    tf.config.experimental.enable_op_determinism()
    model, optimizer = build_model(), keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    iterator = iter(dataset.shuffle(1000).batch(32).repeat())
    noise = tf.random.Generator.from_seed(1)

    with ftharness.tf.TrainingCheckpoint(
        backup_dir="backups", save_freq=100,
        model=model, optimizer=optimizer, iterator=iterator, noise=noise,
    ) as checkpoint:
        step = checkpoint.restore()          # steps already done; 0 on a fresh start
        while step < 10_000:                 # none left if it stopped after its last save
            train_step(next(iterator))
            step += 1
            checkpoint.step_end(step)        # saves when due; exits 143 on SIGTERM
        checkpoint.finish()                  # done: the backup goes (delete_checkpoint)

Run it under `ftharness supervise --backup-dir DIR -- python loop.py`, or
alone with `backup_dir`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import NoReturn

import keras
import tensorflow as tf

from ftharness import strict_json
from ftharness.checkpoint.local import CheckpointRef
from ftharness.keras import rng
from ftharness.worker import (
    IncompatibleCheckpointError,
    WorkerError,
    WorkerSession,
    exit_with,
)

# The loop state (position, RNGs) is a few kilobytes; anything near this is not ours.
MAX_STATE_BYTES = 16 * 1024 * 1024

log = logging.getLogger("ftharness.tf")

STATE_FILE = "loop.json"
STATE_FORMAT_VERSION = 1
# tf.train.Checkpoint.write(<dir>/PREFIX) writes PREFIX.index and PREFIX.data-*.
TF_PREFIX = "tf"


class TrainingCheckpoint:
    """Save and restore a custom training loop's state; honour the stop signals.

    Args:
        backup_dir: local checkpoint directory; under `ftharness supervise`
            the supervisor's directory is used.
        save_freq: save every this many steps (`None`: only the final
            checkpoint on a stop signal, and on request).
        keep: committed checkpoints to keep (default: the supervisor's
            `--keep`, else 2).
        delete_checkpoint: what `finish()` does once the loop is done, as
            Keras's `BackupAndRestore(delete_checkpoint=...)`: `True`
            (default) removes the backup when the job succeeds (alone: in
            `finish()`; under `ftharness supervise`: by the supervisor once
            the command exits 0); `False` keeps it.
        steps_per_epoch: if the loop has epochs, the manifest then names
            epoch and batch within it (informational).
        **trackables: what to save, by name, as for `tf.train.Checkpoint`.
            Build the model and the optimizer (`optimizer.build(...)`) before
            `restore()`, so that every slot exists to be restored into.
    """

    def __init__(
        self,
        backup_dir: str | Path | None = None,
        *,
        save_freq: int | None = None,
        keep: int | None = None,
        delete_checkpoint: bool = True,
        steps_per_epoch: int | None = None,
        **trackables,
    ) -> None:
        if save_freq is not None and (isinstance(save_freq, bool) or save_freq < 1):
            raise ValueError(f"save_freq must be a positive integer or None, got {save_freq!r}")
        if not trackables:
            raise ValueError("give the objects to save, e.g. model=..., optimizer=...")
        if "step" in trackables:
            raise ValueError("'step' is kept by TrainingCheckpoint itself; pass it to step_end()")
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self.steps_per_epoch = steps_per_epoch
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="ftharness_step")
        self._checkpoint = tf.train.Checkpoint(
            step=self._step, **trackables, **_untracked_keras_variables(trackables)
        )
        self._last_saved_step: int | None = None
        try:
            self._session = WorkerSession.open(backup_dir, keep)
        except WorkerError as error:
            exit_with(error)
        self._session.flags.install()

    def __enter__(self) -> TrainingCheckpoint:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- restoring -----------------------------------------------------------------

    def restore(self) -> int:
        """Restore the newest checkpoint that verifies; the number of steps done.

        Returns 0, touching nothing, when there is no checkpoint. A
        checkpoint of another model ends the process with exit code 65.
        """
        try:
            loaded = self._session.load_latest()
        except WorkerError as error:
            self.close()
            exit_with(error)
        if loaded is None:
            return 0
        location = str(loaded.ref.path)
        try:
            # Checksummed, but still read back from storage: parsed strictly.
            record = strict_json.loads(loaded.files[STATE_FILE], MAX_STATE_BYTES)
            if int(record["format_version"]) != STATE_FORMAT_VERSION:
                raise IncompatibleCheckpointError(
                    f"checkpoint {location} has loop state format {record['format_version']}; "
                    f"this ftharness reads {STATE_FORMAT_VERSION}"
                )
            self._read_tf_checkpoint(loaded.files, location)
            rng.restore(record["rng"])
        except WorkerError as error:
            self.close()
            exit_with(error)
        except (KeyError, ValueError) as error:
            self.close()
            exit_with(
                IncompatibleCheckpointError(
                    f"checkpoint {location} is not a custom-loop checkpoint ({error})"
                )
            )
        step = int(self._step.numpy())
        self._last_saved_step = step
        log.info("restored %s: resuming at step %d", loaded.ref.name, step)
        return step

    def _read_tf_checkpoint(self, files: dict, location: str) -> None:
        names = [name for name in files if name.startswith(f"{TF_PREFIX}.")]
        if not names:
            raise IncompatibleCheckpointError(f"checkpoint {location} holds no tf.train.Checkpoint")
        with tempfile.TemporaryDirectory(prefix="ftharness-restore-") as directory:
            for name in names:
                (Path(directory) / name).write_bytes(files[name])
            try:
                status = self._checkpoint.read(str(Path(directory) / TF_PREFIX))
                status.assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as error:
                summary = str(error).strip().splitlines()[0] if str(error).strip() else error
                raise IncompatibleCheckpointError(
                    f"checkpoint {location} does not fit the objects given: {summary}"
                ) from None

    # -- polling and saving ----------------------------------------------------------

    def preemption_requested(self) -> bool:
        """True once a stop signal arrived: save, then `exit_preempted()`."""
        return self._session.flags.stop_signal is not None

    def checkpoint_requested(self) -> bool:
        """True (once) when the supervisor asked for a checkpoint (SIGUSR1)."""
        return self._session.flags.take_checkpoint_request()

    def step_end(self, step: int) -> None:
        """Call after each step with the number of steps done.

        Saves every `save_freq` steps and on request; on a stop signal saves
        and ends the process with the protocol's exit code.
        """
        if self.preemption_requested():
            self.save(step)
            self.exit_preempted()
        if self.checkpoint_requested() or (self.save_freq and step % self.save_freq == 0):
            self.save(step)

    def save(self, step: int) -> CheckpointRef | None:
        """Commit a checkpoint of the state after `step` steps (once per step)."""
        if self._last_saved_step == step:
            return None
        self._step.assign(step)
        state = {
            "format_version": STATE_FORMAT_VERSION,
            "step": step,
            "rng": rng.capture(),
        }
        files = {STATE_FILE: [json.dumps(state).encode()]}
        # tf.train.Checkpoint writes files of its own naming; read them back
        # and commit them with ours, so the store's commit stays the one
        # atomic step. The scratch directory is one of the store's
        # temporaries, removed like any unfinished write if we die here.
        directory = self._session.store.new_temporary(f"tfwrite-{step}")
        try:
            self._checkpoint.write(str(directory / TF_PREFIX))
            for path in sorted(directory.iterdir()):
                files[path.name] = [path.read_bytes()]
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        epoch, batch = divmod(step, self.steps_per_epoch) if self.steps_per_epoch else (0, step)
        ref = self._session.commit(step=step, epoch=epoch, batch=batch, files=files)
        self._last_saved_step = step
        log.info("checkpoint %s committed (step %d)", ref.name, step)
        return ref

    def exit_preempted(self) -> NoReturn:
        """End the process with 128 + the stop signal's number (143 for SIGTERM)."""
        session = self._session
        try:
            session.exit_preempted()
        finally:
            self.close()
        raise AssertionError("unreachable: exit_preempted raises SystemExit")

    def finish(self) -> None:
        """Call once the loop has done all its steps: the job's training succeeded.

        With `delete_checkpoint=True` the backup is removed (alone: now, only
        ftharness's files; under `ftharness supervise`: by the supervisor once
        the command exits 0, so a crash after the loop still resumes at its
        end). Then the directory and the signal handlers are released.
        """
        session, self._session = self._session, None
        if session is not None:
            session.finish(delete_backup=self.delete_checkpoint)

    def close(self) -> None:
        """Release the directory and the signal handlers (idempotent)."""
        if self._session is not None:
            self._session.close()
            self._session = None


def _untracked_keras_variables(trackables: dict) -> dict:
    """Every variable of the Keras layers and optimizers given, by name.

    `tf.train.Checkpoint` follows a Keras 3 model's attributes, which miss
    some of its state: the seed generators of Dropout, GaussianNoise and the
    random augmentation layers. Listing all the variables makes sure each is
    saved (a variable reached twice is written once).
    """
    extra = {}
    for name, value in trackables.items():
        if isinstance(value, keras.layers.Layer | keras.optimizers.Optimizer):
            extra[f"ftharness_variables_of_{name}"] = list(value.variables)
    return extra
