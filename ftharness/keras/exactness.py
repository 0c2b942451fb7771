"""What a resume of this `fit()` cannot restore exactly, found at start.

The promise: a resumed run ends bit-identical to an uninterrupted one, or
the user is told at start, in one line, what will differ and why. The
checks here are about the input and how `fit()` was called; what the user
must do in any case (seeding, op determinism) is in docs/what-is-restored.md.
"""

from __future__ import annotations

import keras

from ftharness.keras import _internals, data_position

MIRRORED_STRATEGIES = frozenset({"MirroredStrategy"})


def limits(
    fit_call: _internals.FitCall | None, kind: str, strategy: str | None = None
) -> list[str]:
    """Reasons, one short clause each, why a resume would not be exact.

    `strategy`: the class name of a non-default tf.distribute strategy, if any.
    """
    if fit_call is None:
        return [
            "BackupAndRestore is not running inside Keras's fit() with the TensorFlow "
            "backend, so the data position is not restored (an epoch resumes from its "
            "first batch)"
        ]
    x = fit_call.arguments.get("x")
    reasons = []
    if kind == data_position.INPUT_GENERATOR:
        reasons.append(
            "the input is a Python generator, which cannot be re-created at a position: a "
            "new one is skipped forward by the batches already read (exact only if it "
            "restarts identically and draws from no global RNG)"
        )
    elif kind == data_position.INPUT_OTHER:
        reasons.append(
            f"the input ({type(x).__name__}) has no restorable position: it is skipped "
            "forward by the batches already read (exact only if its order is deterministic)"
        )
    elif kind == data_position.INPUT_PYDATASET:
        reasons.extend(_py_dataset_limits(x, bool(fit_call.arguments.get("shuffle"))))
    elif kind == data_position.INPUT_TF_DATA:
        reasons.extend(_tf_data_limits(x))
    # MirroredStrategy (one host, several devices) resumes exactly (the
    # exactness matrix's "mirrored_strategy" row): the metric accumulators,
    # sync-on-read variables, are saved and restored replica by replica
    # (state.assign_group; a checkpoint of another replica count is said when
    # restored). MultiWorkerMirroredStrategy is refused before (multi_worker).
    if strategy is not None and strategy not in MIRRORED_STRATEGIES:
        reasons.append(
            f"a tf.distribute strategy ({strategy}) is in use; ftharness restores the data "
            "position of single-device training only"
        )
    return reasons


def _py_dataset_limits(dataset: keras.utils.PyDataset, shuffle: bool) -> list[str]:
    reasons = []
    name = type(dataset).__name__
    has_protocol = callable(getattr(dataset, "get_state", None)) and callable(
        getattr(dataset, "set_state", None)
    )
    overrides_hooks = any(
        getattr(type(dataset), hook, None) is not getattr(keras.utils.PyDataset, hook, None)
        for hook in ("on_epoch_begin", "on_epoch_end")
    )
    if overrides_hooks and not has_protocol:
        reasons.append(
            f"{name} changes at epoch boundaries (on_epoch_begin/on_epoch_end) but has no "
            "get_state()/set_state(), so its state is not saved"
        )
    # Keras loads through a pool (OrderedEnqueuer) for these; the pool shuffles
    # in its own thread and seeds its processes when each epoch starts.
    workers = dataset.workers
    pooled = workers > 1 or (workers > 0 and dataset.use_multiprocessing)
    if pooled and (shuffle or dataset.use_multiprocessing):
        reasons.append(
            f"{name} is loaded by a pool of {workers} worker(s), which shuffles in its own "
            "thread and seeds its processes as each epoch starts, out of step with training"
        )
    return reasons


def _tf_data_limits(dataset) -> list:
    options = getattr(dataset, "options", None)
    if callable(options) and options().deterministic is False:
        return [
            "the tf.data pipeline allows a non-deterministic order (deterministic=False), "
            "so no two runs see the same batches"
        ]
    return []
