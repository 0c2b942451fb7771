"""Run the spot VM scripts in deploy/ with a stand-in `docker` on PATH.

There is no Docker engine here, so a small executable named `docker` records
each call (its argv, one JSON line per call) and answers `container inspect`
the way Docker would for a container that does not exist, or that is in the
state given by FAKE_DOCKER_STATE ("exited 143", "running 0", ...). Everything
else in the scripts (bash, curl, their logic) runs for real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

FAKE_DOCKER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["container", "inspect"]:
    state = os.environ.get("FAKE_DOCKER_STATE")
    if not state:
        sys.exit("Error: No such container: " + sys.argv[-1])
    print(state)
"""


@dataclass
class ScriptRun:
    returncode: int
    stderr: str
    docker_calls: list[list[str]]


def run_script(name: str, tmp_path: Path, env: dict[str, str]) -> ScriptRun:
    """Run deploy/<name> with bash, the stand-in docker first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    log = tmp_path / "docker-calls.jsonl"
    log.write_text("")
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_DOCKER_LOG": str(log),
        **env,
    }
    result = subprocess.run(
        ["bash", str(REPO / "deploy" / name)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return ScriptRun(result.returncode, result.stderr, calls)


@dataclass
class DockerRun:
    """`docker run` arguments: options (name -> values), image, command."""

    options: dict[str, list[str]] = field(default_factory=dict)
    image: str = ""
    command: list[str] = field(default_factory=list)

    def option(self, name: str) -> str:
        (value,) = self.options[name]  # exactly one
        return value

    def env(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in self.options.get("--env", []))


# The `docker run` options the scripts use. An unknown one fails the parse,
# so this list and the scripts cannot drift apart silently.
VALUE_OPTIONS = {"--name", "--restart", "--stop-timeout", "--network", "--volume", "--env"}
FLAG_OPTIONS = {"--detach"}


def parse_docker_run(argv: list[str]) -> DockerRun:
    if argv[:1] != ["run"]:
        raise ValueError(f"not a docker run: {argv}")
    run = DockerRun()
    arguments = iter(argv[1:])
    for argument in arguments:
        name, has_value, value = argument.partition("=")
        if name in FLAG_OPTIONS:
            run.options.setdefault(name, []).append("true")
        elif name in VALUE_OPTIONS:
            run.options.setdefault(name, []).append(value if has_value else next(arguments))
        elif argument.startswith("-"):
            raise ValueError(f"unknown docker run option {argument}")
        else:
            run.image = argument
            run.command = list(arguments)
    return run
