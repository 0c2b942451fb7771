"""The training side of the benchmarks: one TensorFlow process per measurement.

    python -m benchmarks.worker MODE --config JSON [options] --out RESULT.json

Modes:
  calibrate    median step time and state size of the model
  final        train until SIGTERM under ftharness's callback (the final
               checkpoint is timed from outside); touches --ready when warm
  keras-save   time keras.callbacks.BackupAndRestore saves of the same model
  steady       training throughput: no checkpoints / ftharness / Keras's
               callback, in interleaved fit() calls of the same process
  memory       peak RSS around one checkpoint (or at the same steps without
               one) of a short training, in a fresh process
  goodput      a supervised training job; appends its own timestamps
The model and its data are made here, never downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import psutil
import tensorflow as tf

import ftharness.keras
from benchmarks.settings import Settings


def build_model(settings: Settings) -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((settings.width,)),
            *[keras.layers.Dense(settings.width, activation="relu") for _ in range(settings.depth)],
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse")
    return model


def make_data(settings: Settings, steps: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * settings.batch_size, settings.width)).astype("float32")
    return x, x


def input_pipeline(settings: Settings, data) -> tf.data.Dataset:
    """The batches, in order, with tf.data's autotuning off.

    With autotuning on, deleting an epoch's spent iterator (which Keras's
    fit() does at the start of the next epoch, for numpy input as for a
    dataset) stalls training 0.6-1.9 s at random epoch starts here, with or
    without ftharness (TensorFlow 2.21, 2 cores; see docs/speed.md). That
    is TensorFlow's cost, not a checkpoint's, and its randomness would
    swamp the few per cent the benchmarks measure.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    batches = tf.data.Dataset.from_tensor_slices(data).batch(settings.batch_size)
    return batches.with_options(options)


def state_bytes(model: keras.Model) -> int:
    variables = list(model.variables) + list(model.optimizer.variables)
    return int(sum(np.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def fit(model, settings: Settings, data, callbacks, epochs: int = 1) -> float:
    started = time.perf_counter()
    model.fit(
        input_pipeline(settings, data),
        epochs=epochs,
        verbose=0,
        callbacks=callbacks,
    )
    return time.perf_counter() - started


class StepTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.ends.append(time.perf_counter())

    def median_step(self, skip: int = 2) -> float:
        gaps = np.diff(self.ends[skip:])
        return float(np.median(gaps)) if len(gaps) else float("nan")


class TouchAfter(keras.callbacks.Callback):
    """Creates a file after `steps` batches: the outside knows we are warm."""

    def __init__(self, path: Path, steps: int) -> None:
        super().__init__()
        self.path = path
        self.steps = steps
        self.count = 0

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.count += 1
        if self.count == self.steps:
            self.path.write_text(str(time.time()))


class KerasBackup(keras.callbacks.BackupAndRestore):
    """Keras's callback, each save timed (and so counted). The backup stays
    after fit() (`delete_checkpoint=False`): `keras_save` measures its size."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, delete_checkpoint=False, **kwargs)
        self.save_seconds: list[float] = []
        self.save_ends: list[float] = []  # perf_counter()

    def _save_model(self) -> None:  # Keras's private save method: the thing measured
        started = time.perf_counter()
        super()._save_model()
        self.save_ends.append(time.perf_counter())
        self.save_seconds.append(self.save_ends[-1] - started)


class FlushedKerasBackup(KerasBackup):
    """Each save starts from the same clean disk as ours: dirty pages are
    flushed first, untimed."""

    def _save_model(self) -> None:
        os.sync()
        super()._save_model()


class CommitLog(logging.Handler):
    """The checkpoints ftharness committed, from its log: a job's backup is
    removed when its fit() succeeds (delete_checkpoint=True), so the
    directory cannot tell afterwards."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.names: list[str] = []
        self.times: list[float] = []  # perf_counter() at each commit (logged right after it)
        logging.getLogger("ftharness.keras").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        match = re.match(r"checkpoint (ckpt-\d+) committed", record.getMessage())
        if match:
            self.names.append(match.group(1))
            self.times.append(time.perf_counter())


# -- modes -------------------------------------------------------------------


def calibrate(settings: Settings, args) -> dict:
    model = build_model(settings)
    timer = StepTimer()
    fit(model, settings, make_data(settings, 14), [timer])
    return {"step_seconds": timer.median_step(skip=3), "state_bytes": state_bytes(model)}


class MemcpyBaseline(keras.callbacks.Callback):
    """Times a copy of the state's size between two preallocated, touched buffers
    at the step before each periodic save: the baseline of that save's stall,
    in the same process, next to it in time.

    The buffers are sized after the first step: before it, Adam's slots (two
    thirds of the state) do not exist yet, and a size taken at construction
    would time a copy of the weights alone.
    """

    def __init__(self, save_freq: int) -> None:
        super().__init__()
        self.save_freq = save_freq
        self.seconds: list[float] = []
        self.steps = 0
        self.nbytes = 0
        self.source: np.ndarray | None = None
        self.target: np.ndarray | None = None

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.steps += 1
        if self.source is None:
            self.nbytes = state_bytes(self.model)
            self.source = np.ones(self.nbytes, dtype=np.uint8)
            self.target = np.ones(self.nbytes, dtype=np.uint8)  # touched: no page faults
        if self.save_freq and (self.steps + 1) % self.save_freq == 0:
            started = time.perf_counter()
            np.copyto(self.target, self.source)
            self.seconds.append(time.perf_counter() - started)


def final(settings: Settings, args) -> dict:
    """Train until a stop signal; ftharness commits the final checkpoint and exits 143.

    Under `ftharness supervise` (no --backup-dir) the supervisor's directory is used.
    """
    model = build_model(settings)
    timer = StepTimer()
    callbacks = [
        ftharness.keras.BackupAndRestore(
            backup_dir=args.backup_dir or None, save_freq=args.save_freq or False, keep=2
        ),
        timer,
        TouchAfter(Path(args.ready), 4),
    ]
    memcpy = None
    if args.memcpy:
        memcpy = MemcpyBaseline(args.save_freq)
        callbacks.append(memcpy)
    try:
        fit(model, settings, make_data(settings, 64), callbacks, epochs=10**6)
    finally:
        _write(
            args.out,
            {
                "step_seconds": timer.median_step(),
                "state_bytes": state_bytes(model),
                "memcpy_seconds": memcpy.seconds if memcpy is not None else [],
                "memcpy_bytes": memcpy.nbytes if memcpy is not None else 0,
            },
        )
    return {}


def keras_save(settings: Settings, args) -> dict:
    model = build_model(settings)
    every = 3
    callback = FlushedKerasBackup(args.backup_dir, save_freq=every)
    fit(model, settings, make_data(settings, every * (args.saves + 1)), [callback])
    written = sum(p.stat().st_size for p in Path(args.backup_dir).rglob("*") if p.is_file())
    # The first save is Keras's warm-up (h5py, file creation): not counted.
    return {"save_seconds": callback.save_seconds[1:], "written_bytes": written}


def steady(settings: Settings, args) -> dict:
    """Rounds of one fit() per config, each timed step by step over whole checkpoint intervals."""
    model = build_model(settings)
    warm = StepTimer()
    fit(model, settings, make_data(settings, 12), [warm])
    step = warm.median_step(skip=3)
    save_every = max(2, round(settings.save_interval / step))
    intervals = settings.steady_intervals
    # The first interval is lead-in: the fit()'s start and its first
    # checkpoint, which makes the callback's snapshot buffers (done once per
    # training job, not per checkpoint). The window then runs from just after
    # that checkpoint to just after the last: `intervals` whole intervals,
    # each with one stall and one background write, as in a long training.
    # The step after it lets the window close before fit() ends: what
    # on_train_end does (removing the backup) happens once per job too.
    window = StepMarks(start=save_every, end=save_every * (intervals + 1))
    data = make_data(settings, window.end + 1)
    work = Path(args.work)
    configs = args.configs.split(",")
    segments = []
    commits = CommitLog()

    def callbacks_for(config: str, directory: Path) -> list:
        if config == "none":
            return [window]
        if config == "keras":
            return [KerasBackup(str(directory), save_freq=save_every), window]
        ours = ftharness.keras.BackupAndRestore(backup_dir=str(directory), save_freq=save_every)
        return [ours, window]

    # One untimed segment of each first: the first fit() with a callback
    # traces and allocates what later ones reuse.
    for config in configs:
        directory = work / f"warm-{config}"
        fit(model, settings, make_data(settings, save_every + 1), callbacks_for(config, directory))
        shutil.rmtree(directory, ignore_errors=True)
    for round_index in range(settings.steady_repeats):
        shift = round_index % len(configs)
        for config in configs[shift:] + configs[:shift]:
            directory = work / f"{config}-{round_index}"
            directory.mkdir(parents=True)
            os.sync()  # each segment starts with no writeback pending
            committed_before = len(commits.names)
            callbacks = callbacks_for(config, directory)
            fit(model, settings, data, callbacks)
            # When each checkpoint's work ended: ftharness's commit (on its
            # writer thread), the return of Keras's save (on the training thread).
            ends = callbacks[0].save_ends if config == "keras" else commits.times[committed_before:]
            segments.append(
                {
                    "config": config,
                    "round": round_index,
                    "marks": window.marks,
                    "checkpoint_ends": ends,
                }
            )
            shutil.rmtree(directory, ignore_errors=True)
    return {
        "step_seconds": step,
        "save_every": save_every,
        "intervals": intervals,
        "state_bytes": state_bytes(model),
        "segments": segments,
        "per_step_overhead": per_step_overhead(settings, work / "overhead"),
    }


OVERHEAD_WIDTH, OVERHEAD_STEPS = 32, 400


def per_step_overhead(settings: Settings, directory: Path) -> dict[str, list[float]]:
    """CPU seconds per step of a tiny model's fit() without / with ftharness's
    callback checkpointing nothing (`save_freq=False`), rounds interleaved.

    What the callback costs every step (its batch hooks and the wrapper of
    the train function) does not depend on the model's size; on a model
    whose step takes a fraction of a millisecond it is a large, measurable
    part of the step. The steady-state figure, which compares steps that
    all carry it, adds it back.
    """
    tiny = replace(settings, width=OVERHEAD_WIDTH, depth=2)
    model = build_model(tiny)
    data = make_data(tiny, OVERHEAD_STEPS)
    result: dict[str, list[float]] = {"none": [], "ftharness": []}
    for round_index in range(settings.overhead_repeats + 1):  # the first round is warm-up
        for config in ("none", "ftharness") if round_index % 2 else ("ftharness", "none"):
            callbacks = []
            if config == "ftharness":
                callbacks = [
                    ftharness.keras.BackupAndRestore(backup_dir=str(directory), save_freq=False)
                ]
            marks = StepMarks(start=1, end=OVERHEAD_STEPS - 1)  # the first step traces
            fit(model, tiny, data, [*callbacks, marks])
            if round_index:
                result[config].append(
                    (marks.marks[-1][1] - marks.marks[0][1]) / (len(marks.marks) - 1)
                )
            shutil.rmtree(directory, ignore_errors=True)
    return result


class StepMarks(keras.callbacks.Callback):
    """perf_counter() and the process's CPU time at the start of steps `start` + 1 to `end` + 1.

    Taken at batch begin: by then every callback's hooks of the step before
    have run, a checkpoint taken at its end included, whatever the order of
    the callbacks (ftharness's runs last, Keras's where it is listed).
    """

    def __init__(self, start: int, end: int) -> None:
        super().__init__()
        self.start, self.end = start, end
        self.marks: list[tuple[float, float]] = []

    def on_train_begin(self, logs=None) -> None:
        self.marks = []

    def on_train_batch_begin(self, batch, logs=None) -> None:
        if self.start <= batch <= self.end:  # `batch` steps are done (one epoch)
            self.marks.append((time.perf_counter(), _cpu_seconds()))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def memory(settings: Settings, args) -> dict:
    """Peak RSS from the step before the checkpoint (step 5) to the end of training.

    The snapshot of step 5 is written while steps 6-8 train, as in real use.
    The peak is reset at the end of step 4 (`PeakFrom`), in both kinds of
    run: a process's lifetime peak (ru_maxrss) is set before that, by
    TensorFlow's start and the first step's tracing, and is higher than a
    checkpoint's, which it would hide (the difference would read 0).
    """
    model = build_model(settings)
    data = make_data(settings, 8)
    callback = ftharness.keras.BackupAndRestore(
        backup_dir=args.backup_dir, save_freq=5 if args.save else False
    )
    peak = PeakFrom(step=4)
    commits = CommitLog()
    fit(model, settings, data, [peak, callback])
    if peak.rss_at_reset is None:
        raise RuntimeError("training ended before step 4: the peak was never reset")
    return {
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_at_reset": peak.rss_at_reset,
        "state_bytes": state_bytes(model),
        "checkpoints": commits.names,
    }


class PeakFrom(keras.callbacks.Callback):
    """Resets the process's peak RSS at the end of training step `step`.

    Listed before ftharness's callback, so a save at that very step would be
    counted after the reset.
    """

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.rss_at_reset: int | None = None

    def on_train_batch_end(self, batch, logs=None) -> None:
        if batch + 1 == self.step:
            reset_peak_rss()
            self.rss_at_reset = psutil.Process().memory_info().rss


def reset_peak_rss() -> None:
    """Linux: the peak RSS ("VmHWM") becomes the current RSS (proc(5), clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_bytes() -> int:
    """The peak RSS since the last `reset_peak_rss()` (VmHWM, /proc/self/status)."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    if match is None:
        raise RuntimeError("/proc/self/status has no VmHWM line")
    return int(match.group(1)) * 1024


def goodput(settings: Settings, args) -> dict:
    """One attempt of a supervised job: timestamps go to --timeline."""
    created = psutil.Process().create_time()
    model = build_model(settings)
    steps_per_epoch = 20
    epochs = max(1, args.total_steps // steps_per_epoch)
    timeline = Path(args.timeline)
    record = {"attempt": int(os.environ.get("FTHARNESS_ATTEMPT", "0")), "created": created}
    step_ends: list[float] = []

    class Marks(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None) -> None:
            if "ready" not in record:  # started, restored, about to train
                record["ready"] = time.time()
                Path(args.ready).touch()

        def on_train_batch_end(self, batch, logs=None) -> None:
            step_ends.append(time.time())

        def on_train_end(self, logs=None) -> None:
            Path(args.done).touch()  # nothing left to preempt

    callbacks = [
        ftharness.keras.BackupAndRestore(save_freq=args.save_freq),
        Marks(),
    ]
    try:
        fit(model, settings, make_data(settings, steps_per_epoch), callbacks, epochs=epochs)
    finally:
        record["end"] = time.time()
        record["iterations"] = int(model.optimizer.iterations.numpy())
        record["step_ends"] = step_ends
        with open(timeline, "a") as file:
            file.write(json.dumps(record) + "\n")
    return {}


MODES = {
    "calibrate": calibrate,
    "final": final,
    "keras-save": keras_save,
    "steady": steady,
    "memory": memory,
    "goodput": goodput,
}


def _write(path: str | None, result: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--config", required=True, help="Settings as JSON")
    parser.add_argument("--out", help="write the result here as JSON")
    parser.add_argument("--backup-dir")
    parser.add_argument("--ready")
    parser.add_argument("--done")
    parser.add_argument("--save-freq", type=int, default=0)
    parser.add_argument("--saves", type=int, default=3)
    parser.add_argument("--save", action="store_true")
    parser.add_argument("--memcpy", action="store_true", help="final: time the memcpy baseline")
    parser.add_argument("--work")
    parser.add_argument("--configs", default="none,ftharness,keras")
    parser.add_argument("--total-steps", type=int, default=100)
    parser.add_argument("--timeline")
    args = parser.parse_args(argv)
    settings = Settings(**json.loads(args.config))
    result = MODES[args.mode](settings, args)
    if result:
        _write(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
