"""Progress of long transfers, shown only to people.

On a terminal, a single self-overwriting line on stderr; in logs (stderr not
a terminal) nothing, so that log files hold events, not percentages.
"""

from __future__ import annotations

import sys
import time

import fsspec.callbacks


class TerminalProgress(fsspec.callbacks.Callback):
    """An fsspec callback that draws `label: 45% of 400 MB` at most 5 times a second."""

    def __init__(self, label: str, stream=None) -> None:
        super().__init__()
        self.label = label
        self.stream = stream or sys.stderr
        self._drawn = 0.0

    def call(self, *args, **kwargs) -> None:
        now = time.monotonic()
        if now - self._drawn < 0.2 and self.value != self.size:
            return
        self._drawn = now
        if self.size:
            percent = 100 * self.value / self.size
            self.stream.write(f"\r{self.label}: {percent:3.0f}% of {self.size / 1e6:.0f} MB")
            if self.value >= self.size:
                self.stream.write("\n")
            self.stream.flush()


def progress_for(label: str) -> fsspec.callbacks.Callback:
    """A drawing callback on a terminal, fsspec's no-op one otherwise."""
    if sys.stderr.isatty():
        return TerminalProgress(label)
    return fsspec.callbacks.NoOpCallback()
