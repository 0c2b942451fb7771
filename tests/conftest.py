"""Fixtures shared by all tests."""

from __future__ import annotations

import pytest
from support import Supervised, uninterrupted_reference


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


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> dict:
    """The shared Keras training, uninterrupted (once per test process)."""
    return uninterrupted_reference(tmp_path_factory.mktemp("reference"))
