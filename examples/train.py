"""A small Keras training job that survives preemption under ftharness.

Run it alone:        python examples/train.py --backup-dir /tmp/backups
or supervised:       ftharness supervise --backup-dir /tmp/backups -- python examples/train.py

It trains a tiny classifier on synthetic data with a per-batch learning-rate
schedule whose counter lives in a callback (the classic state Keras's own
BackupAndRestore forgets), and prints a digest of the final weights, so an
interrupted-and-resumed run can be compared with an uninterrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import ftharness.keras


class PerBatchLearningRate(keras.callbacks.Callback):
    """The article's scheduler: the learning rate decays with a batch counter.

    `get_state` / `set_state` let ftharness save and restore the counter.
    """

    def __init__(self, initial: float = 0.05, decay: float = 0.01, batch_log: str | None = None):
        super().__init__()
        self.initial = initial
        self.decay = decay
        self.count = 0
        self.batch_log = batch_log

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.initial / (1.0 + self.decay * self.count))

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1
        if self.batch_log:
            with open(self.batch_log, "a") as log:
                log.write(f"{self.count}\n")

    def get_state(self) -> dict:
        return {"count": self.count}

    def set_state(self, state: dict) -> None:
        self.count = int(state["count"])


class SlowDown(keras.callbacks.Callback):
    """Sleeps after each batch so that a demo run lasts long enough to preempt."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def on_train_batch_end(self, batch, logs=None):
        time.sleep(self.seconds)


def build_model(hidden_units: int) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(hidden_units, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.05),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def synthetic_data(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64") + (x[:, 2] > 1).astype("int64")
    return x, y


def weights_digest(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for variable in model.variables + model.optimizer.variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backup-dir", help="checkpoint directory when run without the supervisor")
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 4)))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--save-freq", default="10", help="'epoch' or a number of batches")
    parser.add_argument(
        "--sync-save", action="store_true", help="commit each checkpoint before training goes on"
    )
    parser.add_argument(
        "--sleep",
        type=float,
        default=float(os.environ.get("BATCH_SLEEP", 0.1)),
        help="seconds to sleep after each batch (demo pacing)",
    )
    parser.add_argument("--hidden-units", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-log", help="append the global batch counter here after each batch")
    parser.add_argument("--report", help="write the final digest and learning rate here as JSON")
    parser.add_argument(
        "--keep-backup",
        action="store_true",
        help="keep the checkpoints once training succeeds (delete_checkpoint=False)",
    )
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    model = build_model(args.hidden_units)
    x, y = synthetic_data(args.samples, args.seed)
    save_freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
    scheduler = PerBatchLearningRate(batch_log=args.batch_log)
    model.fit(
        x,
        y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[
            ftharness.keras.BackupAndRestore(
                backup_dir=args.backup_dir,
                save_freq=save_freq,
                async_save=not args.sync_save,
                delete_checkpoint=not args.keep_backup,
            ),
            scheduler,
            SlowDown(args.sleep),
        ],
    )
    report = {
        "digest": weights_digest(model),
        "learning_rate": float(model.optimizer.learning_rate.numpy()),
        "batches": scheduler.count,
        "iterations": int(model.optimizer.iterations.numpy()),
    }
    print(json.dumps(report), flush=True)
    if args.report:
        with open(args.report, "w") as file:
            json.dump(report, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
