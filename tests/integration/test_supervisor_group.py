"""The supervisor in a multi-worker group: real `ftharness supervise`, real
subprocesses and signals, a stand-in worker (tests/workers/group_worker.py)
that ends its attempts as a group member would. No TensorFlow: what the
workers do together is tested with the worker side; here, what each
supervisor decides, passes on, and writes (or, for a non-chief, never writes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from metadata_servers import GceHandler, GceState, serve
from support import PYTHON, WORKERS, commit_checkpoint, run_supervisor, wait_for

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.remote import RemoteCheckpointStore
from ftharness.exitcodes import ExitCode

FAST = ["--backoff-initial", "0", "--backoff-max", "0", "--log-format", "json"]
WORKER = [PYTHON, str(WORKERS / "group_worker.py")]


def tf_config(index: int, count: int = 2, **extra) -> str:
    workers = [f"127.0.0.1:{23000 + i}" for i in range(count)]
    return json.dumps(
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}, **extra}
    )


def events(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def named(log: str, event: str) -> list[dict]:
    return [entry for entry in events(log) if entry.get("event") == event]


def reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory below `directory`: its size and modification time."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in [*dirs, *files]:
            path = Path(root, name)
            stat = path.stat()
            found[str(path.relative_to(directory))] = (stat.st_size, stat.st_mtime_ns)
    return found


class Chief:
    """What the chief's supervisor does to the backup URL, done by the test:
    checkpoints committed locally, then uploaded through the real remote store."""

    def __init__(self, tmp_path: Path, backup_url: str) -> None:
        self.local = LocalCheckpointStore(tmp_path / "chief-local")
        self.remote = RemoteCheckpointStore(backup_url)

    def upload(self, step: int) -> None:
        self.remote.upload(self.local, commit_checkpoint(self.local, step))


# -- the policy: a peer's stop or loss is not a crash ------------------------------


def test_peer_stopped_exits_are_relaunched_at_once_without_spending_the_crash_budget(tmp_path):
    # Three PEER_STOPPED exits without any new checkpoint, with a budget of
    # one restart: only relaunches that no budget counts get to the fourth.
    report = tmp_path / "report.jsonl"
    given = tf_config(0, rpc_layer="grpc")
    run = run_supervisor(
        tmp_path,
        [*WORKER, "--codes", "79,79,79,0", "--report", str(report)],
        [*FAST, "--max-restarts", "1"],
        env={"TF_CONFIG": given},
    )
    assert run.returncode == ExitCode.FINISHED, run.log
    assert len(named(run.log, "launch")) == 4
    restarts = named(run.log, "restart_scheduled")
    assert [(r["cause"], r["delay"], r["restarts_left"]) for r in restarts] == [
        ("peer_stopped", 0.0, None)
    ] * 3
    assert [r["message"] for r in restarts] == [
        "peer stopped: relaunching at once (not counted as a crash)"
    ] * 3
    # The TF_CONFIG it was given reaches every attempt unchanged, with the timeouts.
    assert [(r["tf_config"], r["peer_timeout"], r["group_timeout"]) for r in reports(report)] == [
        (given, "10", "900")
    ] * 4


def test_a_lost_peer_is_relaunched_after_a_second_with_a_budget_of_its_own(tmp_path):
    # Budget 2. Crash, two peer losses, crash, peer loss: the crashes alone
    # would be restarted (2 of 2), the losses alone too; the third loss in
    # a row without a new checkpoint is one too many.
    run = run_supervisor(
        tmp_path,
        [*WORKER, "--codes", "1,76,76,1,76"],
        [*FAST, "--max-restarts", "2"],
        env={"TF_CONFIG": tf_config(0)},
    )
    assert run.returncode == ExitCode.GAVE_UP, run.log
    assert len(named(run.log, "launch")) == 5
    restarts = named(run.log, "restart_scheduled")
    assert [(r["cause"], r["restarts_left"]) for r in restarts] == [
        ("crash", 1),
        ("peer_lost", 1),
        ("peer_lost", 0),
        ("crash", 0),
    ]
    assert [r["delay"] for r in restarts if r["cause"] == "peer_lost"] == [1.0, 1.0]
    assert "peer lost: relaunching in 1.0 s" in restarts[1]["message"]
    (gave_up,) = named(run.log, "gave_up")
    assert "the group broke up 3 times in a row without a new checkpoint" in gave_up["message"]


def test_peer_losses_that_each_commit_a_checkpoint_never_give_up(tmp_path):
    run = run_supervisor(
        tmp_path,
        [*WORKER, "--codes", "76,76,76,0", "--commit"],
        [*FAST, "--max-restarts", "1"],
        env={"TF_CONFIG": tf_config(0)},
    )
    assert run.returncode == ExitCode.FINISHED, run.log
    assert [r["cause"] for r in named(run.log, "restart_scheduled")] == ["peer_lost"] * 3


def test_alone_the_peer_codes_are_crashes(tmp_path):
    report = tmp_path / "report.jsonl"
    run = run_supervisor(
        tmp_path,
        [*WORKER, "--codes", "79", "--report", str(report)],
        [*FAST, "--max-restarts", "1"],
        env={"TF_CONFIG": None},
    )
    assert run.returncode == ExitCode.GAVE_UP, run.log
    assert [r["cause"] for r in named(run.log, "restart_scheduled")] == ["crash"]
    # A worker alone is told nothing about a group.
    assert [(r["tf_config"], r["peer_timeout"]) for r in reports(report)] == [(None, None)] * 2


# -- the group's description ------------------------------------------------------


def test_tf_config_is_built_from_the_pod_index_and_the_pattern_for_the_worker(tmp_path):
    report = tmp_path / "report.jsonl"
    run = run_supervisor(
        tmp_path,
        [*WORKER, "--report", str(report)],
        [*FAST, "--local-dir", str(tmp_path / "local"), "--peer-port", "2222",
         "--peer-timeout", "2.5"],
        env={
            "JOB_COMPLETION_INDEX": "1",
            "FTHARNESS_PEER_HOST_PATTERN": "train-{index}.train",
            "FTHARNESS_WORKER_COUNT": "3",
            "FTHARNESS_GROUP_TIMEOUT": "60",
            "TF_CONFIG": None,
        },
    )  # fmt: skip
    assert run.returncode == ExitCode.FINISHED, run.log
    (facts,) = reports(report)
    assert json.loads(facts["tf_config"]) == {
        "cluster": {"worker": ["train-0.train:2222", "train-1.train:2222", "train-2.train:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    assert (facts["peer_timeout"], facts["group_timeout"]) == ("2.5", "60")
    (place,) = named(run.log, "group_place")
    assert (place["task_index"], place["worker_count"], place["chief"]) == (1, 3, False)


# -- who writes the backup URL -----------------------------------------------------


def test_a_non_chief_fetches_from_the_backup_and_never_writes_to_it(tmp_path):
    backup = tmp_path / "backup"
    chief = Chief(tmp_path, f"file://{backup}")
    chief.upload(5)
    before = listing(backup)
    report = tmp_path / "report.jsonl"
    # Attempt 1 commits step 10 locally and loses its peer; attempt 2 commits 20 and finishes.
    run = run_supervisor(
        tmp_path,
        [*WORKER, "--codes", "76,0", "--commit", "--report", str(report)],
        [*FAST, "--backup-dir", f"file://{backup}", "--local-dir", str(tmp_path / "local")],
        env={"TF_CONFIG": tf_config(1)},
    )
    assert run.returncode == ExitCode.FINISHED, run.log
    assert [r["steps"] for r in reports(report)] == [[5], [5, 10]]  # fetched at start
    assert listing(backup) == before  # no lease, no events, no checkpoint: nothing
    assert not named(run.log, "final_upload")
    # Its own records stay beside its own checkpoints.
    assert list((tmp_path / "local" / ".ftharness" / "events").glob("*.json"))


def test_a_non_chief_fetches_from_the_backup_again_before_each_relaunch(tmp_path, supervise):
    # The group restores the newest step every worker has: the backup's. A
    # worker relaunched after PEER_LOST must find what the chief uploaded
    # meanwhile (here step 15, uploaded while attempt 1 still runs).
    backup = tmp_path / "backup"
    chief = Chief(tmp_path, f"file://{backup}")
    chief.upload(5)
    hold = tmp_path / "hold"
    hold.mkdir()
    report = tmp_path / "report.jsonl"
    run = supervise(
        ["--backup-dir", f"file://{backup}", "--local-dir", str(tmp_path / "local"), *FAST,
         "--", *WORKER, "--codes", "76,0", "--hold", str(hold), "--report", str(report)],
        env={"TF_CONFIG": tf_config(1)},
    )  # fmt: skip
    wait_for((hold / "holding").exists, 60, "attempt 1 to wait")
    chief.upload(15)
    (hold / "go").touch()
    assert run.wait(60) == ExitCode.FINISHED, run.log
    assert [r["steps"] for r in reports(report)] == [[5], [5, 15]]


def test_one_chief_holds_the_lease_a_second_is_refused_and_non_chiefs_need_none(
    tmp_path, supervise
):
    backup_url = f"file://{tmp_path / 'backup'}"
    ready = tmp_path / "first"
    ready.mkdir()
    first = supervise(
        ["--backup-dir", backup_url, "--local-dir", str(tmp_path / "a"), *FAST, "--",
         *WORKER, "--until-stopped", str(ready)],
        name="first-chief", env={"TF_CONFIG": tf_config(0)},
    )  # fmt: skip
    wait_for((ready / "ready").exists, 60, "the first chief's worker")
    second = supervise(
        ["--backup-dir", backup_url, "--local-dir", str(tmp_path / "c"), "--lease-wait", "0",
         *FAST, "--", *WORKER],
        name="second-chief", env={"TF_CONFIG": tf_config(0)},
    )  # fmt: skip
    assert second.wait(60) == ExitCode.BACKUP_DIR_LOCKED, second.log
    assert named(second.log, "leased") and not named(second.log, "launch")
    other = supervise(
        ["--backup-dir", backup_url, "--local-dir", str(tmp_path / "d"), "--lease-wait", "0",
         *FAST, "--", *WORKER],
        name="non-chief", env={"TF_CONFIG": tf_config(1)},
    )  # fmt: skip
    assert other.wait(60) == ExitCode.FINISHED, other.log
    # The chief uploads step 10 in the background; the stop comes after it
    # (else only the final step 12 would be uploaded, as the newest).
    backup = RemoteCheckpointStore(backup_url)
    wait_for(lambda: [ref.step for ref in backup.list_committed()] == [10], 60, "step 10's upload")
    first.process.send_signal(signal.SIGTERM)
    assert first.wait(60) == ExitCode.PREEMPTED, first.log
    assert [ref.step for ref in backup.list_committed()] == [10, 12]


# -- a non-chief's stop: the chief uploads, the non-chief waits for it --------------


def start_non_chief(tmp_path: Path, supervise, backup_url: str, *options: str):
    ready = tmp_path / "worker"
    ready.mkdir()
    run = supervise(
        ["--backup-dir", backup_url, "--local-dir", str(tmp_path / "local"), *FAST, *options,
         "--", *WORKER, "--until-stopped", str(ready)],
        env={"TF_CONFIG": tf_config(1)},
    )  # fmt: skip
    wait_for((ready / "ready").exists, 60, "the non-chief's worker")
    return run


def test_a_stopped_non_chief_exits_once_the_chief_uploaded_its_final_step(tmp_path, supervise):
    backup = tmp_path / "backup"
    chief = Chief(tmp_path, f"file://{backup}")
    chief.upload(10)
    run = start_non_chief(tmp_path, supervise, f"file://{backup}", "--grace-period", "120")
    run.process.send_signal(signal.SIGTERM)
    # Its worker committed step 12 and exited 143; the backup has 10 only.
    wait_for(lambda: named(run.log, "chief_upload_wait"), 60, "the wait for the chief")
    assert named(run.log, "chief_upload_wait")[0]["step"] == 12
    assert run.process.poll() is None  # still waiting, 118 s before its deadline
    chief.upload(12)
    assert run.wait(60) == ExitCode.PREEMPTED, run.log
    assert [entry["step"] for entry in named(run.log, "chief_upload_seen")] == [12]
    assert not named(run.log, "chief_upload_missed")
    assert [ref.step for ref in chief.remote.list_committed()] == [10, 12]


def test_a_stopped_non_chief_whose_chief_never_uploads_exits_at_the_deadline(tmp_path, supervise):
    backup = tmp_path / "backup"
    Chief(tmp_path, f"file://{backup}").upload(10)
    before = listing(backup)
    run = start_non_chief(
        tmp_path, supervise, f"file://{backup}", "--grace-period", "8", "--grace-margin", "2"
    )
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(60) == ExitCode.PREEMPTED, run.log
    (missed,) = named(run.log, "chief_upload_missed")
    assert missed["message"] == (
        "stop deadline passed before the backup had step 12 (it has 10); exiting"
    )
    assert listing(backup) == before


# -- a preemption notice in a group: the group's stop, not a checkpoint alone -------


def test_a_preemption_notice_stops_a_group_member_at_a_final_checkpoint(tmp_path, supervise):
    backup_url = f"file://{tmp_path / 'backup'}"
    ready = tmp_path / "worker"
    ready.mkdir()
    with contextlib.contextmanager(serve)(GceHandler, GceState()) as server:
        run = supervise(
            ["--backup-dir", backup_url, "--local-dir", str(tmp_path / "local"), *FAST,
             "--preemption-notice", "gce", "--notice-poll-interval", "0.1",
             "--gce-metadata-url", server.base_url, "--", *WORKER, "--until-stopped", str(ready)],
            env={"TF_CONFIG": tf_config(0)},
        )  # fmt: skip
        wait_for((ready / "ready").exists, 60, "the chief's worker")
        server.state.preempted = "TRUE"
        # The stand-in ends only on a stop signal: a SIGUSR1 would leave it waiting.
        assert run.wait(90) == ExitCode.PREEMPTED, run.log
    (notice,) = named(run.log, "preemption_notice")
    assert "stopping the worker's group at a final checkpoint" in notice["message"]
    assert not named(run.log, "stop_requested")  # no SIGTERM reached the supervisor
    # The worker's final checkpoint (12, after the stop) is the backup's newest.
    assert RemoteCheckpointStore(backup_url).latest().step == 12
