"""`ls`, `verify`, `status` and `gc` on a backup in object storage (moto's S3)."""

from __future__ import annotations

import json
import subprocess

from support import BASE_ENV, PYTHON, WORKERS, ftharness_command

from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode


def test_inspection_commands_read_and_collect_a_remote_backup(s3_emulator, supervise, tmp_path):
    url = s3_emulator.url(f"inspect-{tmp_path.name}")
    env = {"FTHARNESS_STORAGE_OPTIONS": json.dumps(s3_emulator.storage_options)}
    # Three sessions, each ending with its newest step uploaded (the uploader
    # skips intermediate steps when training outpaces it).
    for steps in (2, 3, 4):
        run = supervise(
            ["--backup-dir", url, "--local-dir", str(tmp_path / "local"), "--keep", "3", "--",
             PYTHON, str(WORKERS / "bulk_worker.py"), str(steps), "1", "0.01",
             str(tmp_path / "progress")],
            name=f"session-{steps}", env=env,
        )  # fmt: skip
        assert run.wait(120) == ExitCode.FINISHED

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ftharness_command(*args),
            capture_output=True,
            text=True,
            env={**BASE_ENV, **env},
            timeout=120,
        )

    listing = json.loads(cli("ls", url, "--json").stdout)
    assert [entry["step"] for entry in listing] == [4, 3, 2]
    assert cli("verify", url).returncode == 0

    story = json.loads(cli("status", url, "--json").stdout)
    assert [attempt["outcome"] for attempt in story["attempts"]] == ["finished"] * 3

    remote = RemoteCheckpointStore(url, s3_emulator.storage_options)
    newest = remote.latest()
    size = remote.fs.size(f"{newest.path}/arrays.bin")
    remote.fs.pipe_file(f"{newest.path}/arrays.bin", b"\0" * size)  # bit rot, same size
    damaged = cli("verify", url)
    assert damaged.returncode == ExitCode.CHECKPOINT_DAMAGED
    assert "arrays.bin fails its checksum" in damaged.stdout + damaged.stderr

    dry = cli("gc", url, "--keep", "1", "--dry-run")
    assert dry.returncode == 0 and "would delete ckpt-000000000002" in dry.stdout
    assert [ref.step for ref in remote.list_committed()] == [2, 3, 4]
    assert cli("gc", url, "--keep", "1").returncode == 0
    # The newest is damaged: step 3 is where a restore falls back to, so gc
    # keeps it whatever --keep says (Trust item 2); step 2 goes.
    assert [ref.step for ref in remote.list_committed()] == [3, 4]
    assert remote.verify(remote.list_committed()[0]) == []
