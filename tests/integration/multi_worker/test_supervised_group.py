"""Issue 14 end to end: two real TensorFlow workers, each under its own
`ftharness supervise`, with its own local directory and one shared `file://`
backup URL, on 127.0.0.1, as two Pods of an Indexed Job would run.

Each supervisor is given TF_CONFIG (free ports) and FTHARNESS_PEER_TIMEOUT=3;
the worker is tests/workers/multi_worker_loop.py (a custom loop through
`ftharness.tf`), which logs every step it trains and reports digests of its
weights and Adam slots, and the next draw of its own NumPy generator.

Against the same two workers never interrupted (under supervisors too), with
a SIGTERM to the non-chief's supervisor (then a replacement with a new,
empty local directory, as a new Pod), a SIGTERM to the chief's supervisor
(a replacement chief, new directory too), and a SIGKILL of the non-chief's
training process: both workers end bit-identical to the uninterrupted run,
no step is trained twice after a SIGTERM, at most `save_freq` after the
SIGKILL. And the lease: one chief holds it, the non-chief writes nothing to
the backup URL, a second chief is refused (75).

The times measured (from the logs' timestamps) are printed: run with `-s`.
No assertion is timed; every wait is bounded by a generous timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest
from integration.multi_worker.two_workers import free_ports, same_training, tf_config
from support import PYTHON, WORKERS, Supervised, wait_for

from ftharness.checkpoint.remote import RemoteCheckpointStore

pytestmark = pytest.mark.slow

WORKER = WORKERS / "multi_worker_loop.py"
STEPS = 40
SAVE_FREQ = 5
SLEEP = 0.1  # per step: room to signal mid-run
FINISHED, PEER_LOST, PEER_STOPPED, PREEMPTED, LOCKED = 0, 76, 79, 143, 75
# Generous bounds (a loaded 2-core machine; TensorFlow starts in ~3 s per process).
START_TIMEOUT = 240
RUN_TIMEOUT = 420


def entries(log: str) -> list[dict]:
    """The JSON lines of a supervisor's log (its own and its worker's ftharness lines)."""
    found = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a kill
    return found


def at(entry: dict) -> float:
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


class Member:
    """One worker's `ftharness supervise` (one Pod): its own run id and local directory."""

    def __init__(self, group: SupervisedGroup, index: int, name: str, *options: str) -> None:
        self.index = index
        self.name = name
        self.local_dir = group.directory / f"local-{name}"
        self.run = Supervised(
            [
                *("--backup-dir", group.backup_url, "--local-dir", str(self.local_dir)),
                *("--run-id", name, "--log-format", "json", *options),
                "--",
                *(PYTHON, str(WORKER), "--steps", str(STEPS), "--save-freq", str(SAVE_FREQ)),
                *("--sleep", str(group.sleep), "--report", str(group.report_path(index))),
                *("--step-log", str(group.step_log(index))),
            ],
            group.directory / f"{name}.log",
            env={
                "TF_CONFIG": tf_config(group.ports, index),
                "FTHARNESS_PEER_TIMEOUT": "3",
                # A bound, should a test go wrong: a worker waiting for a peer
                # that never comes exits 76 instead of waiting 15 minutes.
                "FTHARNESS_GROUP_TIMEOUT": "180",
            },
        )

    @property
    def log(self) -> str:
        return self.run.log

    def events(self, event: str) -> list[dict]:
        return [entry for entry in entries(self.log) if entry.get("event") == event]

    def lines(self, logger: str) -> list[dict]:
        return [entry for entry in entries(self.log) if entry.get("logger") == logger]

    def worker_pid(self) -> int:
        """The pid of the worker attempt now running (its newest launch)."""
        launches = wait_for(lambda: self.events("launch"), START_TIMEOUT, f"{self.name}'s launch")
        return launches[-1]["pid"]

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        return self.run.wait(timeout)

    def kill(self) -> None:
        """After a failed test: every worker it launched, then the supervisor."""
        for launch in self.events("launch"):
            with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
                os.killpg(launch["pid"], signal.SIGKILL)
        self.run.kill()


class SupervisedGroup:
    """Two workers' supervisors on 127.0.0.1 sharing one `file://` backup URL."""

    def __init__(self, directory: Path, sleep: float = SLEEP) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.backup = directory / "backup"
        self.backup_url = self.backup.as_uri()
        self.ports = free_ports(2)
        self.sleep = sleep
        self.members: list[Member] = []

    def start(self, index: int, name: str, *options: str) -> Member:
        member = Member(self, index, name, *options)
        self.members.append(member)
        return member

    def report_path(self, index: int) -> Path:
        return self.directory / f"report-{index}.json"

    def step_log(self, index: int) -> Path:
        """The steps worker `index` trained, over every attempt and replacement."""
        return self.directory / f"steps-{index}"

    def steps(self, index: int) -> list[int]:
        path = self.step_log(index)
        return [int(line) for line in path.read_text().split()] if path.exists() else []

    def wait_for_step(self, index: int, step: int) -> None:
        wait_for(
            lambda: (self.steps(index) or [0])[-1] >= step,
            START_TIMEOUT,
            f"worker {index} to train step {step}",
        )

    def reports(self) -> dict[int, dict]:
        return {i: json.loads(self.report_path(i).read_text()) for i in (0, 1)}

    def kill_all(self) -> None:
        for member in self.members:
            member.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {m.name}\n{m.log[-4000:]}" for m in self.members)


@pytest.fixture
def group(tmp_path):
    started = SupervisedGroup(tmp_path)
    yield started
    started.kill_all()  # a no-op once every supervisor has exited


def finishes_like(group: SupervisedGroup, reference: dict[int, dict], *members: Member) -> None:
    codes = {member.name: member.wait() for member in members}
    assert set(codes.values()) == {FINISHED}, (codes, group.logs())
    for index, report in group.reports().items():
        assert same_training(reference[index], report) == [], (index, report, reference[index])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, dict]:
    """Both workers uninterrupted, each under its supervisor."""
    group = SupervisedGroup(tmp_path_factory.mktemp("reference"), sleep=0)
    try:
        chief, other = group.start(0, "chief"), group.start(1, "other")
        codes = (chief.wait(), other.wait())
        assert codes == (FINISHED, FINISHED), group.logs()
    finally:
        group.kill_all()
    reports = group.reports()
    # The mirrored state is the same on both workers; their own generators are not.
    assert reports[0]["weights"] == reports[1]["weights"]
    assert reports[0]["optimizer"] == reports[1]["optimizer"]
    assert reports[0]["next_numpy"] != reports[1]["next_numpy"]
    assert group.steps(0) == group.steps(1) == list(range(1, STEPS + 1))
    return reports


def restarts(member: Member) -> list[tuple[str, int | None]]:
    return [(r["cause"], r["restarts_left"]) for r in member.events("restart_scheduled")]


def worker_exits(member: Member) -> list[int | None]:
    return [entry["exit_code"] for entry in member.events("exit")]


def commits(member: Member) -> list[dict]:
    """The worker's own 'checkpoint ... committed (step N)' lines."""
    return [e for e in member.lines("ftharness.tf") if " committed (step " in e["message"]]


def committed_step(entry: dict) -> int:
    return int(entry["message"].rsplit("(step ", 1)[1].rstrip(")"))


def report_stop(what: str, stopped: Member, survivor: Member, final: int) -> None:
    """SIGTERM received -> both final checkpoints committed -> the supervisor's exit."""
    (received,) = stopped.events("stop_requested")
    both = max(at(e) for m in (stopped, survivor) for e in commits(m) if committed_step(e) == final)
    ended = at(entries(stopped.log)[-1])
    print(
        f"\nSIGTERM to the {what}'s supervisor: both committed step {final} "
        f"{both - at(received):.2f} s later; its supervisor exited 143 "
        f"{ended - at(received):.2f} s after the SIGTERM"
    )


def test_sigterm_to_the_non_chiefs_supervisor_and_a_replacement(group, reference):
    chief = group.start(0, "chief")
    other = group.start(1, "other")
    group.wait_for_step(1, 12)
    other.run.process.send_signal(signal.SIGTERM)

    assert other.wait() == PREEMPTED, group.logs()
    # Its worker saved the group's final step and exited 143; it waited for the
    # chief's supervisor to upload that step before exiting.
    assert worker_exits(other) == [PREEMPTED]
    final = committed_step(commits(other)[-1])
    (seen,) = other.events("chief_upload_seen")
    assert seen["step"] >= final, other.log
    assert final in [ref.step for ref in RemoteCheckpointStore(group.backup_url).list_committed()]
    # The chief's worker saved the same step and exited 79: relaunched at once, no crash.
    wait_for(lambda: chief.events("restart_scheduled"), START_TIMEOUT, "the chief's relaunch")
    assert committed_step(commits(chief)[-1]) == final
    assert worker_exits(chief) == [PEER_STOPPED]
    assert restarts(chief) == [("peer_stopped", None)]
    report_stop("non-chief", other, chief, final)

    # A new Pod for index 1: a new, empty local directory, filled from the backup.
    replacement = group.start(1, "replacement")
    finishes_like(group, reference, chief, replacement)
    assert [e["step"] for e in replacement.events("fetched")] == [final]
    assert f"resuming at step {final}" in replacement.log
    assert f"resuming at step {final}" in chief.log
    for index in (0, 1):  # no step trained twice
        assert group.steps(index) == list(range(1, STEPS + 1)), index
    assert restarts(chief) == [("peer_stopped", None)]


def test_sigterm_to_the_chiefs_supervisor_and_a_replacement_chief(group, reference):
    chief = group.start(0, "chief")
    other = group.start(1, "other")
    group.wait_for_step(0, 12)
    chief.run.process.send_signal(signal.SIGTERM)

    assert chief.wait() == PREEMPTED, group.logs()
    assert worker_exits(chief) == [PREEMPTED]
    final = committed_step(commits(chief)[-1])
    assert [e["step"] for e in chief.events("final_upload_done")] == [final], chief.log
    wait_for(lambda: other.events("restart_scheduled"), START_TIMEOUT, "the non-chief's relaunch")
    assert committed_step(commits(other)[-1]) == final
    assert worker_exits(other) == [PEER_STOPPED]
    assert restarts(other) == [("peer_stopped", None)]
    report_stop("chief", chief, other, final)

    # The chief's replacement on a new node: a new local directory, so it
    # must fetch the final step from the backup (and take the lease the
    # stopped chief released).
    replacement = group.start(0, "replacement")
    finishes_like(group, reference, replacement, other)
    assert [e["step"] for e in replacement.events("fetched")] == [final]
    assert f"resuming at step {final}" in replacement.log
    for index in (0, 1):  # no step trained twice
        assert group.steps(index) == list(range(1, STEPS + 1)), index


def test_sigkill_of_the_non_chiefs_worker_relaunches_both_without_the_chiefs_crash_budget(
    group, reference
):
    # A budget of one crash: the killed worker's supervisor spends it; the
    # chief's would give up at its second crash, but a lost peer is none.
    chief = group.start(0, "chief", "--max-restarts", "1")
    other = group.start(1, "other", "--max-restarts", "1")
    group.wait_for_step(1, 12)
    os.kill(other.worker_pid(), signal.SIGKILL)
    killed_at = time.time()  # the clock of the logs' timestamps

    finishes_like(group, reference, chief, other)
    assert other.events("exit")[0]["signal"] == signal.SIGKILL
    assert restarts(other)[0] == ("crash", 0)
    assert worker_exits(chief)[0] == PEER_LOST
    assert restarts(chief)[0][0] == "peer_lost"
    assert "crash" not in [cause for cause, _ in restarts(chief)], chief.log
    # The worker's one line on stderr (the protocol's, not a log record).
    lost = [line for line in chief.log.splitlines() if "peer of the group was lost" in line]
    assert len(lost) == 1 and "exiting 76" in lost[0], chief.log
    assert "Traceback" not in chief.log
    for index in (0, 1):
        steps = group.steps(index)
        redone = len(steps) - len(set(steps))
        assert 0 <= redone <= SAVE_FREQ, (index, steps)
        assert sorted(set(steps)) == list(range(1, STEPS + 1))
    print(
        f"\nSIGKILL of the non-chief's worker: the chief's worker exited 76 "
        f"{at(chief.events('exit')[0]) - killed_at:.2f} s later "
        f"(FTHARNESS_PEER_TIMEOUT=3); steps trained again: "
        f"{len(group.steps(0)) - STEPS} (save_freq {SAVE_FREQ})"
    )


def lease_records(backup: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((backup / ".ftharness").glob("lease-*.json"))]


def test_only_the_chiefs_supervisor_holds_the_lease_and_writes_the_backup(group, reference):
    chief = group.start(0, "chief")
    other = group.start(1, "other")
    group.wait_for_step(1, 8)
    # While the group runs: the lease is the chief's, live.
    records = lease_records(group.backup)
    assert records and {r["run_id"] for r in records} == {"chief"}, records
    assert records[-1]["host"] == socket.gethostname() and not records[-1]["released"]
    # A second chief on the same URL (its own local directory) is refused.
    second = group.start(0, "second-chief", "--lease-wait", "0")
    assert second.wait(START_TIMEOUT) == LOCKED, second.log
    assert second.events("leased") and not second.events("launch")

    finishes_like(group, reference, chief, other)
    # Everything under the backup URL is the chief's: its lease records, its
    # event records; the non-chief wrote nothing there (its records stay in
    # its local directory).
    assert {r["run_id"] for r in lease_records(group.backup)} == {"chief"}
    written = [p.relative_to(group.backup) for p in group.backup.rglob("*") if p.is_file()]
    assert written, "the chief wrote nothing?"
    for path in written:
        assert path.parts[:2] in {(".ftharness", "events")} or path.name.startswith("lease-"), path
        assert "other" not in str(path), path
    events = [p for p in written if p.parts[:2] == (".ftharness", "events")]
    assert events and all(p.name.startswith("chief-") for p in events), events
    assert list((other.local_dir / ".ftharness" / "events").glob("other-*.json"))
    assert not other.events("final_upload") and not other.events("uploaded")
