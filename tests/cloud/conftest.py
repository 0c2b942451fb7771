"""Emulator fixtures: one S3 and one GCS emulator per test session (per xdist worker)."""

from __future__ import annotations

import pytest
from emulators import GcsEmulator, S3Emulator


@pytest.fixture(scope="session")
def s3_emulator(tmp_path_factory):
    emulator = S3Emulator(tmp_path_factory.mktemp("s3"))
    emulator.start()
    emulator.make_bucket()
    yield emulator
    emulator.kill()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs"))
    emulator.start()
    emulator.make_bucket()
    yield emulator
    emulator.kill()
