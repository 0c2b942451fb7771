"""The global random generators go into JSON and come back exactly."""

from __future__ import annotations

import json
import os
import random

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from ftharness.keras import rng

pytestmark = pytest.mark.slow


def draws() -> list[float]:
    return [
        random.random(),
        float(np.random.rand()),
        float(np.random.normal()),  # the cached Gaussian is part of NumPy's state
        float(tf.random.get_global_generator().uniform(())),
        float(keras.random.uniform(())),
    ]


def test_every_global_generator_is_restored_from_json():
    keras.utils.set_random_seed(5)
    tf.random.set_global_generator(tf.random.Generator.from_seed(5))
    draws()  # every generator exists and has moved
    saved = json.loads(json.dumps(rng.capture()))
    expected = draws()
    draws()
    rng.restore(saved)
    assert draws() == expected


def test_a_reference_to_tensorflows_global_generator_stays_valid():
    tf.random.set_global_generator(tf.random.Generator.from_seed(1))
    held = tf.random.get_global_generator()
    saved = rng.capture_framework()
    expected = float(held.uniform(()))
    rng.restore_framework(saved)
    assert tf.random.get_global_generator() is held
    assert float(held.uniform(())) == expected


def test_host_generators_alone():
    random.seed(1)
    np.random.seed(1)
    saved = rng.capture_host()
    expected = (random.random(), float(np.random.rand()))
    rng.restore_host(saved)
    assert (random.random(), float(np.random.rand())) == expected


def test_a_generator_absent_then_is_left_alone():
    keras.random.uniform(())
    before = rng.capture_framework()["keras"]
    rng.restore_framework({"tensorflow": None, "keras": None})
    assert rng.capture_framework()["keras"] == before


def test_restoring_keras_generator_that_does_not_exist_yet_keeps_python_random():
    """Creating Keras's global SeedGenerator draws its seed from Python's random."""
    from ftharness.keras import _internals

    keras.utils.set_random_seed(1)
    keras.random.uniform(())
    saved = rng.capture()
    expected = random.random()
    keras.utils.set_random_seed(2)  # forgets the global SeedGenerator
    assert _internals.keras_global_seed_generator_if_created() is None
    rng.restore(saved)
    assert random.random() == expected
