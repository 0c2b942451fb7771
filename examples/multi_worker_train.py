r"""A multi-worker custom training loop under ftharness (MultiWorkerMirroredStrategy).

Two workers on this machine, each under its own supervisor, one shared
backup directory (the launcher below does exactly this, then checks that
both workers ended with the same weights):

    python examples/multi_worker_train.py --local-group 2 --run-dir /tmp/mw-run

By hand, the same (any two free ports; the first worker is the chief):

    CLUSTER='"cluster": {"worker": ["127.0.0.1:23456", "127.0.0.1:23457"]}'
    for i in 0 1; do
      TF_CONFIG="{$CLUSTER, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
        ftharness supervise --backup-dir file:///tmp/mw-run/backups \
          --local-dir /tmp/mw-run/worker-$i -- \
          python examples/multi_worker_train.py --report /tmp/mw-run/worker-$i.json &
    done
    wait

SIGTERM to either supervisor stops both workers at the same step with one
final checkpoint; run that supervisor again and the group resumes there
(the other one relaunched its worker, which waits for its peer). The
launcher instead stops the whole group when one supervisor exits (as a
JobSet restarts the whole set): run it again to resume.

Without TF_CONFIG the script trains alone (a group of one):

    python examples/multi_worker_train.py --backup-dir /tmp/mw-alone

The model, optimizer and step are mirrored (identical on every worker); each
worker's input is its own shard, seeded by the worker's input pipeline id,
and its position is the step: `distributed_dataset` rebuilds the pipeline
and skips the steps already done. See docs/multi-worker.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

import ftharness.tf

# Split across all replicas of all workers: 8 per worker with two workers.
GLOBAL_BATCH = 16
FEATURES = 8


def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    """This worker's input: deterministic, a function of (element, worker) only.

    Stateless random ops seeded by the element's number and the worker's input
    pipeline id, so that rebuilding the pipeline and skipping N elements lands
    exactly where the interrupted run was, and the workers see different data.
    """
    batch = input_context.get_per_replica_batch_size(GLOBAL_BATCH)
    pipeline = tf.cast(input_context.input_pipeline_id, tf.int64)

    def make(element: tf.Tensor):
        x = tf.random.stateless_normal([batch, FEATURES], seed=tf.stack([element, pipeline]))
        y = tf.reduce_sum(x, axis=1, keepdims=True) * 0.5
        return x, y

    # A parallel map keeps its order only with deterministic=True (without
    # num_parallel_calls the argument does nothing, and TensorFlow warns).
    return tf.data.Dataset.range(10**9).map(
        make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def build_model() -> tuple[keras.Model, keras.optimizers.Optimizer]:
    """Call under strategy.scope(): the variables are mirrored."""
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def make_train_step(strategy: tf.distribute.Strategy, model, optimizer):
    """One synchronous step: every replica's gradients are all-reduced."""

    def replica_step(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(model(x, training=True) - y), axis=1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


def weights_digest(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> str:
    digest = hashlib.sha256()
    for variable in model.variables + optimizer.variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def train(backup_dir: str | None, steps: int, save_freq: int, step_sleep: float = 0.0) -> dict:
    """Train the group to `steps`, resuming where it stopped; returns this worker's report."""
    # First: it configures TensorFlow's coordination service (TF_CONFIG, set
    # by the user or built by the supervisor, and the peer and group timeouts
    # the supervisor passes), which must happen before TensorFlow starts.
    strategy = ftharness.tf.multi_worker_strategy()
    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    with strategy.scope():
        model, optimizer = build_model()
    train_step = make_train_step(strategy, model, optimizer)

    with ftharness.tf.TrainingCheckpoint(
        backup_dir=backup_dir, save_freq=save_freq, model=model, optimizer=optimizer
    ) as checkpoint:
        # The step every worker has a checkpoint of (agreed among them).
        step = checkpoint.restore()
        # The distributed iterator cannot be checkpointed: rebuilt, and each
        # worker's pipeline skips the `step` batches it already trained on.
        iterator = iter(checkpoint.distributed_dataset(strategy, dataset_fn))
        loss = None
        while step < steps:
            loss = train_step(iterator)
            step += 1
            time.sleep(step_sleep)  # only to give a demonstration time to stop it
            # Saves at the same step on every worker; on a stop, all workers
            # save one final checkpoint at the same step and exit.
            checkpoint.step_end(step)
        checkpoint.finish()
    return {
        "task": json.loads(os.environ.get("TF_CONFIG", "{}")).get("task"),
        "step": step,
        "loss": float(loss) if loss is not None else None,
        "iterations": int(optimizer.iterations.numpy()),
        "digest": weights_digest(model, optimizer),
    }


# --- the local launcher: N workers on 127.0.0.1, each under its own supervisor ---


def free_ports(count: int) -> list[int]:
    """Ports free right now (another process may take one before TensorFlow does)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def launch_local_group(workers: int, run_dir: Path, worker_args: list[str]) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    cluster = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    backup = (run_dir / "backups").resolve().as_uri()
    supervisors = []
    for index in range(workers):
        tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}}
        report = run_dir / f"worker-{index}.json"
        report.unlink(missing_ok=True)
        command = [
            *(sys.executable, "-m", "ftharness", "supervise"),
            *("--backup-dir", backup, "--local-dir", str(run_dir / f"worker-{index}")),
            "--",
            *(sys.executable, os.path.abspath(__file__)),
            *worker_args,
            *("--report", str(report)),
        ]
        log = open(run_dir / f"worker-{index}.log", "ab")  # noqa: SIM115 (closed below)
        process = subprocess.Popen(
            command,
            env={**os.environ, "TF_CONFIG": json.dumps(tf_config)},
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C reaches the launcher only, which
            # turns it into one SIGTERM per supervisor (a clean group stop).
            start_new_session=True,
        )
        supervisors.append((index, process, log))
        print(f"worker {index}: supervisor pid {process.pid}, log {log.name}", flush=True)

    stopped: set[int] = set()

    def stop_group(*_ignored) -> None:
        # One SIGTERM each: a second one must not cut short a final checkpoint.
        for index, process, _ in supervisors:
            if index not in stopped and process.poll() is None:
                stopped.add(index)
                process.terminate()

    signal.signal(signal.SIGTERM, stop_group)
    signal.signal(signal.SIGINT, stop_group)
    # As a JobSet does: once one supervisor has exited other than 0 (stopped,
    # given up), the group is stopped as a whole; run the launcher again to
    # resume it from the shared backup.
    while any(process.poll() is None for _, process, _ in supervisors):
        if any(process.poll() for _, process, _ in supervisors):
            stop_group()
        time.sleep(0.5)
    # A supervisor killed by a signal: 128 + N, as a shell reports it.
    codes = {
        index: process.returncode if process.returncode >= 0 else 128 - process.returncode
        for index, process, _ in supervisors
    }
    for _, _, log in supervisors:
        log.close()
    if any(codes.values()):
        print(f"RESULT: supervisors exited {codes} (logs in {run_dir})", flush=True)
        return next(code for code in codes.values() if code)
    reports = [json.loads((run_dir / f"worker-{i}.json").read_text()) for i in range(workers)]
    digests = {report["digest"] for report in reports}
    if len(digests) != 1:
        print(f"RESULT: the workers' weights differ: {reports}", flush=True)
        return 1
    print(f"RESULT: {workers} workers, identical weights at step {reports[0]['step']}")
    print(f"digest {digests.pop()}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backup-dir", help="checkpoint directory when run without the supervisor")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-freq", type=int, default=10)
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step")
    parser.add_argument("--report", help="write this worker's final digest here as JSON")
    parser.add_argument(
        "--local-group",
        type=int,
        metavar="N",
        help="launch N workers on 127.0.0.1, each under `ftharness supervise`",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("mw-run"),
        help="with --local-group: backups, local directories, logs and reports",
    )
    args = parser.parse_args(argv)
    if args.local_group is not None:
        if args.local_group < 1:
            parser.error("--local-group must be at least 1")
        worker_args = ["--steps", str(args.steps), "--save-freq", str(args.save_freq)]
        worker_args += ["--step-sleep", str(args.step_sleep)]
        return launch_local_group(args.local_group, args.run_dir, worker_args)
    report = train(args.backup_dir, args.steps, args.save_freq, args.step_sleep)
    print(json.dumps(report), flush=True)
    if args.report:
        Path(args.report).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
