"""The state of the other callbacks of a `fit()`: which are saved, and how.

Three ways, in order of preference:
- the callback's own `get_state()` -> JSON-serialisable dict and
  `set_state(state)` (the protocol for user callbacks);
- an adapter for a Keras built-in (`builtin_states`: History, EarlyStopping,
  ReduceLROnPlateau, ModelCheckpoint, CSVLogger);
- pickling the callback's attributes, only for callbacks the user listed in
  `BackupAndRestore(pickle_callbacks=[...])`: unpickling runs code from the
  checkpoint, so it is never done unasked.

Callbacks without state (LearningRateScheduler, TerminateOnNaN, the progress
bar, most user callbacks) are not saved.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ftharness.keras import builtin_states
from ftharness.keras.builtin_states import CallbackState, StateAdapter
from ftharness.worker import ConfigurationError

log = logging.getLogger("ftharness.keras")

KIND_OWN = "get_state"
KIND_BUILTIN = "builtin"
KIND_PICKLE = "pickle"

# Attributes that tie a callback to this process's model and fit(); never pickled.
_NOT_PICKLED = frozenset({"_model", "model", "params", "validation_data"})


def array_group(index: int) -> str:
    """The arrays group of the `index`-th saved callback in arrays.bin."""
    return f"callback.{index}"


@dataclass(frozen=True)
class SavedCallback:
    """One callback whose state goes into checkpoints."""

    callback: object
    kind: str
    adapter: StateAdapter | None = None

    @property
    def name(self) -> str:
        return type(self.callback).__qualname__

    def get_state(self) -> CallbackState:
        if self.kind == KIND_OWN:
            return CallbackState(self.callback.get_state())
        if self.kind == KIND_BUILTIN:
            return self.adapter.get_state(self.callback)
        data = pickle.dumps(_picklable_attributes(self.callback))
        return CallbackState({}, [np.frombuffer(data, dtype=np.uint8)])

    def set_state(self, state: CallbackState) -> None:
        if self.kind == KIND_OWN:
            self.callback.set_state(state.json)
        elif self.kind == KIND_BUILTIN:
            self.adapter.set_state(self.callback, state)
        else:
            # Opted in by the user (pickle_callbacks=...): see the module docstring.
            attributes = pickle.loads(state.arrays[0].tobytes())
            vars(self.callback).update(attributes)


def _picklable_attributes(callback) -> dict:
    return {k: v for k, v in vars(callback).items() if k not in _NOT_PICKLED}


def saved_callbacks(
    callbacks: Sequence, exclude: object, pickled: Sequence = ()
) -> list[SavedCallback]:
    """The callbacks among `callbacks` whose state is saved, in list order."""
    chosen = []
    for callback in callbacks:
        if callback is exclude:
            continue
        if any(callback is p for p in pickled):
            chosen.append(SavedCallback(callback, KIND_PICKLE))
        elif callable(getattr(callback, "get_state", None)) and callable(
            getattr(callback, "set_state", None)
        ):
            chosen.append(SavedCallback(callback, KIND_OWN))
        else:
            adapter = builtin_states.adapter_for(callback)
            if adapter is not None:
                chosen.append(SavedCallback(callback, KIND_BUILTIN, adapter))
    return chosen


def check_picklable(pickled: Sequence) -> None:
    """Refuse at start, not at the first save, a callback that does not pickle."""
    for callback in pickled:
        try:
            pickle.dumps(_picklable_attributes(callback))
        except Exception as error:  # pickling raises many kinds of errors
            raise ConfigurationError(
                f"pickle_callbacks: {type(callback).__qualname__} cannot be pickled ({error})"
            ) from None


def capture(saved: Sequence[SavedCallback]) -> tuple[list[dict], dict[str, list]]:
    """Every saved callback's state: JSON entries and array groups."""
    entries = []
    groups: dict[str, list] = {}
    for index, item in enumerate(saved):
        state = item.get_state()
        entries.append({"class": item.name, "kind": item.kind, "state": state.json})
        if state.arrays:
            groups[array_group(index)] = [
                (f"{item.name}/{n}", np.array(a)) for n, a in enumerate(state.arrays)
            ]
    return entries, groups


def restore(
    saved: Sequence[SavedCallback],
    entries: list[dict],
    groups: dict[str, list],
    location: str,
    warn: bool = True,
) -> None:
    """Give each callback its state back, where class and kind match in order."""
    current = [(item.name, item.kind) for item in saved]
    recorded = [(entry["class"], entry.get("kind", KIND_OWN)) for entry in entries]
    if current != recorded and warn:
        log.warning(
            "the callbacks with state differ from the checkpoint's (%s now, %s in %s); "
            "their state is restored where the classes match in order",
            [name for name, _ in current],
            [name for name, _ in recorded],
            location,
        )
    for index, (item, entry) in enumerate(zip(saved, entries, strict=False)):
        if (item.name, item.kind) != (entry["class"], entry.get("kind", KIND_OWN)):
            continue
        arrays = [value for _, value in groups.get(array_group(index), [])]
        item.set_state(CallbackState(entry["state"], arrays))
