"""Side-by-side measurement: interleaved rounds, medians, result rows."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One figure of the results table: a ratio, with the absolutes beside it.

    `met` is None for figures shown for context, without a target.
    """

    benchmark: str
    figure: str  # "ours / baseline", in words
    ratio: float
    ours: str
    baseline: str
    target: str = ""
    met: bool | None = None
    note: str = ""
    spread: str = ""  # min-max of the per-round ratios


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("no measurements")
    return statistics.median(values)


def interleaved(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run every measure once per round, rotating the order between rounds.

    Side by side in time, so a machine that slows down (other jobs, thermal)
    slows every contender alike; the rotation keeps any "who goes first"
    effect (a warm cache, pending writeback) from always favouring one.
    """
    names = list(measures)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(measures[name]())
    return results


def seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def megabytes(value: float) -> str:
    return f"{value / 1e6:.0f} MB"


def at_most(ratio: float, limit: float) -> bool:
    return ratio <= limit


def format_ratio(ratio: float) -> str:
    if ratio < 0.01:
        return f"{ratio:.5f}"
    return f"{ratio:.3f}"


def ratios(ours: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-round ratios of two interleaved series (round i of one over round i of the other)."""
    return [a / b for a, b in zip(ours, baseline, strict=True)]


def spread(values: Sequence[float]) -> str:
    """'min-max (n)' of per-round ratios: how much the figure moved between rounds."""
    return f"{format_ratio(min(values))}-{format_ratio(max(values))} ({len(values)})"
