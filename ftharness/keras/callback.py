"""`BackupAndRestore`: Keras's callback of that name, made exact.

See the class docstring for the lifecycle. Over 400 lines because the class
docstring is the user's reference (a quarter of the file) and the rest is one
lifecycle, hook by hook; the parts with a job of their own live beside it
(`state`: the checkpoint's schema, `data_position`, `callback_states`, `rng`,
`fit_args`, `_internals`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import keras

from ftharness.checkpoint.background import (
    AbandonOutcome,
    BackgroundWriteError,
    BackgroundWriter,
)
from ftharness.checkpoint.manifest import checkpoint_name
from ftharness.config import WorkerEnvironment
from ftharness.keras import (
    _internals,
    callback_states,
    data_position,
    exactness,
    fit_args,
    multi_worker,
    rng,
    state,
)
from ftharness.keras.data_position import DataTracker
from ftharness.keras.state import Position, TrainingState
from ftharness.worker import WorkerError, WorkerSession, exit_with

log = logging.getLogger("ftharness.keras")


class BackupAndRestore(keras.callbacks.Callback):
    """Back up the whole training state; resume at the exact next batch.

    A drop-in for `keras.callbacks.BackupAndRestore` (it takes the same
    arguments, and raises the same errors for bad ones) that also saves what
    Keras's own forgets: the position in the data (the exact next batch, also
    of a reshuffling `tf.data` pipeline), the optimizer's step and slots,
    metric accumulators, the global random generators (Python, NumPy,
    TensorFlow's, `keras.random`'s), the state of Keras's stateful built-in
    callbacks (History, EarlyStopping, ReduceLROnPlateau, ModelCheckpoint,
    CSVLogger) and of every other callback that has `get_state()` /
    `set_state(state)` (JSON-serialisable), and the `fit()` arguments, so
    that a restart under other ones is refused. What cannot be restored
    exactly (a Python generator as input, ...) is said at start, in one line.

    Wherever it stands in the list, the callback runs first in every hook,
    and a companion of it runs last: it restores before any other callback's
    `on_train_begin`, and saves after every callback has seen the batch.

    Lifecycle:
    - `on_train_begin`, first: takes the checkpoint directory's lock,
      restores the model and optimizer of the newest checkpoint that
      verifies (a corrupt newer one is reported and moved aside) and
      positions `fit()` at the exact next batch: batches already trained in
      the interrupted epoch are read from the data and dropped, never
      trained twice (see `data_position`). Last: the other callbacks' states,
      the input's and the random generators go back to the checkpoint's,
      after the callbacks' own `on_train_begin` reset them.
    - the resumed epoch's first `on_train_batch_begin`, first: Keras has run
      the epoch's start again (every callback's `on_epoch_begin`, a
      PyDataset's); what it changed is put back to the checkpoint's.
    - every `save_freq` batches (or at each epoch end with `"epoch"`), last:
      a checkpoint is committed atomically; the newest `keep` are kept.
    - on SIGTERM, SIGINT or SIGHUP: a final checkpoint at the next batch
      boundary, then the process exits with 128 + the signal number (143 for
      SIGTERM), the code `ftharness supervise` expects. SIGUSR1 asks for a
      checkpoint at the next boundary while training goes on.
    - `on_train_end`, last: with `delete_checkpoint=True` the job's backup is
      removed (see Args); the directory's lock and the signal handlers are
      given back.
    - any other way out of `fit()` (an exception in a callback, in training
      or in validation, a KeyboardInterrupt): the write in flight is
      finished, the lock and the signal handlers are given back, the
      checkpoints stay; `fit()` again (same or new callback) resumes.

    What you must do for a bit-identical resume: seed everything with
    `keras.utils.set_random_seed(seed)` and, on CPU,
    `tf.config.experimental.enable_op_determinism()`, before building the
    model and the data pipeline; seed TensorFlow's global generator if you
    use it (`tf.random.set_global_generator(tf.random.Generator.from_seed(s))`);
    call `fit()` with the same arguments on every attempt (`epochs` may grow).

    Example::

        model.fit(x, y, epochs=10, callbacks=[
            ftharness.keras.BackupAndRestore("backups", save_freq=50), PerBatchLR()])

    Args:
        backup_dir: local directory for checkpoints. Under
            `ftharness supervise` the supervisor's directory is used, and
            None is allowed; alone, an empty one raises ValueError.
        save_freq: `"epoch"`, a positive number of batches, or `False` (only
            the final checkpoint on a stop signal, and on request).
        double_checkpoint: keep at least two checkpoints (even under `keep=1`
            or `--keep 1`), so that a corrupt newest one has a predecessor.
        delete_checkpoint: remove the backup when the job succeeds (default
            `True`, as Keras). Alone: at the end of a successful `fit()`.
            Under `ftharness supervise`: by the supervisor once the command
            exits 0, locally and remotely, so that a crash after `fit()` (in
            evaluation, in `model.save`) still resumes from the end of
            training. Only ftharness's files go (checkpoints, lock, leases,
            temporaries), never others in the directory, and the event
            records stay. `False` keeps everything.
        keep: committed checkpoints to keep (default: the supervisor's
            `--keep`, else 2).
        async_save: write checkpoints in the background (default): training
            stalls only while the state is copied to host memory; a save
            requested while the previous one is still being written waits
            for it. The final checkpoint on a stop signal is always committed
            before the process exits. `False` commits every checkpoint before
            training goes on.
        allow_changed_fit_args: resume even if `fit()` was called with
            another batch size, epoch length, input or shuffling than the
            checkpoint was written under (default `False`: refused, exit 64).
            Another `epochs` is always accepted, with a warning.
        pickle_callbacks: callbacks without `get_state()` whose attributes
            are saved by pickling. Unpickling runs code from the checkpoint:
            use it only for storage you trust.
    """

    def __init__(
        self,
        backup_dir: str | None = None,
        save_freq: str | int | bool = "epoch",
        double_checkpoint: bool = False,
        delete_checkpoint: bool = True,
        keep: int | None = None,
        async_save: bool = True,
        allow_changed_fit_args: bool = False,
        pickle_callbacks: Sequence[keras.callbacks.Callback] = (),
    ) -> None:
        super().__init__()
        # Keras's own checks, with Keras's wording, at construction.
        supervised = WorkerEnvironment.from_environ().supervised
        if not backup_dir and not (backup_dir is None and supervised):
            raise ValueError(
                "Empty `backup_dir` argument passed (None is allowed only under "
                "`ftharness supervise`, which gives the directory)"
            )
        if (
            save_freq is not False
            and save_freq != "epoch"
            and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1)
        ):
            raise ValueError(
                f"Invalid value for argument `save_freq`. Received: save_freq={save_freq}. "
                "Expected either 'epoch', a positive integer or False."
            )
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self.keep = keep
        self.async_save = async_save
        self.allow_changed_fit_args = allow_changed_fit_args
        self.pickle_callbacks = list(pickle_callbacks)
        # Keras's own bookkeeping, under Keras's names, for code that reads
        # them: the epoch fit() is in (or has just finished: `epoch + 1`) and
        # the last batch it finished. The newest checkpoint may be one step
        # behind, when a later callback raised in that step's hooks.
        self._current_epoch = 0
        self._last_batch_seen = 0
        self._last = _RunLast(self)
        self._callback_list = None
        self._guard: _internals.FitExitGuard | None = None  # while a fit() runs
        self._session: WorkerSession | None = None
        self._writer = BackgroundWriter()
        self._snapshot_buffers = state.SnapshotBuffers()  # periodic snapshots' memory
        self._reset_for_fit()

    def _reset_for_fit(self) -> None:
        """What one fit() learns and changes; a new fit() starts afresh."""
        self._position = Position(epoch=0, batch=0, step=0)
        self._resume_batches_to_skip = 0  # batches of the resumed epoch already trained
        self._tracker = DataTracker(None, data_position.INPUT_OTHER)
        self._train_function: _internals.TrainFunctionWrapper | None = None
        self._saved_callbacks: list[callback_states.SavedCallback] = []
        self._fit_fingerprint: dict = {}
        self._input = None  # a PyDataset with get_state()/set_state(), if fit() got one
        self._restored: TrainingState | None = None  # to apply after the others' train begin
        self._mid_epoch: TrainingState | None = None  # to apply again at the resumed epoch
        self._metrics_to_restore: TrainingState | None = None  # its resumed epoch's metrics
        self._location = ""  # the checkpoint restored, for messages
        self._last_saved_step: int | None = None  # committed, or being committed

    # -- lifecycle, in the order Keras calls it ----------------------------

    def set_model(self, model) -> None:
        super().set_model(model)
        callback_list = _internals.calling_callback_list(self)
        if callback_list is None or callback_list is self._callback_list:
            return
        self._callback_list = callback_list
        _internals.place_first_and_last(callback_list, self, self._last)
        self._guard_fit()  # before on_train_begin: it guards the others' too

    def _guard_fit(self) -> None:
        if self._guard is not None:
            self._guard.remove()
        if self._callback_list is not None:
            self._guard = _internals.FitExitGuard(self._callback_list, self.model, self._abandon)

    def on_train_begin(self, logs=None) -> None:
        if self._guard is None:  # a CallbackList given to fit() again
            self._guard_fit()
        self._reset_for_fit()
        self._current_epoch = 0
        self._last_batch_seen = 0
        try:
            multi_worker.refuse_multi_worker(self.model)
            self._session = WorkerSession.open(
                self.backup_dir, self.keep, at_least=2 if self.double_checkpoint else 1
            )
            self._begin()
            self._restore()
        except WorkerError as error:
            self._close()
            exit_with(error)
        self._session.flags.install()
        if not self._placed:
            self._last.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._current_epoch = epoch
        if self._position.epoch != epoch:  # a fresh epoch, not the resumed one
            self._position = Position(epoch=epoch, batch=0, step=self._position.step)
        if self._mid_epoch is not None:
            self._tracker.begin_resumed_epoch(self._mid_epoch.position.batch)

    def on_train_batch_begin(self, batch, logs=None) -> None:
        resumed, self._mid_epoch = self._mid_epoch, None
        if resumed is not None:
            # Keras has run the resumed epoch's start again: every callback's
            # on_epoch_begin and the input's (a PyDataset's on_epoch_begin).
            # What they changed goes back to the checkpoint's.
            self._apply(resumed, warn=False)  # differences were said at on_train_begin

    # Overridden (not only in the companion) also so that Keras never
    # dispatches the batch hooks to its thread pool (CallbackList's async
    # dispatch is off when a callback overrides on_train_batch_end).
    def on_train_batch_end(self, batch, logs=None) -> None:
        self._last_batch_seen = batch
        if not self._placed:
            self._last.on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._current_epoch = epoch + 1
        self._last_batch_seen = 0
        self._mid_epoch = None  # if the resumed epoch had no batch left
        if not self._placed:
            self._last.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None) -> None:
        if not self._placed:
            self._last.on_train_end(logs)

    @property
    def _placed(self) -> bool:
        """True when the companion stands last in the running fit()'s callback list."""
        return self._callback_list is not None

    # -- the companion's hooks (after every other callback) ----------------

    def _after_train_begin(self) -> None:
        restored, self._restored = self._restored, None
        if restored is not None:
            self._apply(restored, warn=True)

    def _after_batch(self, batch: int) -> None:
        done_in_epoch = self._resume_batches_to_skip + batch + 1
        self._tracker.batches_trained(done_in_epoch - self._position.batch)
        self._position = Position(
            epoch=self._position.epoch,
            batch=done_in_epoch,
            step=self._position.step + (done_in_epoch - self._position.batch),
        )
        steps_in_epoch = self.params.get("steps") if self.params else None
        if steps_in_epoch is not None and done_in_epoch >= steps_in_epoch:
            # Saves at the last batch wait for on_epoch_end, so that the
            # checkpoint holds the epoch's validation and callbacks' results.
            return
        self._save_if_due(at_epoch_end=False)

    def _after_epoch(self, epoch: int) -> None:
        self._tracker.at_epoch_end()
        self._tracker.end_resumed_epoch()
        self._resume_batches_to_skip = 0
        self._position = Position(epoch=epoch + 1, batch=0, step=self._position.step)
        self._save_if_due(at_epoch_end=True)

    def _after_train_end(self) -> None:
        session = self._session
        removed_now = self.delete_checkpoint and not session.env.supervised
        # The end of training is a checkpoint (unless the backup goes now):
        # a crash after fit() (in evaluation, in model.save) resumes there
        # and trains nothing again.
        if not removed_now:
            self._save(training_ends=True)  # a no-op if this step is saved already
        # The last checkpoint is committed (or its error raised) before the
        # backup is removed or the directory's lock is released.
        try:
            self._writer.wait()
        except BackgroundWriteError:
            self._abandon(None)
            raise
        self._release_fit()
        self._session = None
        session.finish(delete_backup=self.delete_checkpoint)

    def _abandon(self, error: BaseException | None) -> None:
        """fit() ends by an exception: finish the write in flight, give everything back.

        The checkpoints stay (committed ones are never touched here), so a
        new fit() resumes from the newest.
        """
        try:
            self._writer.wait()
        except BackgroundWriteError as write_error:
            log.error("%s; the checkpoint before it is the newest", write_error)
        self._release_fit()
        self._close()
        if error is not None and not isinstance(error, SystemExit):
            log.info("fit() ended by %s; the checkpoints stay", type(error).__name__)

    def _release_fit(self) -> None:
        self._snapshot_buffers.release()  # no write in flight: the callers waited
        if self._train_function is not None:
            self._train_function.remove()
            self._train_function = None
        if self._guard is not None:
            self._guard.remove()
            self._guard = None
        if self.model is not None:
            _internals.clear_initial_epoch(self.model)

    # -- saving and restoring ----------------------------------------------

    def _save_if_due(self, *, at_epoch_end: bool) -> None:
        flags = self._session.flags
        if (
            (at_epoch_end and self.save_freq == "epoch")
            or self._periodic_save_due()
            or self._session.stopping
            or flags.take_checkpoint_request()
        ):
            self._save()
        if self._session.stopping:
            # Also when the signal came after the check above: the final
            # checkpoint holds this boundary's state and is committed (with any
            # write in flight) before the process exits.
            self._save()
            self._session.exit_preempted()

    def _periodic_save_due(self) -> bool:
        # Counted in global steps, so a resumed run saves at the same steps
        # as one never interrupted.
        return (
            isinstance(self.save_freq, int)
            and not isinstance(self.save_freq, bool)
            and self._position.step % self.save_freq == 0
        )

    def _save(self, *, training_ends: bool = False) -> None:
        """Capture the state and commit it: in the background, or before returning.

        A periodic checkpoint copies the arrays once, into host buffers reused
        from save to save (`state.SnapshotBuffers`), and is committed in the
        background while training goes on. A save committed before training
        goes on (the final checkpoint after a stop signal, the end of
        training, `async_save=False`) copies nothing: it writes straight from
        the variables' own memory (`state.capture_views`).
        """
        final = self._session.stopping
        if final:
            self._settle_write_in_flight_for_final()
        else:
            # One write in flight at a time: the previous write is committed
            # (or failed) before the next snapshot is taken. Why we wait
            # rather than skip: ftharness.checkpoint.background.
            try:
                self._writer.make_room()
            except BackgroundWriteError:
                self._last_saved_step = None  # that write never committed
                raise
        if self._last_saved_step == self._position.step:
            return  # already committed (or being committed) at this very boundary
        synchronous = final or training_ends or not self.async_save
        stall_started = time.monotonic()
        position = self._position
        # Everything mutable is captured here, on the training thread: the
        # arrays (views for a synchronous save, else a copy that later steps
        # cannot touch) and the other callbacks' states (serialised to JSON
        # bytes by to_files()). The writer thread then only reads them.
        files = self._capture(position, views=synchronous).to_files()
        if not synchronous:  # a periodic write can be abandoned for a final checkpoint
            files[state.ARRAYS_FILE] = self._writer.abandonable(files[state.ARRAYS_FILE])
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
        if synchronous:
            try:
                self._writer.wait()
            except BackgroundWriteError:
                self._last_saved_step = None
                raise

    def _settle_write_in_flight_for_final(self) -> None:
        """Before the final checkpoint: abandon an older write in flight, wait for this one.

        An older periodic write would only be superseded by the final
        checkpoint a moment later; finishing it would spend the grace period
        on it. Abandoned, it leaves at most a `.tmp-` directory, never
        loaded; the committed checkpoints are untouched. A write of this very
        step (the signal came at a periodic save's boundary) is the final
        checkpoint: it is waited for.
        """
        in_flight = self._writer.in_flight
        older = in_flight is not None and in_flight != checkpoint_name(self._position.step)
        try:
            if older:
                # Returns once it writes no more; it removes its temporary
                # directory beside the final write.
                if self._writer.abandon() is not AbandonOutcome.FINISHED:
                    self._last_saved_step = None
            else:
                self._writer.wait()
        except BackgroundWriteError as error:
            self._last_saved_step = None  # that write never committed
            # The final checkpoint holds newer state than the lost one: write it.
            log.error("%s; writing the final checkpoint anyway", error)

    def _capture(self, position: Position, *, views: bool) -> TrainingState:
        """Everything a resume needs, captured on the training thread."""
        if views:
            arrays = state.capture_views(self.model)
        else:
            arrays = self._snapshot_buffers.capture(self.model)
        callback_entries, callback_arrays = callback_states.capture(self._saved_callbacks)
        arrays.update(callback_arrays)
        return TrainingState(
            position=position,
            data=self._tracker.position(at_epoch_boundary=position.batch == 0),
            rng=rng.capture(),
            callbacks=callback_entries,
            input=self._input.get_state() if self._input is not None else None,
            fit=self._fit_fingerprint,
            arrays=arrays,
            replicas=state.replica_count(self.model),
        )

    def _apply(self, restored: TrainingState, *, warn: bool) -> None:
        """Put the checkpoint's state back: variables, callbacks, input, generators.

        At the end of on_train_begin (after the other callbacks reset their
        own state there) and again before the first batch of a resumed epoch.
        """
        # Said, if anything, when restored first (_restore).
        state.assign_group(state.training_variables(self.model), restored, state.GROUP_TRAINING)
        callback_states.restore(
            self._saved_callbacks, restored.callbacks, restored.arrays, self._location, warn=warn
        )
        if self._input is not None and restored.input is not None:
            self._input.set_state(restored.input)
        rng.restore(restored.rng)

    def _begin(self) -> None:
        """Find the running fit(), its data and the callbacks to save; say what is not exact."""
        fit_call = _internals.running_fit(self.model)
        x = fit_call.arguments.get("x") if fit_call is not None else None
        kind = data_position.input_kind(x) if fit_call is not None else data_position.INPUT_OTHER
        self._tracker = DataTracker(fit_call, kind)
        if fit_call is not None:  # else there is no train function to follow
            self._train_function = _internals.TrainFunctionWrapper(
                self.model, self._tracker.before_train_step, self._guard
            )
        callback_states.check_picklable(self.pickle_callbacks)
        callbacks = self._callback_list.callbacks if self._callback_list is not None else []
        self._saved_callbacks = callback_states.saved_callbacks(
            [c for c in callbacks if c is not self._last],
            exclude=self,
            pickled=self.pickle_callbacks,
        )
        has_state = callable(getattr(x, "get_state", None)) and callable(
            getattr(x, "set_state", None)
        )
        self._input = x if kind == data_position.INPUT_PYDATASET and has_state else None
        self._fit_fingerprint = fit_args.fingerprint(fit_call, self.params, kind)
        reasons = exactness.limits(fit_call, kind, _internals.distribution_strategy(self.model))
        if reasons:
            log.warning("a resume of this training will not be exact: %s", "; ".join(reasons))

    def _restore(self) -> None:
        """Restore the model and the optimizer now; the rest after the others' train begin."""
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        loaded = self._session.load_latest()
        if loaded is None:
            return
        self._location = str(loaded.ref.path)
        restored = TrainingState.from_files(loaded.files, self._location)
        variables = state.training_variables(model)
        training_arrays = restored.arrays[state.GROUP_TRAINING]
        state.check_compatible(variables, training_arrays, self._location, "training")
        fit_args.check(
            restored.fit,
            self._fit_fingerprint,
            allow=self.allow_changed_fit_args,
            location=self._location,
        )
        # Now, so that every other callback's on_train_begin sees the restored
        # model and optimizer (optimizer.iterations, the learning rate).
        _warn_not_exact(state.assign_group(variables, restored, state.GROUP_TRAINING))
        self._restored = restored
        position = restored.position
        self._position = position
        self._last_saved_step = position.step
        self._current_epoch = position.epoch
        _internals.set_initial_epoch(model, position.epoch)
        if position.batch > 0:
            self._resume_batches_to_skip = position.batch
            self._mid_epoch = restored
            self._metrics_to_restore = restored
            after_skip = self._restore_metrics
        else:
            after_skip = None
        self._tracker.prepare_resume(restored.data, after_skip)
        log.info(
            "restored %s: resuming at epoch %d, batch %d (step %d)",
            loaded.ref.name,
            position.epoch,
            position.batch,
            position.step,
        )

    def _restore_metrics(self, data_batch) -> None:
        """Put back the metric accumulators of the resumed epoch's first batches.

        Runs just before the first train step after a mid-epoch resume: fit()
        reset the metrics at epoch begin, and builds them only when it first
        traces the train step.
        """
        restored = self._metrics_to_restore
        self._metrics_to_restore = None
        values = restored.arrays.get(state.GROUP_METRICS) if restored is not None else None
        if not values:
            return
        if len(state.metric_variables(self.model)) != len(values):
            if data_batch is None:
                return
            _internals.build_metrics(self.model, data_batch)
        variables = state.metric_variables(self.model)
        if not state.same_layout(variables, values):
            log.warning(
                "metric accumulators differ from the checkpoint's; the resumed epoch's "
                "logged metrics restart from zero"
            )
            return
        _warn_not_exact(state.assign_group(variables, restored, state.GROUP_METRICS))

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _warn_not_exact(reason: str | None) -> None:
    """Say, as at start, what a checkpoint found only when restored makes inexact."""
    if reason is not None:
        log.warning("a resume of this training will not be exact: %s", reason)


class _RunLast(keras.callbacks.Callback):
    """`BackupAndRestore`'s hooks that run after every other callback's."""

    def __init__(self, owner: BackupAndRestore) -> None:
        super().__init__()
        self._owner = owner

    def on_train_begin(self, logs=None) -> None:
        self._owner._after_train_begin()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._owner._after_batch(batch)

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._owner._after_epoch(epoch)

    def on_train_end(self, logs=None) -> None:
        self._owner._after_train_end()
