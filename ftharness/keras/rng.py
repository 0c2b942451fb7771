"""The process-wide random generators, captured as JSON and put back.

Generators owned by layers (Dropout, GaussianNoise, RandomFlip, ...) keep
their state in variables and travel with the model. What lives outside the
model is here:

- Python's `random` and NumPy's global `np.random` ("host" generators: data
  code such as a `PyDataset` and callbacks draw from them);
- TensorFlow's global `tf.random.Generator`, if something created it;
- the `SeedGenerator` that `keras.random` functions use when given no seed,
  if something created it.
"""

from __future__ import annotations

import random

import numpy as np

from ftharness.keras import _internals


def capture_host() -> dict:
    """Python's and NumPy's global generators."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }


def restore_host(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def capture_framework() -> dict:
    """TensorFlow's and Keras's global generators; None for one never created."""
    tf_generator = _internals.tf_global_generator_if_created()
    keras_generator = _internals.keras_global_seed_generator_if_created()
    return {
        "tensorflow": None
        if tf_generator is None
        else {
            "algorithm": int(tf_generator.algorithm),
            "state": [int(v) for v in tf_generator.state.numpy()],
        },
        "keras": None
        if keras_generator is None
        else {
            "dtype": np.dtype(keras_generator.state.dtype).name,
            "state": [int(v) for v in np.asarray(keras_generator.state.numpy())],
        },
    }


def restore_framework(state: dict) -> None:
    """Put the global generators back; one that did not exist then is left alone."""
    saved_tf = state.get("tensorflow")
    if saved_tf is not None:
        import tensorflow as tf

        current = tf.random.get_global_generator()
        if int(current.algorithm) == saved_tf["algorithm"]:
            current.reset(saved_tf["state"])  # the same object: references held stay valid
        else:
            tf.random.set_global_generator(
                tf.random.Generator.from_state(saved_tf["state"], saved_tf["algorithm"])
            )
    saved_keras = state.get("keras")
    if saved_keras is not None:
        generator = _internals.keras_global_seed_generator()
        generator.state.assign(np.array(saved_keras["state"], dtype=saved_keras["dtype"]))


def capture() -> dict:
    return {**capture_host(), "framework": capture_framework()}


def restore(state: dict) -> None:
    # Framework first: creating Keras's global SeedGenerator to restore it
    # draws its seed from Python's `random`, which is restored after.
    if "framework" in state:
        restore_framework(state["framework"])
    restore_host(state)
