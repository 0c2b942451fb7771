"""A custom training loop that survives preemption under ftharness.

Run it alone:        python examples/custom_loop.py --backup-dir /tmp/loop-backups
or supervised:       ftharness supervise --backup-dir /tmp/loop-backups -- \
                         python examples/custom_loop.py

A `tf.GradientTape` loop over a reshuffling, repeated `tf.data` pipeline,
with noise from a `tf.random.Generator`: the iterator, the generator, the
model and the optimizer are saved by `ftharness.tf.TrainingCheckpoint`, so a
run stopped by SIGTERM and started again ends bit-identical to one never
stopped. It prints a digest of the final weights for that comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import ftharness.tf


def build(seed: int):
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = (x[:, 0] - x[:, 3] > 0).astype("int64")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(96).batch(8).repeat()
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(2),
        ]
    )
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)
    return model, optimizer, iter(dataset), tf.random.Generator.from_seed(seed)


def weights_digest(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> str:
    digest = hashlib.sha256()
    for variable in model.variables + optimizer.variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def train(
    backup_dir: str | None,
    steps: int,
    save_freq: int,
    seed: int = 1,
    after_step: Callable[[int], None] | None = None,
) -> dict:
    """Train for `steps` steps, resuming from the newest checkpoint; returns a report."""
    model, optimizer, iterator, noise = build(seed)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(x, y):
        x = x + noise.normal(tf.shape(x), stddev=0.05)  # the generator advances
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    with ftharness.tf.TrainingCheckpoint(
        backup_dir=backup_dir,
        save_freq=save_freq,
        model=model,
        optimizer=optimizer,
        iterator=iterator,
        noise=noise,
    ) as checkpoint:
        step = checkpoint.restore()
        # None if no step is left: a run restarted after its final checkpoint.
        loss = None
        while step < steps:
            loss = train_step(*next(iterator))
            step += 1
            if after_step is not None:
                after_step(step)
            checkpoint.step_end(step)
        checkpoint.finish()
    return {
        "digest": weights_digest(model, optimizer),
        "loss": float(loss) if loss is not None else None,
        "iterations": int(optimizer.iterations.numpy()),
        "noise_state": [int(v) for v in noise.state.numpy()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backup-dir", help="checkpoint directory when run without the supervisor")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-freq", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", help="write the final digest here as JSON")
    args = parser.parse_args(argv)
    report = train(args.backup_dir, args.steps, args.save_freq, args.seed)
    print(json.dumps(report), flush=True)
    if args.report:
        with open(args.report, "w") as file:
            json.dump(report, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
