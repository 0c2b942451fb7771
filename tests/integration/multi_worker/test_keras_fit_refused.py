"""Keras fit() under MultiWorkerMirroredStrategy is refused at start, in one line."""

from __future__ import annotations

import subprocess

import pytest
from support import BASE_ENV, PYTHON, REPO, WORKERS

pytestmark = pytest.mark.slow


def test_fit_under_multi_worker_mirrored_strategy_exits_64_naming_the_upstream_problems(tmp_path):
    result = subprocess.run(
        [PYTHON, str(WORKERS / "keras_multi_worker_fit.py"), str(tmp_path / "backups")],
        capture_output=True,
        text=True,
        env=BASE_ENV,
        cwd=REPO,
        timeout=180,
    )
    assert result.returncode == 64, result.stderr[-3000:]
    assert "fit() returned" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if "MultiWorkerMirroredStrategy" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    for reference in ("keras-team/keras#20585", "tensorflow/tensorflow#72388",
                      "ftharness.tf.TrainingCheckpoint"):  # fmt: skip
        assert reference in lines[0]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "backups").glob("ckpt-*"))
