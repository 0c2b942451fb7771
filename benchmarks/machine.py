"""The facts a result depends on: machine, disk, versions, date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import psutil

from ftharness.checkpoint import checksum

REPO = Path(__file__).resolve().parent.parent


def describe(work_dir: Path, python: str) -> dict[str, str]:
    """Machine, disk and versions as label -> text, in display order."""
    memory = psutil.virtual_memory().total
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": f"{_cpu_model()}, {os.cpu_count()} cores (shared with other jobs)",
        "memory": f"{memory / 2**30:.1f} GiB",
        "disk": _disk(work_dir),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": _versions(python),
        "ftharness": _git_sha(),
        "CRC-32": f"{checksum.IMPLEMENTATION}"
        + (" (ISA-L)" if checksum.IMPLEMENTATION == "isal" else " (isal not installed)"),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _disk(work_dir: Path) -> str:
    """The device and file system holding `work_dir`, with its size."""
    best = None
    resolved = str(work_dir.resolve())
    for part in psutil.disk_partitions(all=False):
        prefix = part.mountpoint.rstrip("/") + "/"
        if (resolved + "/").startswith(prefix) and (
            best is None or len(part.mountpoint) > len(best.mountpoint)
        ):
            best = part
    usage = psutil.disk_usage(resolved)
    if best is None:
        return f"{resolved}: {usage.total / 1e9:.0f} GB"
    name = Path(best.device).name
    rotational = Path(f"/sys/block/{name}/queue/rotational")
    kind = ""
    if rotational.exists():
        kind = ", rotational" if rotational.read_text().strip() == "1" else ", non-rotational"
    return (
        f"{best.device} ({best.fstype}{kind}, {usage.total / 1e9:.0f} GB) "
        f"mounted at {best.mountpoint}; work dir {resolved}"
    )


def _versions(python: str) -> str:
    # Asked of the interpreter that runs the workers, without importing
    # TensorFlow into this process.
    code = """
import importlib.metadata as m
def version(*names):
    for name in names:
        try:
            return f"{name} {m.version(name)}"
        except m.PackageNotFoundError:
            pass
    return f"{names[0]} not installed"
print(", ".join([version("tensorflow", "tensorflow-cpu"), version("keras"), version("numpy"),
                 version("h5py"), version("isal"), version("psutil")]))
"""
    try:
        return subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as error:
        return f"unknown ({error})"


def _git_sha() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (subprocess.SubprocessError, OSError):
        return "unknown"
    return f"{sha} + uncommitted changes" if dirty else sha


if __name__ == "__main__":
    for key, value in describe(Path.cwd(), sys.executable).items():
        print(f"{key}: {value}")


def load() -> str:
    """The 1, 5 and 15 minute load averages (other jobs' share of the machine)."""
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())
