"""Keras fit() with ftharness's BackupAndRestore under MultiWorkerMirroredStrategy.

    python keras_multi_worker_fit.py BACKUP_DIR

A one-worker MWMS (no TF_CONFIG): the strategy type the callback refuses,
without a second process.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

import ftharness.keras

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
x = np.zeros((16, 4), "float32")
model.fit(x, x[:, :1], epochs=1, batch_size=4, verbose=0,
          callbacks=[ftharness.keras.BackupAndRestore(sys.argv[1], save_freq=2)])  # fmt: skip
print("fit() returned")
