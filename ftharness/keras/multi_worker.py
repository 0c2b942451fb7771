"""Keras `fit()` under MultiWorkerMirroredStrategy: refused at start, for now.

Keras 3's TensorFlow trainer fails under MWMS (`_maybe_symbolic_build`
reduces a PerReplica value outside a replica context, then "Invalid
reduction dimension 0"): keras-team/keras#20585, tensorflow/tensorflow#72388.
Rather than let a job fail later inside Keras, `BackupAndRestore` refuses it
in one line at `on_train_begin` and points to the custom-loop API, which
supports several workers. `MirroredStrategy` (one host, several devices) is
not concerned: its resume is exact.
"""

from __future__ import annotations

import keras

from ftharness.worker import ConfigurationError

REFUSAL = (
    "Keras fit() under MultiWorkerMirroredStrategy is not supported (Keras 3 fails there: "
    "keras-team/keras#20585, tensorflow/tensorflow#72388); train with a custom loop and "
    "ftharness.tf.TrainingCheckpoint, which supports several workers (docs/custom-loops.md)"
)


def refuse_multi_worker(model: keras.Model) -> None:
    """ConfigurationError (exit 64) if `model` was built under MultiWorkerMirroredStrategy."""
    if keras.config.backend() != "tensorflow":
        return
    from ftharness.distributed import worker_group  # TensorFlow only

    if worker_group.is_multi_worker(worker_group.strategy_of({"model": model})):
        raise ConfigurationError(REFUSAL)
