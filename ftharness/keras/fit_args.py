"""The `fit()` arguments a checkpoint was written under, and the check on resume.

A checkpoint's position (epoch, batch within it, batches to skip) only means
the same thing under the same batch size, epoch length, input and shuffling.
Resuming under others would quietly train something else than the run that
was interrupted, so it is refused (exit 64) unless the user says so with
`BackupAndRestore(allow_changed_fit_args=True)`.

`epochs` may change: the training done so far is the same, a resume only
goes on to the new total ("train two more epochs"), so one line of warning.
"""

from __future__ import annotations

import logging

from ftharness.keras import _internals
from ftharness.worker import TrainingArgumentsChangedError

log = logging.getLogger("ftharness.keras")


def fingerprint(fit_call: _internals.FitCall | None, params: dict | None, kind: str) -> dict:
    """What must not change between attempts, as plain JSON."""
    arguments = fit_call.arguments if fit_call is not None else {}
    params = params or {}
    return {
        "epochs": params.get("epochs", arguments.get("epochs")),
        "batch_size": arguments.get("batch_size"),
        "steps_per_epoch": params.get("steps"),
        "input": kind,
        "shuffle": arguments.get("shuffle"),
    }


def changes(saved: dict, current: dict) -> list[str]:
    """`name saved -> current` for every field that differs (fields absent then are skipped)."""
    return [
        f"{name} {saved[name]!r} -> {current.get(name)!r}"
        for name in saved
        if name in current and saved[name] != current.get(name)
    ]


# Fields that only say how far the training goes, not what it is.
MAY_CHANGE = frozenset({"epochs"})


def check(saved: dict | None, current: dict, *, allow: bool, location: str) -> None:
    """Refuse (or, when allowed, warn about) `fit()` arguments that changed."""
    if not saved:
        return  # written before ftharness recorded them
    extended = changes({k: v for k, v in saved.items() if k in MAY_CHANGE}, current)
    if extended:
        log.warning(
            "fit() arguments changed since %s (%s); the training so far is the same, "
            "it goes on to the new total",
            location,
            ", ".join(extended),
        )
    differences = changes({k: v for k, v in saved.items() if k not in MAY_CHANGE}, current)
    if not differences:
        return
    summary = ", ".join(differences)
    if allow:
        log.warning(
            "fit() arguments changed since %s (%s); resuming anyway as "
            "allow_changed_fit_args=True asks: the result will differ from an "
            "uninterrupted run",
            location,
            summary,
        )
        return
    raise TrainingArgumentsChangedError(
        f"fit() arguments changed since checkpoint {location}: {summary}; resuming "
        "would not continue the same training (pass "
        "BackupAndRestore(allow_changed_fit_args=True) to resume anyway)"
    )
