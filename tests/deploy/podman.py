"""podman, set up by podman_setup.sh, for the tests that build and run the image.

podman is a docker-compatible CLI that Debian packages: `podman build`,
`run`, `stop` and `start` do what `docker ...` does with the same flags.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from .scripts import REPO

SETUP = Path(__file__).with_name("podman_setup.sh")
CANNOT_RUN = 77  # podman_setup.sh: podman cannot run on this machine

# pip inside the build reaches the package index through the host's
# TLS-intercepting proxy, so the build sees the host's CA bundle. Only the
# build: the Dockerfile itself stays as a real user needs it.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# Cold: the stand-in base (~1 min) and the build (~2 min, mostly TensorFlow);
# on a loaded machine several times that.
SETUP_TIMEOUT = 1800
BUILD_TIMEOUT = 2400
COMMAND_TIMEOUT = 300


@dataclass(frozen=True)
class Podman:
    """The podman CLI with this machine's containers.conf."""

    conf: Path

    def __call__(
        self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args],
            env={**os.environ, "CONTAINERS_CONF": str(self.conf)},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def build(self, tag: str) -> None:
        """The Dockerfile built from the repository, layers cached between runs."""
        ca = f"{CA_BUNDLE}:{CA_BUNDLE}:ro"
        volume = ["--volume", ca] if CA_BUNDLE.exists() else []
        # One build at a time: the other test processes then find it cached.
        with FileLock(self.conf.with_name("build.lock")):
            self("build", "--pull=never", *volume, "--tag", tag, str(REPO), timeout=BUILD_TIMEOUT)

    def inspect(self, container: str) -> dict:
        (state,) = json.loads(self("container", "inspect", container).stdout)
        return state

    def exit_code(self, container: str) -> int:
        return int(self("wait", container, timeout=COMMAND_TIMEOUT).stdout.strip())

    def running(self, container: str) -> bool:
        return bool(self.inspect(container)["State"]["Running"])

    def logs(self, container: str) -> str:
        result = self("logs", container)
        return result.stdout + result.stderr

    def volume_path(self, volume: str) -> Path:
        return Path(self("volume", "inspect", "--format", "{{.Mountpoint}}", volume).stdout.strip())

    @contextmanager
    def volume(self) -> Iterator[str]:
        """A fresh named volume, removed afterwards."""
        name = f"ftharness-test-{uuid.uuid4().hex[:8]}"
        self("volume", "create", name)
        try:
            yield name
        finally:
            self("volume", "rm", "--force", name, check=False)

    @contextmanager
    def container_name(self) -> Iterator[str]:
        """A unique container name; the container is removed afterwards."""
        name = f"ftharness-test-{uuid.uuid4().hex[:8]}"
        try:
            yield name
        finally:
            self("rm", "--force", "--time", "0", name, check=False)


def podman_or_skip() -> Podman:
    """podman ready to build and run, or skip with the reason."""
    if os.geteuid() != 0:
        pytest.skip("the image test needs root (podman_setup.sh installs podman with apt)")
    result = subprocess.run(
        [str(SETUP)], capture_output=True, text=True, timeout=SETUP_TIMEOUT, check=False
    )
    if result.returncode == CANNOT_RUN:
        pytest.skip(result.stderr.strip().splitlines()[-1])
    if result.returncode != 0:
        raise AssertionError(f"{SETUP} exited {result.returncode}:\n{result.stderr}")
    return Podman(Path(result.stdout.strip().splitlines()[-1]))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)
