"""The private Keras details ftharness leans on; these break when Keras changes them."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from ftharness.keras import _internals

pytestmark = pytest.mark.slow


class Recorder(keras.Model):
    """Records the first feature of every batch it trains on (eagerly)."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)
        self.seen: list[float] = []

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, _ = data
        self.seen.append(float(x[0, 0]))
        return {"first": x[0, 0]}


def recorder_model() -> Recorder:
    model = Recorder()
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)
    model(np.zeros((1, 1), "float32"))  # build
    return model


DATA = (np.arange(8, dtype="float32").reshape(8, 1), np.zeros((8, 1), "float32"))


class Hook(keras.callbacks.Callback):
    def __init__(self, on_train_begin=None, on_batch_end=None, on_epoch_end=None):
        super().__init__()
        self._begin, self._batch_end, self._epoch_end = on_train_begin, on_batch_end, on_epoch_end
        self.epochs: list[int] = []

    def on_train_begin(self, logs=None):
        if self._begin:
            self._begin(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self._batch_end:
            self._batch_end(self.model, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self._epoch_end:
            self._epoch_end(self.model, epoch)


def test_initial_epoch_set_in_on_train_begin_is_where_fit_starts():
    model = recorder_model()
    hook = Hook(on_train_begin=lambda m: _internals.set_initial_epoch(m, 2))
    model.fit(*DATA, batch_size=4, epochs=4, shuffle=False, verbose=0, callbacks=[hook])
    assert hook.epochs == [2, 3]


class Named(keras.callbacks.Callback):
    def __init__(self, name, order, companion=None):
        super().__init__()
        self.name, self.order, self.companion = name, order, companion

    def set_model(self, model):
        super().set_model(model)
        if self.companion is not None:
            found = _internals.calling_callback_list(self)
            assert found is not None
            _internals.place_first_and_last(found, self, self.companion)

    def on_train_begin(self, logs=None):
        self.order.append(f"{self.name}.begin")

    def on_train_batch_end(self, batch, logs=None):
        self.order.append(self.name)


def test_the_calling_callback_list_is_found_and_reordered():
    order: list[str] = []
    model = recorder_model()
    model.fit(
        *DATA,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[
            Named("a", order),
            Named("ours", order, Named("last", order)),
            Named("b", order),
        ],
    )
    assert order == ["ours.begin", "a.begin", "b.begin", "last.begin", "ours", "a", "b", "last"]


def test_building_metrics_creates_their_variables_without_changing_state():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    before = len(model.metrics_variables)
    weights = [w.numpy().copy() for w in model.weights]
    _internals.build_metrics(model, (np.ones((4, 2), "float32"), np.ones((4, 1), "float32")))
    assert len(model.metrics_variables) > before
    assert all(float(np.sum(v.numpy())) == 0.0 for v in model.metrics_variables)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(weights, model.weights, strict=True))


# -- the running fit() and its EpochIterator ------------------------------------------


class Spy(keras.callbacks.Callback):
    """Records what the internals see at each hook of a real fit()."""

    def __init__(self):
        super().__init__()
        self.fit_call = None
        self.iterators_seen: list = []
        self.kept_at_epoch_end: list = []
        self.on_begin = None
        self.on_epoch = None

    def on_train_begin(self, logs=None):
        self.fit_call = _internals.running_fit(self.model)
        _internals.TrainFunctionWrapper(self.model, self.iterators_seen.append)
        if self.on_begin:
            self.on_begin(self)

    def on_epoch_begin(self, epoch, logs=None):
        if self.on_epoch:
            self.on_epoch(self, epoch)

    def on_epoch_end(self, epoch, logs=None):
        it = _internals.current_data_iterator(self.fit_call.epoch_iterator)
        self.kept_at_epoch_end.append(it)


def test_the_running_fit_shows_its_arguments_and_epoch_iterator():
    model = recorder_model()
    spy = Spy()
    model.fit(*DATA, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[spy])
    assert spy.fit_call is not None
    assert spy.fit_call.arguments["batch_size"] == 4
    assert spy.fit_call.arguments["epochs"] == 1
    assert spy.fit_call.arguments["shuffle"] is False
    assert spy.fit_call.arguments["x"] is DATA[0]
    assert _internals.steps_per_epoch(spy.fit_call.epoch_iterator) is None
    assert _internals.known_num_batches(spy.fit_call.epoch_iterator) == 2


def test_outside_fit_there_is_no_running_fit():
    assert _internals.running_fit(recorder_model()) is None


def test_an_epoch_of_known_length_makes_an_iterator_at_its_start_and_one_at_its_end():
    model = recorder_model()
    spy = Spy()
    model.fit(*DATA, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[spy])
    # The train function sees the iterator of each epoch, once per batch.
    assert len(spy.iterators_seen) == 4
    first, second = spy.iterators_seen[0], spy.iterators_seen[2]
    assert spy.iterators_seen[1] is first and spy.iterators_seen[3] is second
    assert first is not second
    # At each epoch end Keras keeps a new one, which the next epoch replaces.
    assert all(kept is not None for kept in spy.kept_at_epoch_end)
    assert spy.kept_at_epoch_end[0] is not first and spy.kept_at_epoch_end[0] is not second
    # Iterators come from the data source: iter() of it is what Keras calls.
    source = _internals.data_source(spy.fit_call.epoch_iterator)
    assert isinstance(source, tf.data.Dataset)


def test_with_steps_per_epoch_one_iterator_lasts_across_epochs():
    model = recorder_model()
    spy = Spy()
    dataset = tf.data.Dataset.from_tensor_slices(DATA).batch(1).repeat()
    model.fit(dataset, steps_per_epoch=3, epochs=2, verbose=0, callbacks=[spy])
    assert _internals.steps_per_epoch(spy.fit_call.epoch_iterator) == 3
    assert len({id(it) for it in spy.iterators_seen}) == 1
    assert model.seen == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_counting_skipped_batches_as_seen_ends_an_epoch_of_known_length_early():
    """What a mid-epoch resume does: drop 3 batches, then Keras trains the rest only."""
    model = recorder_model()

    def skip_three(spy):
        skipped = []

        def before(iterator):
            if not skipped:
                skipped.extend(float(next(iterator)[0][0, 0]) for _ in range(3))
                _internals.add_steps_seen(spy.fit_call.epoch_iterator, 3)

        _internals.TrainFunctionWrapper(spy.model, before)
        spy.skipped = skipped

    spy = Spy()
    spy.on_begin = skip_three
    model.fit(*DATA, batch_size=1, epochs=2, shuffle=False, verbose=0, callbacks=[spy])
    assert spy.skipped == [0.0, 1.0, 2.0]
    assert model.seen[:5] == [3.0, 4.0, 5.0, 6.0, 7.0]  # the first epoch ends with the data
    assert model.seen[5:] == [float(i) for i in range(8)]  # the next is whole


def test_steps_per_epoch_set_at_epoch_begin_is_that_epochs_length():
    model = recorder_model()

    def shorten_first(spy, epoch):
        _internals.set_steps_per_epoch(spy.fit_call.epoch_iterator, 1 if epoch == 0 else 3)

    spy = Spy()
    spy.on_epoch = shorten_first
    dataset = tf.data.Dataset.from_tensor_slices(DATA).batch(1).repeat()
    model.fit(dataset, steps_per_epoch=3, epochs=2, verbose=0, callbacks=[spy])
    assert model.seen == [0.0, 1.0, 2.0, 3.0]


def test_the_length_of_an_unknown_length_epoch_is_learned_and_can_be_set():
    model = recorder_model()
    spy = Spy()
    dataset = tf.data.Dataset.from_tensor_slices(DATA).filter(lambda x, y: True).batch(2)
    lengths = []
    spy.on_epoch = lambda s, epoch: lengths.append(
        _internals.known_num_batches(s.fit_call.epoch_iterator)
    )
    model.fit(dataset, epochs=2, verbose=0, callbacks=[spy])
    assert lengths[0] is None and lengths[1] is not None
    _internals.set_num_batches(spy.fit_call.epoch_iterator, 7)
    assert _internals.known_num_batches(spy.fit_call.epoch_iterator) == 7


def test_the_train_function_wrapper_is_removed_and_never_stacks():
    model = recorder_model()
    model.fit(*DATA, batch_size=8, epochs=1, verbose=0)
    original = model.train_function
    first = _internals.TrainFunctionWrapper(model, lambda iterator: None)
    second = _internals.TrainFunctionWrapper(model, lambda iterator: None)  # after a crash
    assert second.original is original
    first.remove()  # no longer installed: a no-op
    assert model.train_function is second
    second.remove()
    assert model.train_function is original


class Raising(keras.callbacks.Callback):
    def __init__(self, hook: str, error: BaseException):
        super().__init__()
        setattr(self, hook, self._raise)
        self.error = error

    def _raise(self, *args, **kwargs):
        raise self.error


class Guarding(keras.callbacks.Callback):
    """Installs a FitExitGuard the way BackupAndRestore does (in set_model)."""

    def __init__(self):
        super().__init__()
        self.exits: list[BaseException] = []
        self.guard = None

    def set_model(self, model):
        super().set_model(model)
        found = _internals.calling_callback_list(self)
        if found is not None:
            self.guard = _internals.FitExitGuard(found, model, self.exits.append)


@pytest.mark.parametrize(
    "hook",
    ["on_train_begin", "on_epoch_begin", "on_train_batch_end", "on_epoch_end", "on_test_end"],
)
def test_the_exit_guard_sees_an_exception_that_ends_fit_in_any_hook(hook):
    guarding = Guarding()
    error = RuntimeError(hook)
    model = recorder_model()
    with pytest.raises(RuntimeError):
        model.fit(
            *DATA,
            batch_size=4,
            epochs=2,
            verbose=0,
            validation_data=DATA,
            callbacks=[guarding, Raising(hook, error)],
        )
    assert guarding.exits == [error]
    guarding.guard.remove()


def test_the_exit_guard_sees_an_exception_in_the_train_step_and_not_stop_iteration():
    guarding = Guarding()
    model = recorder_model()
    model.fit(*DATA, batch_size=8, epochs=1, verbose=0)  # builds the train function

    class Breaking(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:
                wrapper.original = broken

    def broken(iterator):
        raise KeyboardInterrupt

    wrapper = None

    class Wrapping(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            nonlocal wrapper
            wrapper = _internals.TrainFunctionWrapper(self.model, lambda it: None, guarding.guard)

    with pytest.raises(KeyboardInterrupt):
        model.fit(*DATA, batch_size=4, epochs=1, verbose=0,
                  callbacks=[guarding, Wrapping(), Breaking()])  # fmt: skip
    assert [type(e) for e in guarding.exits] == [KeyboardInterrupt]
    guarding.guard.report(StopIteration())  # ends an epoch's data, not fit()
    assert len(guarding.exits) == 1
    assert not _internals.ends_fit(StopIteration())
    wrapper.remove()


def test_a_removed_exit_guard_leaves_the_callback_list_as_it_was():
    guarding = Guarding()
    model = recorder_model()
    model.fit(*DATA, batch_size=8, epochs=1, verbose=0, callbacks=[guarding])
    callback_list = guarding.guard._callback_list
    assert "on_epoch_end" in vars(callback_list)
    guarding.guard.remove()
    assert not any(name.startswith("on_") for name in vars(callback_list))


# -- tf.data, global generators, built-in callbacks ---------------------------------------


def test_a_cache_anywhere_in_a_pipeline_is_found():
    base = tf.data.Dataset.range(4)
    assert _internals.pipeline_has_cache(base.cache().shuffle(4).batch(2).prefetch(1))
    assert _internals.pipeline_has_cache(base.shuffle(4).cache().batch(2))
    assert not _internals.pipeline_has_cache(base.shuffle(4).batch(2).prefetch(1))
    options = tf.data.Options()
    assert _internals.pipeline_has_cache(base.cache().with_options(options))


def test_tensorflows_global_generator_is_found_once_created():
    from tensorflow.python.ops import stateful_random_ops

    assert hasattr(stateful_random_ops, "global_generator")  # the private name we read
    generator = tf.random.get_global_generator()
    assert _internals.tf_global_generator_if_created() is generator


def test_keras_global_seed_generator_is_found_once_created():
    keras.random.uniform(())  # unseeded: draws from the global SeedGenerator
    found = _internals.keras_global_seed_generator_if_created()
    assert found is not None
    assert found is _internals.keras_global_seed_generator()
    before = found.state.numpy().copy()
    keras.random.uniform(())
    assert not np.array_equal(before, found.state.numpy())


def test_model_checkpoint_batch_counters_are_read_and_written(tmp_path):
    callback = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "m.weights.h5"), save_weights_only=True, save_freq=5
    )
    model = recorder_model()
    model.fit(*DATA, batch_size=4, epochs=1, verbose=0, callbacks=[callback])
    counters = _internals.model_checkpoint_batch_counters(callback)
    assert counters == {"batches_seen_since_last_saving": 2, "last_batch_seen": 1}
    _internals.set_model_checkpoint_batch_counters(
        callback, {"batches_seen_since_last_saving": 4, "last_batch_seen": None}
    )
    assert callback._should_save_on_batch(0)  # the 5th batch since the last save


def test_the_distribution_strategy_is_none_outside_a_strategy_scope():
    assert _internals.distribution_strategy(recorder_model()) is None
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    assert _internals.distribution_strategy(model) == "OneDeviceStrategy"
