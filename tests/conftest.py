"""Fixtures shared by all tests."""

from __future__ import annotations

import pytest
from support import Supervised


@pytest.fixture
def supervise(tmp_path):
    started: list[Supervised] = []

    def start(args: list[str], name: str = "supervisor", **kwargs) -> Supervised:
        run = Supervised(args, tmp_path / f"{name}.log", **kwargs)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()
