"""`BackupAndRestore`: Keras's callback of that name, made exact.

See the class docstring for the lifecycle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import keras

from ftharness.checkpoint.background import BackgroundWriteError, BackgroundWriter
from ftharness.checkpoint.manifest import checkpoint_name
from ftharness.keras import (
    _internals,
    callback_states,
    data_position,
    exactness,
    fit_args,
    rng,
    state,
)
from ftharness.keras.data_position import DataPosition, DataTracker
from ftharness.keras.state import Position, Snapshot
from ftharness.worker import WorkerError, WorkerSession, exit_with

log = logging.getLogger("ftharness.keras")


class BackupAndRestore(keras.callbacks.Callback):
    """Back up the whole training state; resume at the exact next batch.

    A drop-in for `keras.callbacks.BackupAndRestore` (it takes the same
    arguments) that also saves what Keras's own forgets: the position in the
    data (the exact next batch, also of a reshuffling `tf.data` pipeline),
    the optimizer's step and slots, metric accumulators, the global random
    generators (Python, NumPy, TensorFlow's, `keras.random`'s), the state of
    Keras's stateful built-in callbacks (History, EarlyStopping,
    ReduceLROnPlateau, ModelCheckpoint, CSVLogger) and of every other
    callback that has `get_state()` / `set_state(state)` (JSON-serialisable),
    and the `fit()` arguments, so that a restart under other ones is refused.
    What cannot be restored exactly (a Python generator as input, ...) is
    said at start, in one line.

    Lifecycle:
    - `on_train_begin`: takes the checkpoint directory's lock, restores the
      newest checkpoint that verifies (a corrupt newer one is reported and
      moved aside), and positions `fit()` at the exact next batch: batches
      already trained in the interrupted epoch are read from the data and
      dropped, never trained twice (see `data_position`).
    - the resumed epoch's first `on_train_batch_begin`, ahead of every other
      callback: Keras has run the epoch's start again (every callback's
      `on_epoch_begin`, a PyDataset's); what it changed (callbacks' and the
      input's state, the learning rate, the random generators) is put back
      to the checkpoint's.
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
    model and the data pipeline; seed TensorFlow's global generator if you
    use it (`tf.random.set_global_generator(tf.random.Generator.from_seed(s))`);
    call `fit()` with the same arguments on every attempt.

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
        async_save: write checkpoints in the background (default): training
            stalls only while the state is copied to host memory; a save
            requested while the previous one is still being written waits
            for it. The final checkpoint on a stop signal is always committed
            before the process exits. `False` commits every checkpoint before
            training goes on.
        allow_changed_fit_args: resume even if `fit()` was called with other
            `epochs`, batch size, epoch length or input than the checkpoint
            was written under (default `False`: refused, exit 64).
        pickle_callbacks: callbacks without `get_state()` whose attributes
            are saved by pickling. Unpickling runs code from the checkpoint:
            use it only for storage you trust.
    """

    def __init__(
        self,
        backup_dir: str | None = None,
        save_freq: str | int | bool = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = False,
        keep: int | None = None,
        async_save: bool = True,
        allow_changed_fit_args: bool = False,
        pickle_callbacks: Sequence[keras.callbacks.Callback] = (),
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
        self.allow_changed_fit_args = allow_changed_fit_args
        self.pickle_callbacks = list(pickle_callbacks)
        self._session: WorkerSession | None = None
        self._callback_list = None
        self._position = Position(epoch=0, batch=0, step=0)
        self._resume_batches_to_skip = 0  # batches of the resumed epoch already trained
        self._tracker = DataTracker(None, data_position.INPUT_OTHER)
        self._train_function: _internals.TrainFunctionWrapper | None = None
        self._saved_callbacks: list[callback_states.SavedCallback] = []
        self._fit_fingerprint: dict = {}
        self._input = None  # a PyDataset with get_state()/set_state(), if fit() got one
        self._mid_epoch: _MidEpochResume | None = None
        self._reenter_first: _internals.RunFirstOnce | None = None
        self._last_saved_step: int | None = None  # committed, or being committed
        self.async_save = async_save
        self._writer = BackgroundWriter()

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
            self._begin()
            self._restore()
        except WorkerError as error:
            self._close()
            exit_with(error)
        self._session.flags.install()

    def on_epoch_begin(self, epoch, logs=None) -> None:
        if self._position.epoch != epoch:  # a fresh epoch, not the resumed one
            self._position = Position(epoch=epoch, batch=0, step=self._position.step)
        if self._mid_epoch is not None:
            self._tracker.begin_resumed_epoch(self._mid_epoch.batches_done)
            if self._reenter_first is None:  # no callback list to go first in
                self._reenter_epoch()

    def on_train_batch_end(self, batch, logs=None) -> None:
        done_in_epoch = self._resume_batches_to_skip + batch + 1
        self._tracker.batches_trained(done_in_epoch - self._position.batch)
        self._position = Position(
            epoch=self._position.epoch,
            batch=done_in_epoch,
            step=self._position.step + (done_in_epoch - self._position.batch),
        )
        steps_in_epoch = self.params.get("steps") if self.params else None
        at_epoch_end = steps_in_epoch is not None and done_in_epoch >= steps_in_epoch
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
            # Also when the signal came after the check above: the final
            # checkpoint holds this boundary's state and is committed (with any
            # write in flight) before the process exits.
            self._save()
            self._session.exit_preempted()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._tracker.at_epoch_end()
        self._tracker.end_resumed_epoch()
        if self._reenter_first is not None:
            self._reenter_first.remove()  # if the epoch had no batch left
            self._reenter_first = None
        self._mid_epoch = None
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
            self._save()  # as in on_train_batch_end
            self._session.exit_preempted()

    def on_train_end(self, logs=None) -> None:
        # The last checkpoint is committed (or its error raised) before
        # checkpoints are deleted or the directory's lock is released.
        try:
            self._writer.wait()
        except BackgroundWriteError:
            self._close()
            raise
        if self._train_function is not None:
            self._train_function.remove()
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
        """Snapshot the state into host memory; commit it in the background.

        Training waits only for the snapshot. With a stop signal pending this
        is the final checkpoint, committed before `_save` returns.
        """
        final = self._session.flags.stop_signal is not None
        # One snapshot in memory at a time: the previous write is committed
        # (or failed) before the next snapshot is taken. Why we wait rather
        # than skip: ftharness.checkpoint.background.
        try:
            self._writer.make_room()
        except BackgroundWriteError as error:
            self._last_saved_step = None  # that write never committed
            if not final:
                raise
            # The final checkpoint holds newer state than the lost one: write it.
            log.error("%s; writing the final checkpoint anyway", error)
        if self._last_saved_step == self._position.step:
            return  # already committed (or being committed) at this very boundary
        stall_started = time.monotonic()
        position = self._position
        # Everything mutable is copied here, on the training thread: the
        # arrays (real copies: later steps cannot touch them) and the other
        # callbacks' states (serialised to JSON bytes by files()). The writer
        # thread then only reads this private copy.
        files = self._snapshot(position).files()
        stalled = time.monotonic() - stall_started
        session = self._session

        def commit() -> None:  # on the writer thread
            started = time.monotonic()
            ref = session.commit(
                step=position.step, epoch=position.epoch, batch=position.batch, files=files
            )
            log.info(
                "checkpoint %s committed (epoch %d, batch %d): training stalled %.3f s, "
                "written in %.3f s",
                ref.name,
                position.epoch,
                position.batch,
                stalled,
                time.monotonic() - started,
            )

        self._last_saved_step = position.step
        self._writer.submit(commit, checkpoint_name(position.step))
        if final or not self.async_save:
            try:
                self._writer.wait()
            except BackgroundWriteError:
                self._last_saved_step = None
                raise

    def _snapshot(self, position: Position) -> Snapshot:
        """Everything a resume needs, copied on the training thread."""
        at_epoch_boundary = position.batch == 0
        arrays = state.capture_arrays(self.model)
        callback_entries, callback_arrays = callback_states.capture(self._saved_callbacks)
        arrays.update(callback_arrays)
        return Snapshot(
            position=position,
            arrays=arrays,
            json_state={
                "rng": rng.capture(),
                "callbacks": callback_entries,
                "data": self._tracker.position(at_epoch_boundary).to_json(),
                "input": self._input_state(),
                "fit": self._fit_fingerprint,
            },
        )

    def _begin(self) -> None:
        """Find the running fit(), its data and the callbacks to save; say what is not exact."""
        fit_call = _internals.running_fit(self.model)
        x = fit_call.arguments.get("x") if fit_call is not None else None
        kind = data_position.input_kind(x) if fit_call is not None else data_position.INPUT_OTHER
        self._tracker = DataTracker(fit_call, kind)
        if fit_call is not None:  # else there is no train function to follow
            self._train_function = _internals.TrainFunctionWrapper(
                self.model, self._tracker.before_train_step
            )
        callback_states.check_picklable(self.pickle_callbacks)
        callbacks = self._callback_list.callbacks if self._callback_list is not None else []
        self._saved_callbacks = callback_states.saved_callbacks(
            callbacks, exclude=self, pickled=self.pickle_callbacks
        )
        has_state = callable(getattr(x, "get_state", None)) and callable(
            getattr(x, "set_state", None)
        )
        self._input = x if kind == data_position.INPUT_PYDATASET and has_state else None
        self._fit_fingerprint = fit_args.fingerprint(fit_call, self.params, kind)
        reasons = exactness.limits(fit_call, kind, _internals.distribution_strategy(self.model))
        if reasons:
            log.warning("a resume of this training will not be exact: %s", "; ".join(reasons))

    def _input_state(self):
        return self._input.get_state() if self._input is not None else None

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
        training_arrays = restored.arrays[state.GROUP_TRAINING]
        state.check_compatible(variables, [e for e, _ in training_arrays], location, "training")
        fit_args.check(
            restored.json_state.get("fit"),
            self._fit_fingerprint,
            allow=self.allow_changed_fit_args,
            location=location,
        )
        state.assign(variables, training_arrays)
        rng.restore(restored.json_state["rng"])
        callback_entries = restored.json_state.get("callbacks", [])
        callback_states.restore(self._saved_callbacks, callback_entries, restored.arrays, location)
        saved_input = restored.json_state.get("input")
        if self._input is not None and saved_input is not None:
            self._input.set_state(saved_input)

        position = restored.position
        self._position = position
        self._last_saved_step = position.step
        _internals.set_initial_epoch(model, position.epoch)
        # Checkpoints of format 1 knew only the batch within the epoch.
        data = DataPosition.from_json(
            restored.json_state.get("data") or {"iterators_before": 0, "skip": position.batch}
        )
        if position.batch > 0:
            self._resume_batches_to_skip = position.batch
            self._mid_epoch = _MidEpochResume(
                batches_done=position.batch,
                training_arrays=training_arrays,
                callback_entries=callback_entries,
                arrays=restored.arrays,
                input=saved_input,
                rng=restored.json_state["rng"],
                location=location,
            )
            self._reenter_first = _internals.run_first_once(
                self._callback_list, on_train_batch_begin=self._reenter_epoch
            )
            after_skip = self._restore_metrics
        else:
            after_skip = None
        self._tracker.prepare_resume(data, after_skip)
        log.info(
            "restored %s: resuming at epoch %d, batch %d (step %d)",
            loaded.ref.name,
            position.epoch,
            position.batch,
            position.step,
        )

    def _reenter_epoch(self) -> None:
        """Before the resumed epoch's first batch, ahead of every other callback.

        Keras has run the epoch's start again: every callback's
        `on_epoch_begin` and the input's (a PyDataset's `on_epoch_begin`).
        What they changed goes back to the checkpoint's: callbacks' and the
        input's states, the variables (a LearningRateScheduler sets the
        learning rate), the global random generators.
        """
        resume = self._mid_epoch
        if resume is None:
            return
        state.assign(state.training_variables(self.model), resume.training_arrays)
        callback_states.restore(
            self._saved_callbacks,
            resume.callback_entries,
            resume.arrays,
            resume.location,
            warn=False,  # said at on_train_begin already
        )
        if self._input is not None and resume.input is not None:
            self._input.set_state(resume.input)
        rng.restore(resume.rng)

    def _restore_metrics(self, data_batch) -> None:
        """Put back the metric accumulators of the resumed epoch's first batches.

        Runs just before the first train step after a mid-epoch resume: fit()
        reset the metrics at epoch begin, and builds them only when it first
        traces the train step.
        """
        values = self._mid_epoch.arrays.get(state.GROUP_METRICS) if self._mid_epoch else None
        if not values:
            return
        if len(state.metric_variables(self.model)) != len(values):
            if data_batch is None:
                return
            _internals.build_metrics(self.model, data_batch)
        variables = state.metric_variables(self.model)
        if [tuple(v.shape) for v in variables] != [entry.shape for entry, _ in values]:
            log.warning(
                "metric accumulators differ from the checkpoint's; the resumed epoch's "
                "logged metrics restart from zero"
            )
            return
        state.assign(variables, values)

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


@dataclass(frozen=True)
class _MidEpochResume:
    """What is put back before the resumed epoch's first batch (`_reenter_epoch`)."""

    batches_done: int
    training_arrays: list
    callback_entries: list
    arrays: dict
    input: object  # the PyDataset's get_state() at the checkpoint, or None
    rng: dict  # the checkpoint's global generators (rng.capture)
    location: str
