"""The deployment artifacts agree with each other and with the CLI.

Each platform kills the container a fixed time after SIGTERM
(terminationGracePeriodSeconds, docker --stop-timeout, compose
stop_grace_period); ftharness must be told the same number
(FTHARNESS_GRACE_PERIOD), or it plans its final checkpoint for time it does
not have.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .dockerfile import instructions
from .kustomize import render
from .scripts import REPO, parse_docker_run, run_script

# Compute Engine powers a preempted VM off 30 s after the soft-off signal.
GCE_PREEMPTION_SECONDS = 30


def duration_seconds(text: str) -> int:
    """A compose duration such as "30s", "1m30s" or "2m"."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or match is None:
        raise ValueError(f"unsupported duration {text!r}")
    minutes, seconds = (int(group or 0) for group in match.groups())
    return 60 * minutes + seconds


def kubernetes(directory: str) -> tuple[int, dict[str, str]]:
    """The Pod of the Job (or of a JobSet's one replicated Job) under k8s/`directory`."""
    documents = render(REPO / "k8s" / directory)
    jobs = [d for d in documents if d["kind"] == "Job"]
    jobs += [
        replicated["template"]
        for d in documents
        if d["kind"] == "JobSet"
        for replicated in d["spec"]["replicatedJobs"]
    ]
    (job,) = jobs
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    return pod["terminationGracePeriodSeconds"], env


def script(name: str, tmp_path: Path) -> tuple[int, dict[str, str]]:
    run = run_script(
        name,
        tmp_path,
        {"FTHARNESS_IMAGE": "registry.example/train:1", "FTHARNESS_BACKUP_DIR": "s3://bucket/run"},
    )
    assert run.returncode == 0, run.stderr
    (docker_run,) = [parse_docker_run(call) for call in run.docker_calls if call[0] == "run"]
    return int(docker_run.option("--stop-timeout")), docker_run.env()


def compose() -> tuple[int, dict[str, str]]:
    service = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["train"]
    env = dict(item.partition("=")[::2] for item in service["environment"])
    return duration_seconds(service["stop_grace_period"]), env


@pytest.fixture
def platforms(tmp_path: Path) -> dict[str, tuple[int, dict[str, str]]]:
    """platform -> (seconds from SIGTERM to SIGKILL, FTHARNESS_* it sets)."""
    return {
        "k8s restart-on-failure": kubernetes("overlays/restart-on-failure"),
        "k8s pod-failure-policy": kubernetes("overlays/pod-failure-policy"),
        "k8s multi-worker indexed-job": kubernetes("multi-worker/indexed-job"),
        "k8s multi-worker jobset": kubernetes("multi-worker/jobset"),
        "gce": script("gce-startup-script.sh", tmp_path / "gce"),
        "aws": script("aws-user-data.sh", tmp_path / "aws"),
        "compose": compose(),
    }


def test_kill_deadline_is_the_grace_period_everywhere(
    platforms: dict[str, tuple[int, dict[str, str]]],
) -> None:
    grace_periods = set()
    for platform, (deadline, env) in platforms.items():
        grace_period = int(env["FTHARNESS_GRACE_PERIOD"])
        margin = int(env["FTHARNESS_GRACE_MARGIN"])
        assert deadline == grace_period, platform
        assert 0 <= margin < grace_period, platform
        grace_periods.add(grace_period)
    # One number to remember, documented in one place.
    assert grace_periods == {30}
    assert platforms["gce"][0] <= GCE_PREEMPTION_SECONDS


def test_the_cli_knows_every_variable_the_artifacts_set(
    platforms: dict[str, tuple[int, dict[str, str]]],
) -> None:
    names = {name for _, env in platforms.values() for name in env}
    for step in instructions(REPO / "Dockerfile"):
        if step.keyword == "ENV":
            names |= {word.split("=", 1)[0] for word in shlex.split(step.arguments)}
    options = {
        "--" + name.removeprefix("FTHARNESS_").lower().replace("_", "-")
        for name in names
        if name.startswith("FTHARNESS_")
    }
    help_text = subprocess.run(
        [sys.executable, "-m", "ftharness", "supervise", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    missing = sorted(option for option in options if option not in help_text.split())
    assert not missing, f"set by the deployment files but unknown to ftharness: {missing}"


def test_every_stop_signal_is_sigterm() -> None:
    stop_signals = [
        i.arguments for i in instructions(REPO / "Dockerfile") if i.keyword == "STOPSIGNAL"
    ]
    service = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["train"]
    assert stop_signals == ["SIGTERM"]
    assert service["stop_signal"] == "SIGTERM"
