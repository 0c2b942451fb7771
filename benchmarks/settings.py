"""Sizes and repeat counts: the full run and the `--quick` smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """What to measure and how often.

    The model is `depth` Dense layers of `width` units on `width` inputs,
    trained with Adam: weights plus two optimizer slots are the state. The
    full size, 8 x 2048, is 33.6 M parameters and 403 MB of state, the
    issue's reference model; no variable is over 5 % of the state.
    """

    quick: bool
    width: int
    depth: int
    batch_size: int
    repeats: int  # final checkpoint, scaling, restore, memory
    save_interval: float  # seconds of training between periodic checkpoints
    steady_repeats: int  # steady state: rounds (one fit() per config each)
    steady_intervals: int  # steady state: checkpoint intervals timed per fit()
    overhead_repeats: int  # steady state: rounds of the callback's per-step cost
    restarts: int  # supervisor: restarts measured per round
    idle_seconds: float  # supervisor: CPU measured over this long
    goodput_seconds: float  # goodput: uninterrupted training time
    goodput_pairs: int  # goodput: pairs of runs (uninterrupted, preempted)
    preempt_every: float  # goodput: seconds from a launch to its SIGTERM
    min_training: float  # goodput: ...but never before this long of training
    max_preemptions: int  # goodput: then the job runs to its end

    @property
    def state_bytes(self) -> int:
        """Weights, biases and Adam's two slots, float32 (the worker reports the exact size)."""
        return self.depth * (self.width * self.width + self.width) * 4 * 3

    @property
    def label(self) -> str:
        return "quick (smoke test, small sizes)" if self.quick else "full"


FULL = Settings(
    quick=False,
    width=2048,
    depth=8,
    batch_size=8,
    repeats=5,
    save_interval=10.0,
    steady_repeats=5,
    steady_intervals=2,
    overhead_repeats=15,
    restarts=30,
    idle_seconds=10.0,
    goodput_seconds=30.0,
    goodput_pairs=5,
    preempt_every=20.0,
    min_training=2.0,
    max_preemptions=100,
)

QUICK = Settings(
    quick=True,
    width=256,
    depth=4,
    batch_size=8,
    repeats=1,
    save_interval=0.5,
    steady_repeats=1,
    steady_intervals=2,
    overhead_repeats=3,
    restarts=5,
    idle_seconds=1.0,
    goodput_seconds=3.0,
    goodput_pairs=1,
    preempt_every=1.0,
    min_training=3.0,
    max_preemptions=1,
)
