"""The image itself: built from the Dockerfile, run, stopped and resumed by podman.

podman_setup.sh makes this machine able to (podman, runc, a containers.conf
and a stand-in for the FROM image; see it for why each). The stand-in is
Debian bookworm's own Python 3.11.2 where the official python:3.11.x-slim
image has its own build of 3.11.x; everything above the FROM line is the real
Dockerfile. Cold, on a new machine: about 5 minutes (stand-in ~1 min, build
~2 min). Warm, the layers are cached and only the containers run.

The runs:
- `docker run` as the Dockerfile's header shows it: a named volume for
  /backups, `stop -t 30` mid-training gives exit 143 with a committed final
  checkpoint, `start` resumes at the next batch, and the result is
  bit-identical to the same training run uninterrupted;
- the container as the Kubernetes Job runs it: its UID and GID, its
  securityContext (read-only root filesystem, no capabilities, no privilege
  escalation), its environment, and its emptyDir volumes as fresh host
  directories, stopped with its terminationGracePeriodSeconds and restarted
  in place as the kubelet does (restartPolicy OnFailure);
- deploy/compose.yaml with podman-compose: `up`, `stop`, `up` again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from ftharness.exitcodes import ExitCode

from .kustomize import render
from .podman import Podman, podman_or_skip, wait_for
from .scripts import REPO

pytestmark = [pytest.mark.image, pytest.mark.slow]

TAG = "localhost/ftharness-train:test"

# 2 epochs of 16 batches, a checkpoint every 5; paced so that a stop lands
# mid-training, and stopped after STOP_AFTER batches (mid-epoch 1).
TRAINING = ["--epochs", "2", "--samples", "128", "--batch-size", "8", "--save-freq", "5"]
TOTAL_BATCHES = 32
STOP_AFTER = 20
PACE = ["--sleep", "0.25"]
START_TIMEOUT = 600  # TensorFlow's import in a fresh container, on a loaded machine
FINISH_TIMEOUT = 900


@pytest.fixture(scope="module")
def podman() -> Podman:
    podman = podman_or_skip()
    podman.build(TAG)
    return podman


@pytest.fixture(scope="module")
def uninterrupted_digest(podman: Podman) -> str:
    """The same training, never stopped."""
    with podman.volume() as volume:
        podman(
            "run", "--rm", "--volume", f"{volume}:/backups", TAG,
            "python", "examples/train.py", *TRAINING, "--sleep", "0",
            "--report", "/backups/report.json",
            timeout=FINISH_TIMEOUT,
        )  # fmt: skip
        return json.loads((podman.volume_path(volume) / "report.json").read_text())["digest"]


def batches(log: Path) -> list[int]:
    return [int(n) for n in log.read_text().split()] if log.exists() else []


def stop_mid_training(
    podman: Podman, container: str, log: Path, grace_period: int, stop=None
) -> None:
    """Wait for STOP_AFTER batches, stop (`podman stop -t grace_period` unless
    `stop` is given): a final checkpoint and exit 143."""

    def trained_enough() -> bool:
        assert podman.running(container), podman.logs(container)  # not ended early
        return len(batches(log)) >= STOP_AFTER

    wait_for(trained_enough, START_TIMEOUT, f"{STOP_AFTER} batches in {container}")
    if stop is None:
        podman("stop", "--time", str(grace_period), container, timeout=grace_period + 120)
    else:
        stop()
    stopped = podman.inspect(container)["State"]["ExitCode"]
    assert stopped == ExitCode.PREEMPTED == 143, podman.logs(container)
    assert len(batches(log)) < TOTAL_BATCHES  # it was stopped mid-training


def resume(podman: Podman, container: str, log: Path) -> str:
    """Start the stopped container again; its logs of the second run."""
    before = len(batches(log))
    podman("start", container)
    assert podman.exit_code(container) == 0, podman.logs(container)
    # Each batch trained exactly once across both runs: resumed at the next one.
    assert batches(log) == list(range(1, TOTAL_BATCHES + 1)), (before, batches(log))
    return podman.logs(container)


def test_docker_run_stop_start_resumes_bit_identically(
    podman: Podman, uninterrupted_digest: str
) -> None:
    with podman.volume() as volume, podman.container_name() as container:
        podman(
            "run", "--detach", "--name", container, "--stop-timeout", "30",
            "--volume", f"{volume}:/backups", TAG,
            "python", "examples/train.py", *TRAINING, *PACE,
            "--report", "/backups/report.json", "--batch-log", "/backups/batches",
        )  # fmt: skip
        data = podman.volume_path(volume)
        stop_mid_training(podman, container, data / "batches", grace_period=30)
        assert "final checkpoint committed" in podman.logs(container)

        logs = resume(podman, container, data / "batches")
        assert "restored ckpt-" in logs and "resuming at" in logs, logs
        report = json.loads((data / "report.json").read_text())
        assert report["digest"] == uninterrupted_digest


def kubernetes_container() -> tuple[dict, dict, dict]:
    """The pod spec, its trainer container and its volumes by name, rendered."""
    (job,) = [
        d for d in render(REPO / "k8s" / "overlays" / "restart-on-failure") if d["kind"] == "Job"
    ]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container, {volume["name"]: volume for volume in pod["volumes"]}


def kubernetes_flags(tmp_path: Path, bucket: Path) -> tuple[list[str], int]:
    """`podman run` flags that run the container as the Job's Pod would."""
    pod, container, volumes = kubernetes_container()
    security, pod_security = container.get("securityContext", {}), pod["securityContext"]
    flags = ["--user", f"{pod_security['runAsUser']}:{pod_security['runAsGroup']}"]
    if security.get("readOnlyRootFilesystem"):
        # Kubernetes mounts nothing writable that the Pod does not declare.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    flags += [f"--cap-drop={cap}" for cap in security.get("capabilities", {}).get("drop", [])]
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            # An emptyDir starts empty, world-writable (the kubelet makes it 0777).
            directory = tmp_path / mount["name"]
            directory.mkdir()
            directory.chmod(0o777)
            flags += ["--volume", f"{directory}:{mount['mountPath']}"]
    for variable in container["env"]:
        if "value" in variable:
            flags += ["--env", f"{variable['name']}={variable['value']}"]
    # FTHARNESS_BACKUP_DIR comes from the Secret: here a directory stands in
    # for the bucket.
    flags += ["--env", "FTHARNESS_BACKUP_DIR=/bucket", "--volume", f"{bucket}:/bucket"]
    grace_period = pod["terminationGracePeriodSeconds"]
    return [*flags, "--stop-timeout", str(grace_period)], grace_period


def test_runs_as_the_kubernetes_job_runs_it(
    podman: Podman, uninterrupted_digest: str, tmp_path: Path
) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    bucket.chmod(0o777)
    flags, grace_period = kubernetes_flags(tmp_path, bucket)
    with podman.container_name() as container:
        podman(
            "run", "--detach", "--name", container, *flags, TAG,
            "python", "examples/train.py", *TRAINING, *PACE,
            "--batch-log", "/bucket/batches", "--report", "/bucket/report.json",
        )  # fmt: skip
        stop_mid_training(podman, container, bucket / "batches", grace_period)
        # The restart in place (restartPolicy OnFailure): same emptyDir, same bucket.
        logs = resume(podman, container, bucket / "batches")
        assert "final checkpoint committed; exiting on SIGTERM" in logs, logs
        assert "restored ckpt-" in logs, logs
        assert json.loads((bucket / "report.json").read_text())["digest"] == uninterrupted_digest
        # The checkpoints reached the bucket, written by the Pod's UID.
        owners = {path.stat().st_uid for path in bucket.rglob("*")}
        assert owners == {10001}, owners
        # FTHARNESS_LOG_FORMAT=json: every line ftharness logs is one JSON
        # object, so that the cluster's log pipeline can parse them.
        text_lines = [line for line in logs.splitlines() if " ftharness INFO " in line]
        assert not text_lines, text_lines[:3]


def podman_compose() -> list[str]:
    if shutil.which("podman-compose"):
        return ["podman-compose"]
    try:
        import podman_compose  # noqa: F401  # the `test` extra installs it
    except ImportError:
        pytest.skip("podman-compose not installed (pip install podman-compose, in `.[test]`)")
    return [sys.executable, "-m", "podman_compose"]


def test_compose_file_stops_and_resumes(
    podman: Podman, uninterrupted_digest: str, tmp_path: Path
) -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    image = compose["services"]["train"]["image"]
    podman("tag", TAG, image)  # built above: `up --no-build` uses it
    # The tiny training instead of the image's CMD, and a project name of its
    # own so that its volumes are fresh and removed afterwards.
    override = tmp_path / "override.yaml"
    command = [
        "python", "examples/train.py", *TRAINING, *PACE,
        "--batch-log", "/backups/batches", "--report", "/backups/report.json",
    ]  # fmt: skip
    override.write_text(yaml.safe_dump({"services": {"train": {"command": command}}}))
    project = f"ftharness-test-{uuid.uuid4().hex[:8]}"
    compose_command = [
        *podman_compose(), "--project-name", project,
        "--file", str(REPO / "deploy" / "compose.yaml"), "--file", str(override),
    ]  # fmt: skip

    def compose_run(*args: str) -> None:
        result = subprocess.run(
            [*compose_command, *args],
            env={**os.environ, "CONTAINERS_CONF": str(podman.conf)},
            capture_output=True,
            text=True,
            timeout=FINISH_TIMEOUT,
        )
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"

    try:
        compose_run("up", "--detach", "--no-build")
        container = f"{project}_train_1"
        log = podman.volume_path(f"{project}_backups") / "batches"
        grace_period = int(compose["services"]["train"]["stop_grace_period"].rstrip("s"))
        # `compose stop`: the file's stop_signal, then SIGKILL after its
        # stop_grace_period (podman-compose passes it to `podman stop -t`).
        stop_mid_training(podman, container, log, grace_period, stop=lambda: compose_run("stop"))
        compose_run("up", "--detach", "--no-build")  # resumes, as the file's header says
        assert podman.exit_code(container) == 0, podman.logs(container)
        assert batches(log) == list(range(1, TOTAL_BATCHES + 1))
        report = json.loads((log.with_name("report.json")).read_text())
        assert report["digest"] == uninterrupted_digest
    finally:
        compose_run("down", "--volumes")
