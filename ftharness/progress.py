"""Progress of long operations (transfers, verification), shown only to people.

On a terminal, one self-overwriting line on stderr; in logs (stderr
redirected to a file or a pipe) nothing: a log full of carriage returns
helps nobody.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import fsspec.callbacks

_REFRESH_SECONDS = 0.1


class Progress:
    """Bytes done out of a total, redrawn at most ten times a second.

    Example::

        progress = Progress("verifying ckpt-000000000040", total=size)
        for chunk in chunks:
            progress.advance(len(chunk))
        progress.done()
    """

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream)
        self.done_bytes = 0
        self._drawn_at = 0.0

    def advance(self, count: int) -> None:
        self.done_bytes += count
        now = time.monotonic()
        if self.enabled and now - self._drawn_at >= _REFRESH_SECONDS:
            self._drawn_at = now
            percent = 100 * self.done_bytes / self.total if self.total else 100.0
            self.stream.write(f"\r{self.label}: {percent:3.0f}% of {human_bytes(self.total)}\x1b[K")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._drawn_at:
            self.stream.write("\r\x1b[K")  # clear the line for the result
            self.stream.flush()


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class TransferProgress(fsspec.callbacks.Callback):
    """An fsspec transfer callback that draws through `Progress`.

    Example::

        fs.put_file(local, remote, callback=TransferProgress("upload ckpt-000000000040"))
    """

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        super().__init__()
        self.label = label
        self.stream = stream
        self._progress: Progress | None = None

    def set_size(self, size: int) -> None:
        super().set_size(size)
        self._progress = Progress(self.label, total=size or 0, stream=self.stream)

    def call(self, *args, **kwargs) -> None:
        if self._progress is None or self.value is None:
            return
        self._progress.advance(self.value - self._progress.done_bytes)
        if self.size and self.value >= self.size:
            self._progress.done()


def progress_for(label: str) -> fsspec.callbacks.Callback:
    """A drawing callback on a terminal, fsspec's no-op one otherwise."""
    if _is_terminal(sys.stderr):
        return TransferProgress(label)
    return fsspec.callbacks.NoOpCallback()
