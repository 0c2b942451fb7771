"""The image's exact ENTRYPOINT and CMD, run as PID 1 the way a pod runs it.

No container runtime here: a new PID and mount namespace stands in for the
container, and the test plays the kubelet on a pod deletion or node drain:
SIGTERM to PID 1, then SIGKILL after terminationGracePeriodSeconds. The pod's
environment (FTHARNESS_*) is taken from the rendered Kubernetes manifest, the
emptyDir and the bucket become two local directories.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode

from .dockerfile import entrypoint_and_cmd
from .kustomize import render
from .scripts import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare"
    ),
]


def pod_spec() -> tuple[int, dict[str, str]]:
    (job,) = [
        d for d in render(REPO / "k8s" / "overlays" / "pod-failure-policy") if d["kind"] == "Job"
    ]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    return pod["terminationGracePeriodSeconds"], env


def start_pod(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # The image's PATH puts its venv first: here, this test's interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    with open(log, "ab") as output:
        return subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", *argv],
            stdout=output, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, **env, "PATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip


def test_kubelet_sigterm_then_sigkill_sequence_commits_before_the_kill(tmp_path):
    entrypoint, cmd = entrypoint_and_cmd(REPO / "Dockerfile")
    assert entrypoint[:2] == ["ftharness", "supervise"]
    grace_seconds, pod_env = pod_spec()
    bucket = f"file://{tmp_path / 'bucket'}"
    env = {
        **{k: v for k, v in pod_env.items() if k.startswith("FTHARNESS_")},
        "FTHARNESS_BACKUP_DIR": bucket,  # from the Secret in the real pod
        "FTHARNESS_LOCAL_DIR": str(tmp_path / "emptydir-1"),
        "BATCH_SLEEP": "0.05",
    }
    log = tmp_path / "pod.log"
    pod = start_pod(entrypoint + cmd, env, log)
    pid_one = None
    deadline = time.monotonic() + 120
    # The worker tells each commit, once (the supervisor's own line is DEBUG).
    committed = re.compile(r"checkpoint ckpt-\d+ committed")
    while time.monotonic() < deadline and not committed.search(log.read_text()):
        time.sleep(0.2)
    assert committed.search(log.read_text()), log.read_text()
    pid_one = psutil.Process(pod.pid).children()[0]

    # The kubelet: SIGTERM, then SIGKILL once the grace period is over.
    pid_one.send_signal(signal.SIGTERM)
    try:
        code = pod.wait(timeout=grace_seconds)
        killed = False
    except subprocess.TimeoutExpired:
        pid_one.kill()
        code, killed = pod.wait(), True
    text = log.read_text()
    assert not killed, "the grace period ran out before ftharness exited"
    assert code == ExitCode.PREEMPTED  # the code the podFailurePolicy ignores
    assert "final upload done" in text
    final_step = RemoteCheckpointStore(bucket).latest().step
    assert f"committed at step {final_step}" in text

    # The replacement pod: a new emptyDir, the same bucket.
    env["FTHARNESS_LOCAL_DIR"] = str(tmp_path / "emptydir-2")
    env["BATCH_SLEEP"] = "0"
    second_log = tmp_path / "pod-2.log"
    replacement = start_pod(entrypoint + cmd, env, second_log)
    assert replacement.wait(timeout=300) == ExitCode.FINISHED, second_log.read_text()
    resumed = second_log.read_text()
    assert f"fetched ckpt-{final_step:012d}" in resumed
    assert f"(step {final_step})" in resumed  # "restored ...: resuming at ... (step N)"
