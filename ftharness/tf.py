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

Under `tf.distribute.MultiWorkerMirroredStrategy` (build it with
`multi_worker_strategy()`, and the model and optimizer in its scope) the
same calls coordinate the group (docs/custom-loops.md, "Several workers"):
`restore()` agrees on the newest step every worker has, `step_end` stops
every worker at one step when any is told to stop (the stopped one exits
143, the others 79), every worker's own RNG states travel in the chief's
checkpoint, `distributed_dataset()` gives the input its position back, and
a lost peer ends the `with` block with exit 76, without saving.
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
from ftharness.checkpoint.local import CheckpointRef, LoadedCheckpoint
from ftharness.distributed import agreement, errors, parts, worker_group
from ftharness.distributed.stop import StopAgreement
from ftharness.distributed.strategy import multi_worker_strategy
from ftharness.distributed.timeouts import PeerTimeouts
from ftharness.exitcodes import ExitCode, exit_code_for_signal
from ftharness.keras import rng
from ftharness.worker import (
    ConfigurationError,
    IncompatibleCheckpointError,
    WorkerError,
    WorkerSession,
    exit_with,
)

__all__ = ["TrainingCheckpoint", "multi_worker_strategy"]

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
        self._restored_step = 0
        self._stop: StopAgreement | None = None
        self._announced = False  # this worker announced a group stop
        try:
            self._group = worker_group.group_of(
                worker_group.strategy_of(trackables), PeerTimeouts.from_environ()
            )
        except ValueError as error:
            exit_with(ConfigurationError(str(error)))
        try:
            self._session = WorkerSession.open(backup_dir, keep)
        except WorkerError as error:
            exit_with(error)
        self._session.flags.install()
        self._stop = StopAgreement(self._group) if self._group is not None else None

    def __enter__(self) -> TrainingCheckpoint:
        return self

    def __exit__(self, exc_type, error, traceback) -> None:
        self.close()
        if self._group is not None and error is not None and errors.is_peer_failure(error):
            # A collective of the user's step failed: a peer is gone. Not
            # saved: the state may be in the middle of that step.
            exit_with(errors.peer_lost(error, "in a training step"))

    # -- restoring -----------------------------------------------------------------

    def restore(self) -> int:
        """Restore the newest checkpoint that verifies; the number of steps done.

        Returns 0, touching nothing, when there is no checkpoint. A
        checkpoint of another model ends the process with exit code 65.
        """
        try:
            loaded = self._session.load_latest()
            if self._group is not None:
                loaded = self._agreed_checkpoint(loaded)
        except WorkerError as error:
            self.close()
            exit_with(error)
        except errors.PEER_FAILURES as error:
            self.close()
            exit_with(errors.peer_lost(error, "while the group agreed on a checkpoint"))
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
            rng.restore(self._own_rng_state(record, loaded.files, location))
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
        self._restored_step = step
        log.info("restored %s: resuming at step %d", loaded.ref.name, step)
        return step

    def _agreed_checkpoint(self, newest: LoadedCheckpoint | None) -> LoadedCheckpoint | None:
        """The checkpoint of the step the whole group restores (restore agreement)."""
        local_step = newest.ref.step if newest is not None else 0
        agreed = agreement.agree_on_restore_step(self._group, local_step)
        if agreed == local_step:
            return newest
        if agreed == 0:
            log.info(
                "a peer has no checkpoint: the group starts afresh (ours stay until retention)"
            )
            return None
        ref = next((r for r in self._session.store.list_committed() if r.step == agreed), None)
        if ref is None or self._session.store.verify(ref):
            raise errors.PeerLostError(
                f"worker {self._group.worker_id} has no intact checkpoint of step {agreed}, the "
                f"newest every worker has; exiting {int(ExitCode.PEER_LOST)} (peer lost) so "
                "that its supervisor fetches it from the backup"
            )
        return self._session.store.load(ref)

    def _own_rng_state(self, record: dict, files: dict, location: str) -> dict:
        """This worker's generators: its part of a group checkpoint, or the loop state's."""
        if self._group is None:
            return record["rng"]
        name = parts.part_file(self._group.worker_id)
        if name not in files:
            raise IncompatibleCheckpointError(
                f"checkpoint {location} has no part for worker {self._group.worker_id} ({name}): "
                f"it was written by a group of {record.get('workers', 1)} worker(s), this group "
                f"has {self._group.worker_count}"
            )
        return strict_json.loads(files[name], MAX_STATE_BYTES)["rng"]

    def distributed_dataset(self, strategy: tf.distribute.Strategy, dataset_fn):
        """`strategy.distribute_datasets_from_function(dataset_fn)`, at the restored position.

        A distributed iterator cannot be checkpointed; a deterministic
        pipeline's position is the step. Each worker's dataset is rebuilt
        and skipped by the elements the restored steps consumed (one per
        local replica and step). `dataset_fn(input_context)` must give the
        same elements on every run, given `input_context.input_pipeline_id`:
        seeded shuffles, `deterministic=True` maps. Call after `restore()`.
        """
        done = self._restored_step

        def positioned(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
            replicas_here = input_context.num_replicas_in_sync // input_context.num_input_pipelines
            return dataset_fn(input_context).skip(done * replicas_here)

        return strategy.distribute_datasets_from_function(positioned)

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
        return self._session.stopping

    def checkpoint_requested(self) -> bool:
        """True (once) when the supervisor asked for a checkpoint (SIGUSR1)."""
        return self._session.flags.take_checkpoint_request()

    def step_end(self, step: int) -> None:
        """Call after each step with the number of steps done.

        Saves every `save_freq` steps and on request; on a stop signal saves
        and ends the process with the protocol's exit code.
        """
        if self._group is not None:
            try:
                self._group_step_end(step)
            except errors.PEER_FAILURES as error:
                self.close()
                exit_with(errors.peer_lost(error, f"at the end of step {step}"))
            except WorkerError as error:
                self.close()
                exit_with(error)
            return
        if self.preemption_requested():
            self.save(step)
            self.exit_preempted()
        if self.checkpoint_requested() or (self.save_freq and step % self.save_freq == 0):
            self.save(step)

    def _group_step_end(self, step: int) -> None:
        """step_end under a group: every worker saves and stops at the same steps.

        A checkpoint requested by SIGUSR1 is not taken: a save by one worker
        alone would leave the chief waiting for its peers' parts.
        """
        self.checkpoint_requested()  # dropped, see above
        if self.preemption_requested() and self._stop.agreed_step is None and not self._announced:
            self._announced = True
            self._stop.announce(step)
        agreed = self._stop.agreed_step
        if agreed is not None and step >= agreed:
            self.save(step)
            self._exit_group_stop(step)
        if self.save_freq and step % self.save_freq == 0:
            self.save(step)

    def _exit_group_stop(self, step: int) -> NoReturn:
        signum = self._session.flags.stop_signal
        code = exit_code_for_signal(signum) if signum is not None else ExitCode.PEER_STOPPED
        why = "stopped by a signal" if signum is not None else "a peer was stopped"
        log.info("group stop at step %d, final checkpoint committed (%s): exit %d", step, why, code)
        self.close()
        raise SystemExit(int(code))

    def save(self, step: int) -> CheckpointRef | None:
        """Commit a checkpoint of the state after `step` steps (once per step).

        In a group every worker must save at the same steps (the chief waits
        for its peers' parts): `step_end` does; a direct call must too.
        """
        if self._last_saved_step == step:
            return None
        self._step.assign(step)
        state = {
            "format_version": STATE_FORMAT_VERSION,
            "step": step,
            "rng": rng.capture(),
        }
        files = {STATE_FILE: [json.dumps(state).encode()]}
        if self._group is not None:
            state["workers"] = self._group.worker_count
            files[STATE_FILE] = [json.dumps(state).encode()]
            own = json.dumps({"worker": self._group.worker_id, "step": step, "rng": state["rng"]})
            files[parts.part_file(self._group.worker_id)] = [own.encode()]
            if not self._group.is_chief:
                parts.hand_to_chief(self._group, step, own.encode())
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
        if self._group is not None and self._group.is_chief:
            for name, part in parts.collect_from_peers(self._group, step).items():
                files[name] = [part]
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
        if self._stop is not None:
            self._stop.close()
        session, self._session = self._session, None
        if session is not None:
            session.finish(delete_backup=self.delete_checkpoint)

    def close(self) -> None:
        """Release the directory and the signal handlers (idempotent)."""
        if self._stop is not None:
            self._stop.close()
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
