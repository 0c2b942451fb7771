"""`BackupAndRestore`: Keras's callback of that name, made exact.

See the class docstring for the lifecycle.
"""

from __future__ import annotations

import logging

import keras

from ftharness.keras import _internals, state
from ftharness.keras.state import Position, Snapshot
from ftharness.worker import WorkerError, WorkerSession, exit_with

log = logging.getLogger("ftharness.keras")


class BackupAndRestore(keras.callbacks.Callback):
    """Back up the whole training state; resume at the exact next batch.

    A drop-in for `keras.callbacks.BackupAndRestore` (it takes the same
    arguments) that also saves what Keras's own forgets: the step within the
    epoch, the optimizer's step and slots, metric accumulators, Python's and
    NumPy's RNG states, and the state of every other callback of the `fit()`
    that has `get_state()` / `set_state(state)` (JSON-serialisable).

    Lifecycle:
    - `on_train_begin`: takes the checkpoint directory's lock, restores the
      newest checkpoint that verifies (a corrupt newer one is reported and
      moved aside), and positions `fit()` at the exact next batch: batches
      already trained in the interrupted epoch are read from the data and
      dropped, never trained twice.
    - every `save_freq` batches (or at each epoch end with `"epoch"`): a
      checkpoint is committed atomically; the newest `keep` are kept.
    - on SIGTERM, SIGINT or SIGHUP: a final checkpoint at the next batch
      boundary, then the process exits with 128 + the signal number (143 for
      SIGTERM), the code `ftharness supervise` expects. SIGUSR1 asks for a
      checkpoint at the next boundary while training goes on.
    - `on_train_end`: the checkpoints stay, unless `delete_checkpoint=True`.

    The callback runs after all other callbacks in every hook (it moves
    itself to the end of the list), so a checkpoint holds every callback's
    state after it has seen the batch.

    What you must do for a bit-identical resume: seed everything with
    `keras.utils.set_random_seed(seed)` and, on CPU,
    `tf.config.experimental.enable_op_determinism()`, before building the
    model.

    Example::

        model.fit(x, y, epochs=10, callbacks=[
            ftharness.keras.BackupAndRestore(save_freq=50), PerBatchLR()])

    Args:
        backup_dir: local directory for checkpoints. Under
            `ftharness supervise` the supervisor's directory is used.
        save_freq: `"epoch"`, an integer number of batches, or `False` (only
            the final checkpoint on a stop signal, and on request).
        double_checkpoint: accepted for compatibility; `keep` >= 2 does this.
        delete_checkpoint: delete the checkpoints when training finishes.
            Defaults to `False` (Keras's own defaults to `True`).
        keep: committed checkpoints to keep (default: the supervisor's
            `--keep`, else 2).
    """

    def __init__(
        self,
        backup_dir: str | None = None,
        save_freq: str | int | bool = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = False,
        keep: int | None = None,
    ) -> None:
        super().__init__()
        if (
            save_freq is not False
            and save_freq != "epoch"
            and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1)
        ):
            raise ValueError(
                f"save_freq must be 'epoch', a positive integer or False, got {save_freq!r}"
            )
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self.keep = max(keep, 2) if keep is not None and double_checkpoint else keep
        self._session: WorkerSession | None = None
        self._callback_list = None
        self._position = Position(epoch=0, batch=0, step=0)
        self._resume_batches_to_skip = 0  # batches of the resumed epoch already trained
        self._undo_skip = None
        self._last_saved_step: int | None = None

    # -- lifecycle, in the order Keras calls it ----------------------------

    def set_model(self, model) -> None:
        super().set_model(model)
        callback_list = _internals.calling_callback_list(self)
        if callback_list is not None:
            self._callback_list = callback_list
            _internals.move_to_end(callback_list, self)

    def on_train_begin(self, logs=None) -> None:
        try:
            self._session = WorkerSession.open(self.backup_dir, self.keep)
            self._restore()
        except WorkerError as error:
            self._close()
            exit_with(error)
        self._session.flags.install()

    def on_epoch_begin(self, epoch, logs=None) -> None:
        if self._position.epoch != epoch:  # a fresh epoch, not the resumed one
            self._position = Position(epoch=epoch, batch=0, step=self._position.step)

    def on_train_batch_end(self, batch, logs=None) -> None:
        done_in_epoch = self._resume_batches_to_skip + batch + 1
        self._position = Position(
            epoch=self._position.epoch,
            batch=done_in_epoch,
            step=self._position.step + (done_in_epoch - self._position.batch),
        )
        steps_in_epoch = self.params.get("steps") if self.params else None
        at_epoch_end = steps_in_epoch is not None and done_in_epoch >= steps_in_epoch
        if at_epoch_end and self._resume_batches_to_skip:
            # The resumed epoch has no more data (its first batches were
            # skipped): end it here rather than let fit() run dry.
            _internals.end_epoch_early(self.model)
        if at_epoch_end:
            # Saves at the last batch wait for on_epoch_end, so that the
            # checkpoint holds the epoch's validation and callbacks' results.
            return
        flags = self._session.flags
        if (
            flags.stop_signal is not None
            or flags.take_checkpoint_request()
            or self._periodic_save_due()
        ):
            self._save()
        if flags.stop_signal is not None:
            self._session.exit_preempted()

    def on_epoch_end(self, epoch, logs=None) -> None:
        _internals.clear_end_epoch_early(self.model)
        self._resume_batches_to_skip = 0
        self._position = Position(epoch=epoch + 1, batch=0, step=self._position.step)
        flags = self._session.flags
        if (
            self.save_freq == "epoch"
            or self._periodic_save_due()
            or flags.stop_signal is not None
            or flags.take_checkpoint_request()
        ):
            self._save()
        if flags.stop_signal is not None:
            self._session.exit_preempted()

    def on_train_end(self, logs=None) -> None:
        if self._undo_skip is not None:
            self._undo_skip()
        _internals.clear_initial_epoch(self.model)
        if self.delete_checkpoint and self._session is not None:
            for ref in self._session.store.list_committed():
                self._session.store.delete(ref)
        self._close()

    # -- saving and restoring ----------------------------------------------

    def _periodic_save_due(self) -> bool:
        # Counted in global steps, so a resumed run saves at the same steps
        # as one never interrupted.
        return (
            isinstance(self.save_freq, int)
            and not isinstance(self.save_freq, bool)
            and self._position.step % self.save_freq == 0
        )

    def _save(self) -> None:
        if self._last_saved_step == self._position.step:
            return  # already committed at this very boundary
        snapshot = Snapshot(
            position=self._position,
            arrays=state.capture_arrays(self.model),
            json_state={
                "rng": state.capture_rng_state(),
                "callbacks": self._callback_states(),
            },
        )
        ref = self._session.commit(
            step=snapshot.position.step,
            epoch=snapshot.position.epoch,
            batch=snapshot.position.batch,
            files=snapshot.files(),
        )
        self._last_saved_step = self._position.step
        log.info(
            "checkpoint %s committed (epoch %d, batch %d)",
            ref.name,
            self._position.epoch,
            self._position.batch,
        )

    def _restore(self) -> None:
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        loaded = self._session.load_latest()
        if loaded is None:
            return
        location = str(loaded.ref.path)
        restored = state.parse(loaded.files, location)
        variables = state.training_variables(model)
        state.check_compatible(
            variables, [e for e, _ in restored.arrays[state.GROUP_TRAINING]], location, "training"
        )
        self._check_callbacks(restored.json_state.get("callbacks", []), location)
        state.assign(variables, restored.arrays[state.GROUP_TRAINING])
        state.restore_rng_state(restored.json_state["rng"])
        self._restore_callback_states(restored.json_state.get("callbacks", []))

        self._position = restored.position
        self._last_saved_step = restored.position.step
        _internals.set_initial_epoch(model, restored.position.epoch)
        if restored.position.batch > 0:
            self._resume_batches_to_skip = restored.position.batch
            self._undo_skip = _internals.skip_batches_on_next_step(
                model,
                restored.position.batch,
                after_skip=lambda batch: self._restore_metrics(
                    batch, restored.arrays.get(state.GROUP_METRICS)
                ),
            )
        log.info(
            "restored %s: resuming at epoch %d, batch %d (step %d)",
            loaded.ref.name,
            restored.position.epoch,
            restored.position.batch,
            restored.position.step,
        )

    def _restore_metrics(self, data_batch, values) -> None:
        """Put back the metric accumulators of the resumed epoch's first batches.

        Runs just before the first train step after a mid-epoch resume: fit()
        reset the metrics at epoch begin, and builds them only when it first
        traces the train step.
        """
        if not values:
            return
        if len(state.metric_variables(self.model)) != len(values):
            _internals.build_metrics(self.model, data_batch)
        variables = state.metric_variables(self.model)
        if [tuple(v.shape) for v in variables] != [entry.shape for entry, _ in values]:
            log.warning(
                "metric accumulators differ from the checkpoint's; the resumed epoch's "
                "logged metrics restart from zero"
            )
            return
        state.assign(variables, values)

    # -- other callbacks -----------------------------------------------------

    def _stateful_callbacks(self) -> list:
        if self._callback_list is None:
            return []
        return [
            c
            for c in self._callback_list.callbacks
            if c is not self
            and callable(getattr(c, "get_state", None))
            and callable(getattr(c, "set_state", None))
        ]

    def _callback_states(self) -> list[dict]:
        return [
            {"class": type(c).__qualname__, "state": c.get_state()}
            for c in self._stateful_callbacks()
        ]

    def _check_callbacks(self, saved: list[dict], location: str) -> None:
        current = [type(c).__qualname__ for c in self._stateful_callbacks()]
        saved_classes = [entry["class"] for entry in saved]
        if current != saved_classes:
            log.warning(
                "the callbacks with state differ from the checkpoint's (%s now, %s in %s); "
                "their state is restored where the classes match in order",
                current,
                saved_classes,
                location,
            )

    def _restore_callback_states(self, saved: list[dict]) -> None:
        for callback, entry in zip(self._stateful_callbacks(), saved, strict=False):
            if type(callback).__qualname__ == entry["class"]:
                callback.set_state(entry["state"])

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
