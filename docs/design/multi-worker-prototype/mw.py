"""Prototype: custom loop with Keras layers under MWMS, coordinated stop via the
coordination service's key-value store, checkpoint + resume. Scratch, not ftharness.

Usage: TF_CONFIG=... python mw.py --ckpt DIR --steps N [--heartbeat-ms MS]
       [--collective-timeout S] [--step-sleep S] [--out weights.npz]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time

T0 = time.time()


def log(*a):
    print(f"[{time.time():.3f} w{os.environ.get('WID', '?')}]", *a, flush=True)


p = argparse.ArgumentParser()
p.add_argument("--ckpt", required=True)
p.add_argument("--steps", type=int, default=40)
p.add_argument("--save-freq", type=int, default=10)
p.add_argument("--heartbeat-ms", type=int, default=0)
p.add_argument("--collective-timeout", type=float, default=None)
p.add_argument("--step-sleep", type=float, default=0.0)
p.add_argument("--out", default=None)
args = p.parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.eager import context  # noqa: E402

tf_config = json.loads(os.environ["TF_CONFIG"])
task = tf_config["task"]
n_workers = len(tf_config["cluster"]["worker"])
is_chief = task["index"] == 0

if args.heartbeat_ms:
    # MWMS only configures the coordination service when nobody did before it
    # (collective_all_reduce_strategy.py: `if context.context().coordination_service is None`).
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader="/job:worker/replica:0/task:0",
        heartbeat_timeout_in_ms=args.heartbeat_ms,
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=n_workers)
        ],
    )

keras.utils.set_random_seed(0)
tf.config.experimental.enable_op_determinism()
options = tf.distribute.experimental.CommunicationOptions(
    timeout_seconds=args.collective_timeout,
    implementation=tf.distribute.experimental.CommunicationImplementation.RING,
)
strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
log(
    "strategy up, replicas",
    strategy.num_replicas_in_sync,
    "coord",
    context.context().coordination_service,
)

GLOBAL_BATCH = 16


def dataset_fn(input_context):
    batch = input_context.get_per_replica_batch_size(GLOBAL_BATCH)
    wid = input_context.input_pipeline_id

    def make(i):
        seed = tf.stack([i, tf.cast(wid, tf.int64)])
        x = tf.random.stateless_normal([batch, 8], seed=seed)
        y = tf.reduce_sum(x, axis=1, keepdims=True) * 0.5
        return x, y

    return tf.data.Dataset.range(10**6).map(make)


with strategy.scope():
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1)]
    )
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False)
ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
chief_dir = os.path.join(args.ckpt, "chief")
write_dir = chief_dir if is_chief else os.path.join(args.ckpt, f"worker_tmp_{task['index']}")
latest = tf.train.latest_checkpoint(chief_dir)
if latest:
    ckpt.restore(latest)
    log("restored", latest, "step", int(step_var.numpy()))
start = int(step_var.numpy())


@tf.function
def train_step(it):
    def replica_fn(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True) - y)) * (
                1.0 / strategy.num_replicas_in_sync
            )
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    per_replica = strategy.run(replica_fn, args=(next(it),))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)


# The distributed iterator is not trackable: its position is the step, restored by skipping.
ds_skip = strategy.distribute_datasets_from_function(lambda ic: dataset_fn(ic).skip(start))
it = iter(ds_skip)

# --- coordinated stop (PreemptionCheckpointHandler's protocol, simplified) ---
STOP_KEY = "ftharness/stop_step"
ACK_KEY = "ftharness/stop_ack"
got_sigterm = threading.Event()
stop_step: list[int] = []
stop_known = threading.Event()


def on_sigterm(signum, frame):
    got_sigterm.set()


signal.signal(signal.SIGTERM, on_sigterm)


def watch():
    value = context.context().get_config_key_value(STOP_KEY)  # blocks until set
    stop_step.append(int(value))
    stop_known.set()
    context.context().set_config_key_value(f"{ACK_KEY}/{task['index']}", "1")
    log("watcher: stop step", value)


threading.Thread(target=watch, daemon=True).start()


def save(step):
    path = ckpt.write(os.path.join(write_dir, f"ckpt-{step}"))
    if is_chief:
        with open(os.path.join(chief_dir, "checkpoint"), "w") as f:
            f.write(f'model_checkpoint_path: "ckpt-{step}"\n')
    log("saved", path)


announced = False
step = start
try:
    while step < args.steps:
        loss = train_step(it)
        step += 1
        step_var.assign(step)
        if args.step_sleep:
            time.sleep(args.step_sleep)
        if step % 5 == 0:
            log("step", step, "loss", float(loss))
        if got_sigterm.is_set() and not announced and not stop_known.is_set():
            announced = True
            try:
                context.context().set_config_key_value(STOP_KEY, str(step + 1))
                log("announced stop at", step + 1)
            except tf.errors.AlreadyExistsError:
                log("another worker announced first")
            for i in range(n_workers):
                context.context().get_config_key_value(f"{ACK_KEY}/{i}")
            log("all acked")
        if stop_known.is_set() and step == stop_step[0]:
            save(step)
            code = 143 if got_sigterm.is_set() else 0
            log("coordinated stop at", step, "exit", code)
            os._exit(code)
        if step % args.save_freq == 0:
            save(step)
except Exception as e:
    log(
        "FAILED at step",
        step,
        type(e).__module__ + "." + type(e).__name__,
        str(e)[:400].replace("\n", " "),
    )
    os._exit(99)

if args.out:
    np.savez(
        args.out,
        *[v.numpy() for v in model.weights],
        *[v.numpy() for v in optimizer.variables],
    )
log("done at", step)
