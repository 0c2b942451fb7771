"""One worker of a two-worker MultiWorkerMirroredStrategy custom loop under ftharness.tf.

    TF_CONFIG=... python multi_worker_loop.py --backup-dir DIR --steps N
        --save-freq K --report FILE [--step-log FILE] [--sleep S]

The API as a user writes it: `multi_worker_strategy()`, the model and
optimizer in its scope, `TrainingCheckpoint`, `distributed_dataset`. Each
step also draws from this worker's own NumPy global generator (seeded by
its place in the group) and scales its input with the draw, so the final
weights depend on every worker's RNG state being restored as its own.

PLAIN_STRATEGY=1 builds tf.distribute.MultiWorkerMirroredStrategy itself
instead of ftharness.tf.multi_worker_strategy().

--step-log gets the step number after each step (the test counts steps
trained twice); --report gets digests of the weights and optimizer slots.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

import ftharness.tf

GLOBAL_BATCH = 8


def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    batch = input_context.get_per_replica_batch_size(GLOBAL_BATCH)
    pipeline = input_context.input_pipeline_id

    def make(i):
        x = tf.random.stateless_normal([batch, 4], seed=tf.stack([i, tf.cast(pipeline, tf.int64)]))
        return x, tf.reduce_sum(x, axis=1, keepdims=True) * 0.5

    return tf.data.Dataset.range(10**6).map(make)


def digest(variables) -> str:
    hasher = hashlib.sha256()
    for variable in variables:
        hasher.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return hasher.hexdigest()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backup-dir")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-freq", type=int, required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--step-log")
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    if os.environ.get("PLAIN_STRATEGY") == "1":  # the user's own, TensorFlow's defaults
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    else:
        strategy = ftharness.tf.multi_worker_strategy(communication_options=options)
    worker = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    np.random.seed(100 + worker)  # this worker's own generator: per-worker state
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)]
        )
        optimizer = keras.optimizers.Adam(0.01)
        optimizer.build(model.trainable_variables)

    @tf.function
    def train_step(iterator, scale):
        def replica_step(batch):
            x, y = batch
            with tf.GradientTape() as tape:
                prediction = model(x * scale, training=True)
                loss = tf.reduce_mean(tf.square(prediction - y)) / strategy.num_replicas_in_sync
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        return strategy.run(replica_step, args=(next(iterator),))

    with ftharness.tf.TrainingCheckpoint(
        args.backup_dir, save_freq=args.save_freq, model=model, optimizer=optimizer
    ) as checkpoint:
        step = checkpoint.restore()
        iterator = iter(checkpoint.distributed_dataset(strategy, dataset_fn))
        while step < args.steps:
            scale = tf.constant(1.0 + 0.1 * np.random.rand(), tf.float32)
            train_step(iterator, scale)
            step += 1
            if args.step_log:
                with open(args.step_log, "a") as log:
                    log.write(f"{step}\n")
            if args.sleep:
                time.sleep(args.sleep)
            checkpoint.step_end(step)
        report = {
            "worker": worker,
            "steps": step,
            "weights": digest(model.variables),
            "optimizer": digest(optimizer.variables),
            "next_numpy": float(np.random.rand()),
        }
        checkpoint.finish()
    Path(args.report).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
