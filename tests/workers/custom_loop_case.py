"""The exactness matrix's custom-loop case: examples/custom_loop.py with fault injection."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

import custom_loop

STEPS = 30
SAVE_FREQ = 4
EXIT_CRASH = 3


def run(backup_dir: str, interrupt: tuple[str, int] | None) -> dict:
    def after_step(step: int) -> None:
        if interrupt == ("sigterm", step):
            os.kill(os.getpid(), signal.SIGTERM)  # seen by step_end of this step
        elif interrupt == ("crash", step):
            os._exit(EXIT_CRASH)

    return custom_loop.train(backup_dir, STEPS, SAVE_FREQ, after_step=after_step)
