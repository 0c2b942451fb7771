"""One tiny training per case of the exactness matrix, with fault injection.

    python exactness_worker.py CASE --backup-dir DIR --report FILE

Runs the case's training under `ftharness.keras.BackupAndRestore` (or, for
`custom_loop`, `ftharness.tf`) and writes a JSON report of everything that
must match an uninterrupted run: digests of the weights and optimizer slots,
learning rate, iterations, History, callbacks' states, the CSV log, the next
draws of every global random generator.

Environment:
  INTERRUPT   `sigterm:N`  send ourselves SIGTERM after global step N (the
                           final checkpoint is written, exit 143);
              `crash:N`    exit 3 after step N, before its checkpoint (the
                           resume starts from the previous one);
              `crash-at-epoch-end:E`  exit 3 in on_epoch_end of epoch E, after
                           the other callbacks (CSVLogger wrote its row) and
                           before our checkpoint.
  WORKER_PID_FILE  write our pid here (the chaos test kills us by it)
  KILL_DURING_WRITE_AT_COMMIT  SIGKILL ourselves half-way through writing the
                           arrays of the N-th checkpoint this process commits
  CHAOS_PLAN       a JSON file {"kill_during_write_at_commit": N} for the next
                   process started: read and removed at start (the chaos test
                   plans each launch of a supervised run this way)
  FIT_EPOCHS / ALLOW_CHANGED_FIT_ARGS  change fit(epochs=...), and allow it
  BATCH_SLEEP      seconds to sleep after each batch (chaos pacing)
  PROGRESS_FILE    append the global step here after each batch
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

import ftharness.keras
from ftharness.checkpoint import local
from ftharness.keras import builtin_states

SEED = 7
SAMPLES = 64
BATCH = 8  # 8 batches per epoch
EXIT_CRASH = 3


# -- fault injection ------------------------------------------------------------


def parse_interrupt() -> tuple[str, int] | None:
    text = os.environ.get("INTERRUPT")
    if not text:
        return None
    mode, _, value = text.partition(":")
    return mode, int(value)


def crash() -> None:
    """Die without a final checkpoint, as an OOM kill would.

    The pause first lets a checkpoint still being written in the background
    commit, so that where the next run resumes does not depend on timing.
    """
    time.sleep(0.3)
    os._exit(EXIT_CRASH)


class Interrupter(keras.callbacks.Callback):
    """Counts global steps (its count is restored: it has get_state) and
    interrupts training where INTERRUPT says."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.interrupt = parse_interrupt()
        self.progress = os.environ.get("PROGRESS_FILE")
        self.sleep = float(os.environ.get("BATCH_SLEEP", "0"))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.progress:
            with open(self.progress, "a") as file:
                file.write(f"{self.step}\n")
        if self.sleep:
            time.sleep(self.sleep)
        if self.interrupt == ("sigterm", self.step):
            os.kill(os.getpid(), signal.SIGTERM)  # handled at this batch's end
        elif self.interrupt == ("crash", self.step):
            crash()

    def on_epoch_end(self, epoch, logs=None):
        if self.interrupt == ("crash-at-epoch-end", epoch):
            crash()

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


def install_write_killer() -> None:
    """SIGKILL ourselves half-way through the N-th checkpoint write of this process."""
    target = int(os.environ.get("KILL_DURING_WRITE_AT_COMMIT", "0"))
    plan = Path(os.environ.get("CHAOS_PLAN", "/nonexistent"))
    if plan.exists():
        target = int(json.loads(plan.read_text())["kill_during_write_at_commit"])
        plan.unlink()
    if not target:
        return
    write_file = local._write_file
    commits = {"count": 0}

    def write_then_maybe_die(path, chunks):
        if path.name == "arrays.bin":
            commits["count"] += 1
            if commits["count"] == target:
                chunks = list(chunks)
                write_file(path, chunks[: len(chunks) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        return write_file(path, chunks)

    local._write_file = write_then_maybe_die


# -- the cases ------------------------------------------------------------------


@dataclass
class Case:
    model: keras.Model
    fit: dict
    callbacks: list = field(default_factory=list)
    save_freq: int | str = 3
    pickle_callbacks: list = field(default_factory=list)
    report: Callable[[], dict] = dict


def classification_data(samples: int = SAMPLES, features: int = 6):
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(samples, features)).astype("float32")
    y = ((x[:, 0] + x[:, 1] > 0).astype("int64") + (x[:, 2] > 0.8)).astype("int64")
    return x, y


def dense_model(features: int = 6, optimizer=None, extra_layers=()) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(12, activation="relu"),
            *extra_layers,
            keras.layers.Dropout(0.25),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3, activation="softmax", dtype="float32"),
        ]
    )
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def jitter(x, y):
    """A random map in the pipeline (stateless: seeded by the element)."""
    noise = tf.random.stateless_normal(tf.shape(x), seed=tf.cast([x[0] * 1000, 1], tf.int64))
    return x + 0.01 * noise, y


def case_arrays() -> Case:
    x, y = classification_data(80)  # 64 for training, 16 for validation
    return Case(
        dense_model(),
        dict(x=x, y=y, epochs=3, batch_size=BATCH, shuffle=True, validation_split=0.2),
    )


def tf_data(*, reshuffle=True, cache=None, repeat=False, filtered=False):
    x, y = classification_data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if filtered:
        dataset = dataset.filter(lambda a, b: tf.reduce_sum(a) < 100.0)  # keeps all, length unknown
    dataset = dataset.map(jitter)
    if cache == "before":
        dataset = dataset.cache()
    dataset = dataset.shuffle(SAMPLES, reshuffle_each_iteration=reshuffle)
    if cache == "after":
        dataset = dataset.cache()
    dataset = dataset.batch(BATCH)
    if repeat:
        dataset = dataset.repeat()
    return dataset.prefetch(2)


def case_tfdata_reshuffle() -> Case:
    return Case(dense_model(), dict(x=tf_data(), epochs=3))


def case_tfdata_cache_fixed_shuffle() -> Case:
    return Case(dense_model(), dict(x=tf_data(reshuffle=False, cache="before"), epochs=3))


def case_tfdata_cache_after_shuffle() -> Case:
    return Case(dense_model(), dict(x=tf_data(cache="after"), epochs=3))


def case_tfdata_repeat_steps() -> Case:
    # 5 steps per epoch over 8 batches per pass: epochs cross passes.
    return Case(dense_model(), dict(x=tf_data(repeat=True), epochs=5, steps_per_epoch=5))


def case_tfdata_unknown_length() -> Case:
    return Case(dense_model(), dict(x=tf_data(filtered=True), epochs=3))


class ShufflingPyDataset(keras.utils.PyDataset):
    """Reorders its samples at each epoch end with its own generator; the
    per-batch noise is derived from (epoch, index), so read-ahead is harmless."""

    def __init__(self) -> None:
        super().__init__()
        self.x, self.y = classification_data()
        self.epoch = 0
        self.order = np.arange(SAMPLES)
        self.rng = np.random.default_rng(SEED)

    def __len__(self) -> int:
        return SAMPLES // BATCH

    def __getitem__(self, index):
        rows = self.order[index * BATCH : (index + 1) * BATCH]
        noise = np.random.default_rng([SEED, self.epoch, index]).normal(size=(BATCH, 6))
        return (self.x[rows] + 0.01 * noise).astype("float32"), self.y[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self.rng.permutation(SAMPLES)

    def get_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "order": self.order.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.order = np.array(state["order"])
        self.rng.bit_generator.state = state["rng"]


def case_pydataset() -> Case:
    dataset = ShufflingPyDataset()
    return Case(
        dense_model(),
        dict(x=dataset, epochs=3, shuffle=True),  # Keras also shuffles batch order
        report=lambda: {"dataset": dataset.get_state()["order"]},
    )


def case_generator() -> Case:
    def batches():
        rng = np.random.default_rng(SEED)  # owned by the generator: restarts identically
        x, y = classification_data()
        while True:
            rows = rng.integers(0, SAMPLES, BATCH)
            yield x[rows], y[rows]

    return Case(dense_model(), dict(x=batches(), epochs=3, steps_per_epoch=6))


class RandomDraws(keras.callbacks.Callback):
    """Draws from every global generator each batch and feeds the draws into
    the learning rate, so that any RNG not restored changes the weights."""

    def __init__(self, base: float = 0.002) -> None:
        super().__init__()
        self.base = base

    def on_train_batch_begin(self, batch, logs=None):
        draws = (
            random.random()
            + float(np.random.rand())
            + float(tf.random.get_global_generator().uniform(()))
            + float(keras.random.uniform(()))
        )
        self.model.optimizer.learning_rate.assign(self.base * (1 + draws))


def case_rng() -> Case:
    """Every global generator drawn each batch (RandomDraws), and the layers' own:
    RandomFlip, RandomRotation, GaussianNoise, Dropout; BatchNormalization and
    SGD with Nesterov momentum."""
    tf.random.set_global_generator(tf.random.Generator.from_seed(SEED))
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(SAMPLES, 6, 6, 1)).astype("float32")
    y = (x[:, :3].mean(axis=(1, 2, 3)) > 0).astype("int64")
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomRotation(0.1),
            keras.layers.GaussianNoise(0.1),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return Case(
        model,
        dict(x=x, y=y, epochs=3, batch_size=BATCH, shuffle=True),
        callbacks=[RandomDraws(base=0.02)],
    )


def case_mixed_precision_adamw() -> Case:
    """mixed_float16 (a LossScaleOptimizer with its dynamic scale) around AdamW
    with a CosineDecay schedule (the learning rate comes from the step)."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    schedule = keras.optimizers.schedules.CosineDecay(0.02, decay_steps=24, warmup_steps=4)
    x, y = classification_data()
    model = dense_model(optimizer=keras.optimizers.AdamW(schedule, weight_decay=0.01))
    return Case(
        model,
        dict(x=x, y=y, epochs=3, batch_size=BATCH, shuffle=True),
        report=lambda: {"optimizer": type(model.optimizer).__name__},
    )


class CountsBatches(keras.callbacks.Callback):
    """State without get_state(): saved only because it is listed in pickle_callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(len(self.seen))


def case_builtin_callbacks(workdir: Path) -> Case:
    x, y = classification_data(80)
    counter = CountsBatches()
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.9),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_accuracy", patience=1, factor=0.5, min_delta=0.01
        ),
        keras.callbacks.ModelCheckpoint(
            str(workdir / "best.weights.h5"), save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=2, restore_best_weights=True
        ),
        keras.callbacks.CSVLogger(str(workdir / "log.csv")),
        counter,
    ]

    def report() -> dict:
        states = {
            type(c).__name__: builtin_states.adapter_for(c).get_state(c).json
            for c in callbacks
            if builtin_states.adapter_for(c) is not None
            and not isinstance(c, keras.callbacks.CSVLogger)
        }
        return {
            "callbacks": states,
            "early_stopping_best_weights": digest(callbacks[3].best_weights or []),
            "csv": (workdir / "log.csv").read_text(),
            "counted": len(counter.seen),
        }

    return Case(
        dense_model(),
        dict(x=x, y=y, epochs=10, batch_size=BATCH, shuffle=True, validation_split=0.2),
        callbacks=callbacks,
        save_freq="epoch",
        pickle_callbacks=[counter],
        report=report,
    )


def mirrored_replicas() -> int:
    """The logical CPU devices of the mirrored_strategy case: MIRRORED_REPLICAS, else 2."""
    return int(os.environ.get("MIRRORED_REPLICAS", "2"))


def case_mirrored_strategy() -> Case:
    """fit() under MirroredStrategy on 2 logical CPU devices (configured in main();
    MIRRORED_REPLICAS for another count) over a reshuffling tf.data pipeline: each
    global batch of 8 is split between the replicas."""
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(mirrored_replicas())])
    with strategy.scope():
        model = dense_model()
    return Case(
        model,
        dict(x=tf_data(), epochs=3),
        report=lambda: {"replicas": strategy.num_replicas_in_sync},
    )


def logical_cpus(count: int) -> None:
    """Split the CPU into `count` logical devices; before TensorFlow initialises."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def case_chaos() -> Case:
    """A longer training for the chaos test: 8 epochs of 24 batches, saved every 2."""
    tf.random.set_global_generator(tf.random.Generator.from_seed(SEED))
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = ((x[:, 0] + x[:, 1] > 0).astype("int64") + (x[:, 2] > 0.8)).astype("int64")
    return Case(
        dense_model(),
        dict(x=x, y=y, epochs=8, batch_size=4, shuffle=True),
        callbacks=[RandomDraws()],
        save_freq=2,
    )


CASES: dict[str, Callable[..., Case]] = {
    "arrays": case_arrays,
    "tfdata_reshuffle": case_tfdata_reshuffle,
    "tfdata_cache_fixed_shuffle": case_tfdata_cache_fixed_shuffle,
    "tfdata_cache_after_shuffle": case_tfdata_cache_after_shuffle,
    "tfdata_repeat_steps": case_tfdata_repeat_steps,
    "tfdata_unknown_length": case_tfdata_unknown_length,
    "pydataset": case_pydataset,
    "generator": case_generator,
    "rng": case_rng,
    "mixed_precision_adamw": case_mixed_precision_adamw,
    "builtin_callbacks": case_builtin_callbacks,
    "mirrored_strategy": case_mirrored_strategy,
    "chaos": case_chaos,
}


# -- report ---------------------------------------------------------------------


def digest(arrays) -> str:
    hasher = hashlib.sha256()
    for array in arrays:
        value = np.ascontiguousarray(np.asarray(array))
        hasher.update(str((value.dtype, value.shape)).encode())
        hasher.update(value.tobytes())
    return hasher.hexdigest()


def next_draws() -> dict:
    """The next number of each global generator: equal only if its state is."""
    report = {"python": random.random(), "numpy": float(np.random.rand())}
    report["keras"] = float(keras.random.uniform(()))
    return report


def run_keras_case(name: str, backup_dir: str, workdir: Path) -> dict:
    builder = CASES[name]
    case = builder(workdir) if name == "builtin_callbacks" else builder()
    if os.environ.get("FIT_EPOCHS"):
        case.fit["epochs"] = int(os.environ["FIT_EPOCHS"])
    if os.environ.get("FIT_SHUFFLE"):
        case.fit["shuffle"] = os.environ["FIT_SHUFFLE"] == "1"
    if os.environ.get("FIT_BATCH_SIZE"):
        case.fit["batch_size"] = int(os.environ["FIT_BATCH_SIZE"])
    interrupter = Interrupter()
    history = case.model.fit(
        **case.fit,
        verbose=0,
        callbacks=[
            ftharness.keras.BackupAndRestore(
                backup_dir=backup_dir,
                save_freq=case.save_freq,
                pickle_callbacks=case.pickle_callbacks,
                allow_changed_fit_args=os.environ.get("ALLOW_CHANGED_FIT_ARGS") == "1",
                # A test that inspects the backup after a finished job keeps it.
                delete_checkpoint=os.environ.get("KEEP_BACKUP") != "1",
            ),
            interrupter,
            *case.callbacks,
        ],
    )
    optimizer = case.model.optimizer
    return {
        "weights": digest(v.numpy() for v in case.model.variables),
        "optimizer": digest(v.numpy() for v in optimizer.variables),
        "learning_rate": float(np.asarray(optimizer.learning_rate)),
        "iterations": int(optimizer.iterations.numpy()),
        "steps": interrupter.step,
        "history": history.history,
        "history_epochs": history.epoch,
        "draws": next_draws(),
        **case.report(),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=[*CASES, "custom_loop"])
    parser.add_argument("--backup-dir")
    parser.add_argument("--report", required=True)
    args = parser.parse_args(argv)

    if os.environ.get("WORKER_PID_FILE"):
        Path(os.environ["WORKER_PID_FILE"]).write_text(str(os.getpid()))
    install_write_killer()
    if args.case == "mirrored_strategy":
        logical_cpus(mirrored_replicas())
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    workdir = Path(args.report).parent
    if args.case == "custom_loop":
        import custom_loop_case

        report = custom_loop_case.run(args.backup_dir, parse_interrupt())
    else:
        report = run_keras_case(args.case, args.backup_dir, workdir)
    Path(args.report).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
