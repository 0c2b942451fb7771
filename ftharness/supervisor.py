"""The supervisor's lifecycle: one flat loop over explicit states.

States (`SupervisorState`), one step method each:
    LAUNCHING   -> start attempt N of the worker (`_launch`), then
    RUNNING     -> forward signals and notices, watch for committed checkpoints,
                   until the worker exits (`_supervise_attempt`); the outcome is
                   turned into Restart or Exit by `policy.decide`, then
    BACKING_OFF -> after a crash, wait before the next attempt (LAUNCHING again)
                   unless a stop signal comes (`_back_off`),
    FINISHING   -> the last upload, made from this one place, then the exit code;
                   or, when the command exited 0 and the worker left the
                   delete-on-success marker, the backup's removal instead
                   (locally and remotely, `_remove_backup`).

The grace period is turned into times once, in `policy.StopDeadline`, when the
stop signal arrives; the worker's kill and the final upload both read it.
PREPARING (the directory lock, the remote's lease and start-up fetch) happens
in `cli.run_supervise` before the Supervisor exists.

In a multi-worker group (docs/supervise.md, "Multi-worker groups") only the
chief's supervisor has a replicator. Every other one has a `reader` of the
backup URL instead: it fetches the newest checkpoint before each relaunch,
and when it is stopped it waits (by the same deadline) until the backup
holds its worker's final step, uploaded by the chief's supervisor.

Over 400 lines: most of it is the structured log lines (each event with its
`extra=` facts for JSON logs); the loop and the steps are short.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from dataclasses import dataclass

from ftharness.checkpoint.layout import DELETE_ON_SUCCESS_MARKER
from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.lock import DirectoryLock
from ftharness.checkpoint.reader import BackupReader
from ftharness.checkpoint.replicator import Replicator
from ftharness.config import SupervisorConfig, WorkerEnvironment, worker_environ
from ftharness.events import ObserverGroup, RunRecorder, commits_since, newest_commit
from ftharness.exitcodes import ExitCode, exit_code_for_signal
from ftharness.group import worker_tf_config
from ftharness.metrics import NullMetrics, SupervisorMetrics
from ftharness.notices import NoticeWatcher, PreemptionNotice
from ftharness.policy import (
    Exit,
    Outcome,
    Restart,
    RestartBudget,
    StopDeadline,
    classify,
    decide,
)
from ftharness.process import (
    CommandNotExecutable,
    CommandNotFound,
    ExitStatus,
    SignalInbox,
    become_subreaper,
    kill_descendants,
    reap_children,
    signal_group,
    spawn_in_new_group,
)
from ftharness.redact import describe_error, redact_url

log = logging.getLogger("ftharness.supervisor")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
# How long the end of a run waits for the event records to reach the remote store.
RECORDS_FLUSH_SECONDS = 10.0


class SupervisorState(str, enum.Enum):
    LAUNCHING = "launching"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    FINISHING = "finishing"


@dataclass
class Attempt:
    """One running attempt of the worker: what `_supervise_attempt` keeps track of."""

    number: int
    pid: int
    started: float
    step_before: int | None  # the newest committed step when it was launched
    stop_signal: int | None = None  # the stop signal we forwarded, if any
    stop_started: float | None = None  # time.monotonic() when it came
    deadline: StopDeadline | None = None  # set with the stop signal
    killed: bool = False  # the grace budget ran out and we sent SIGKILL


@dataclass(frozen=True)
class AttemptResult:
    status: ExitStatus
    stop_signal: int | None  # the stop signal we forwarded, if any
    duration: float
    stop_duration: float  # from forwarding the stop signal to the exit
    deadline: StopDeadline | None  # the deadline the stop signal set


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    attempts: int
    reason: str


class Supervisor:
    """Runs the worker command until it finishes, is stopped, or gives up.

    Example::

        config = SupervisorConfig(command=("python", "train.py"), backup_url="backups",
                                  local_dir=Path("backups"), run_id="r1")
        result = Supervisor(config, lock).run()
        sys.exit(result.exit_code)
    """

    def __init__(
        self,
        config: SupervisorConfig,
        lock: DirectoryLock,
        replicator: Replicator | None = None,
        metrics: SupervisorMetrics | NullMetrics | None = None,
        reader: BackupReader | None = None,
    ) -> None:
        """`reader`: a non-chief's read-only view of the backup URL (never with a replicator)."""
        if replicator is not None and reader is not None:
            raise ValueError("a supervisor either writes the backup URL or only reads it")
        self.config = config
        self.lock = lock
        self.replicator = replicator
        self.reader = reader
        self.store = LocalCheckpointStore(config.local_dir)
        self.state = SupervisorState.LAUNCHING
        self._last_seen_step = self.store.latest_step()
        # Told of every attempt: the run's record beside the checkpoints
        # (`ftharness status`) and the metrics (`upload_finished` for uploads).
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.recorder = RunRecorder.beside(
            config.local_dir,
            config.run_id,
            remote=replicator.remote if replicator is not None else None,
            lease=replicator.lease if replicator is not None else None,
        )
        self.observers = ObserverGroup(self.recorder, self.metrics)

    def run(self) -> RunResult:
        inbox = SignalInbox()
        # Notices come into the same inbox as signals, from the watcher thread.
        watcher = NoticeWatcher(self.config.notices, inbox.post)
        watcher.start()
        if self.replicator is not None:
            self.replicator.start(on_uploaded=self.metrics.upload_finished)
        try:
            return self._run(inbox)
        finally:
            watcher.stop()
            if self.replicator is not None:
                self.replicator.stop()
            inbox.close()

    def _run(self, inbox: SignalInbox) -> RunResult:
        become_subreaper()
        budget = RestartBudget(self.config.restart)
        state = SupervisorState.LAUNCHING
        number = 0
        attempt: Attempt | None = None
        result: AttemptResult | None = None  # how the last attempt ended
        decision: Restart | Exit | None = None
        upload_by: StopDeadline | None = None  # None: nothing ran, nothing to upload
        while True:
            self.state = state
            if state is SupervisorState.LAUNCHING:
                number += 1
                launched = self._launch(number)
                if isinstance(launched, Exit):
                    decision, state = launched, SupervisorState.FINISHING
                else:
                    attempt, state = launched, SupervisorState.RUNNING
            elif state is SupervisorState.RUNNING:
                result = self._supervise_attempt(attempt, inbox)
                decision = self._decide(attempt, result, budget)
                if isinstance(decision, Restart):
                    state = SupervisorState.BACKING_OFF
                else:
                    upload_by = result.deadline or StopDeadline.unhurried(time.monotonic())
                    state = SupervisorState.FINISHING
            elif state is SupervisorState.BACKING_OFF:
                stop_signal = self._back_off(decision.delay, inbox)
                if stop_signal is None:
                    state = SupervisorState.LAUNCHING
                else:
                    upload_by = self._stop_deadline(time.monotonic())
                    result = None  # the stop came between attempts
                    decision = Exit(
                        exit_code_for_signal(stop_signal), "stopped in backoff", "stopped"
                    )
                    state = SupervisorState.FINISHING
            else:  # FINISHING: the one place the end of a run touches storage
                if upload_by is not None:
                    if decision.event == "finished" and self._removal_requested():
                        self._remove_backup()
                    else:
                        self._final_upload(upload_by)
                    if decision.event == "stopped" and self.reader is not None:
                        self._await_chief_upload(upload_by)
                    # Before the caller releases the lease: the remote copy
                    # of the records must tell the run's end. Within the
                    # deadline: after a preemption, the machine is going away.
                    left = upload_by.upload_by - time.monotonic()
                    self.recorder.flush(max(0.0, min(RECORDS_FLUSH_SECONDS, left)))
                    self._log_end(decision, number, result)
                return RunResult(decision.code, number, decision.reason)

    def _stop_deadline(self, now: float) -> StopDeadline:
        return StopDeadline.after_stop_signal(
            now, self.config.grace_period, self.config.grace_margin
        )

    # -- the steps -----------------------------------------------------------

    def _launch(self, number: int) -> Attempt | Exit:
        if number > 1:
            self._remove_unfinished_writes()
            if self.reader is not None:
                # The group restores the newest step every worker has: the
                # backup's, perhaps uploaded since the last launch.
                self.reader.fetch()
        self._remove_stale_marker()
        step_before = self.store.latest_step()
        group = self.config.group
        worker = WorkerEnvironment(
            checkpoint_dir=self.config.local_dir.resolve(),
            run_id=self.config.run_id,
            keep=self.config.keep,
            lock_fd=self.lock.make_inheritable(),
            attempt=number,
            log_format=self.config.log_format,
            log_level=self.config.log_level,
            tf_config=worker_tf_config(group, os.environ) if group is not None else None,
            peer_timeout=self.config.peer_timeout if group is not None else None,
            group_timeout=self.config.group_timeout if group is not None else None,
        )
        try:
            pid = spawn_in_new_group(self.config.command, worker_environ(os.environ, worker))
        except CommandNotFound as error:
            log.error("%s", error.strerror, extra={"event": "exec_failed"})
            return Exit(ExitCode.COMMAND_NOT_FOUND, error.strerror, "exec_failed")
        except CommandNotExecutable as error:
            log.error("%s", error.strerror, extra={"event": "exec_failed"})
            return Exit(ExitCode.CANNOT_EXECUTE, error.strerror, "exec_failed")
        self.observers.attempt_launched(number, pid, newest_commit(self.store))
        log.info(
            "launched attempt %d: pid %d: %s",
            number,
            pid,
            " ".join(self.config.command),
            extra={"event": "launch", "attempt": number, "pid": pid},
        )
        return Attempt(number, pid, time.monotonic(), step_before)

    def _supervise_attempt(self, attempt: Attempt, inbox: SignalInbox) -> AttemptResult:
        next_watch = attempt.started
        while True:
            now = time.monotonic()
            if now >= next_watch:
                self._watch_checkpoints()
                next_watch = now + self.config.watch_interval
            wake_at = next_watch
            if attempt.deadline is not None and not attempt.killed:
                wake_at = min(next_watch, attempt.deadline.kill_at)
            for arrived in inbox.wait(wake_at - time.monotonic()):
                if isinstance(arrived, PreemptionNotice):
                    self._on_notice(arrived, attempt)
                elif arrived == signal.SIGCHLD:
                    status = reap_children().get(attempt.pid)
                    if status is not None:
                        return self._attempt_ended(attempt, status)
                elif arrived in STOP_SIGNALS:
                    self._on_stop_signal(arrived, attempt)
                elif arrived == signal.SIGUSR1:
                    log.info(
                        "checkpoint requested: SIGUSR1 forwarded",
                        extra={"event": "checkpoint_requested"},
                    )
                    signal_group(attempt.pid, signal.SIGUSR1)
            if (
                attempt.deadline is not None
                and not attempt.killed
                and time.monotonic() >= attempt.deadline.kill_at
            ):
                log.warning(
                    "grace budget of %.1f s spent; killing the worker's process group",
                    self.config.final_checkpoint_budget,
                    extra={"event": "grace_expired"},
                )
                signal_group(attempt.pid, signal.SIGKILL)
                attempt.killed = True

    def _on_stop_signal(self, signum: int, attempt: Attempt) -> None:
        if attempt.stop_signal is not None:
            log.info(
                "received %s again; %.1f s of the grace budget left",
                signal.Signals(signum).name,
                max(0.0, attempt.deadline.kill_at - time.monotonic()),
                extra={"event": "stop_repeated"},
            )
            return
        self._begin_stop(signum, attempt)
        log.info(
            "received %s: forwarded to the worker; waiting up to %.1f s for its final checkpoint",
            signal.Signals(signum).name,
            self.config.final_checkpoint_budget,
            extra={"event": "stop_requested", "signal": signal.Signals(signum).name},
        )

    def _begin_stop(self, signum: int, attempt: Attempt) -> None:
        """Forward `signum` and start the one stop deadline (docs/supervise.md)."""
        attempt.stop_started = time.monotonic()
        attempt.stop_signal = signum
        attempt.deadline = self._stop_deadline(attempt.stop_started)
        signal_group(attempt.pid, signum)
        self.observers.stop_requested(signum)

    def _on_notice(self, notice: PreemptionNotice, attempt: Attempt | None) -> None:
        """A cloud's preemption notice: logged once, then a checkpoint request.

        In a group the request is a stop: a checkpoint is the whole group's,
        and a worker with peers takes one only at a stop all of them agreed
        on (ftharness/distributed/stop.py), so the notice stops the group
        at a final checkpoint while the machine still runs.
        """
        expected = (
            f"; termination expected in {notice.deadline - time.time():.0f} s"
            if notice.deadline is not None
            else ""
        )
        if attempt is None:
            action = "no worker is running"
        elif self.config.in_group:
            action = "stopping the worker's group at a final checkpoint (SIGTERM forwarded)"
        else:
            action = "asking the worker for a checkpoint now"
        log.warning(
            "preemption notice from %s: %s%s; %s",
            notice.source,
            notice.detail,
            expected,
            action,
            extra={"event": "preemption_notice", "source": notice.source},
        )
        if attempt is None:
            return
        if not self.config.in_group:
            signal_group(attempt.pid, signal.SIGUSR1)
        elif attempt.stop_signal is None:
            self._begin_stop(signal.SIGTERM, attempt)

    def _attempt_ended(self, attempt: Attempt, status: ExitStatus) -> AttemptResult:
        self._clean_up_group(attempt.pid)
        self._watch_checkpoints()
        ended = time.monotonic()
        stopped = attempt.stop_signal is not None
        return AttemptResult(
            status,
            attempt.stop_signal,
            ended - attempt.started,
            ended - attempt.stop_started if stopped else 0.0,
            attempt.deadline,
        )

    def _decide(
        self, attempt: Attempt, result: AttemptResult, budget: RestartBudget
    ) -> Restart | Exit:
        self._log_exit(attempt.number, attempt.pid, result)
        outcome = classify(
            result.status,
            stop_requested=result.stop_signal is not None,
            fatal_exit_codes=self.config.restart.fatal_exit_codes,
            in_group=self.config.in_group,
        )
        self.observers.attempt_ended(
            result.status,
            outcome,
            self.store.latest_step(),
            result.stop_duration if result.stop_signal is not None else None,
        )
        made_progress = self.store.latest_step() != attempt.step_before
        verdict = None
        if outcome is Outcome.CRASHED:
            verdict = budget.after_crash(made_progress=made_progress)
        elif outcome is Outcome.PEER_LOST:
            verdict = budget.after_peer_lost(made_progress=made_progress)
        elif made_progress:
            budget.after_progress()
        decision = decide(outcome, result.status, result.stop_signal, verdict)
        if isinstance(decision, Restart):
            self._log_restart(decision, made_progress)
        return decision

    def _log_restart(self, decision: Restart, made_progress: bool) -> None:
        facts = {
            "event": "restart_scheduled",
            "cause": decision.cause,
            "delay": round(decision.delay, 3),
            "restarts_left": decision.restarts_left,
            "made_progress": made_progress,
        }
        if decision.cause == "peer_stopped":
            log.info("peer stopped: relaunching at once (not counted as a crash)", extra=facts)
        elif decision.cause == "peer_lost":
            log.warning(
                "peer lost: relaunching in %.1f s to re-form the group (not counted as a "
                "crash), %d/%d peer losses without a new checkpoint left",
                decision.delay,
                decision.restarts_left,
                decision.max_restarts,
                extra=facts,
            )
        else:
            log.warning(
                "restarting in %.1f s, %d/%d restarts left%s",
                decision.delay,
                decision.restarts_left,
                decision.max_restarts,
                " (the attempt made progress: backoff reset)" if made_progress else "",
                extra=facts,
            )

    def _back_off(self, seconds: float, inbox: SignalInbox) -> int | None:
        """Wait, but return early with the stop signal if one arrives."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            for arrived in inbox.wait(remaining):
                if isinstance(arrived, PreemptionNotice):
                    self._on_notice(arrived, None)
                elif arrived in STOP_SIGNALS:
                    return arrived
                elif arrived == signal.SIGCHLD:
                    reap_children()
        return None

    def _remove_stale_marker(self) -> None:
        # The marker speaks for the attempt that wrote it: one that crashed
        # after writing it must not have the backup removed for the next.
        (self.config.local_dir / DELETE_ON_SUCCESS_MARKER).unlink(missing_ok=True)

    def _removal_requested(self) -> bool:
        return (self.config.local_dir / DELETE_ON_SUCCESS_MARKER).is_file()

    def _remove_backup(self) -> None:
        """The job succeeded and asked for it: remove the backup, remote first.

        Remotely, only with the lease (checked before each deletion); if the
        remote removal fails or the lease is lost, the local backup stays too:
        the job can be run again and resumes at its end. The event records
        stay in both places.
        """
        remote: list[str] = []
        if self.replicator is not None:
            try:
                remote = self.replicator.remove_backup()
            except Exception as error:  # lease lost, store errors: remove nothing more
                log.error(
                    "the job finished, but its backup in %s could not be removed (%s); "
                    "it is kept, and so is the local one",
                    redact_url(self.config.backup_url),
                    describe_error(error),
                    extra={"event": "backup_removal_failed"},
                )
                return
        local = self.store.remove_backup()
        where = str(self.config.local_dir)
        if self.replicator is not None:
            where += f" and {self.replicator.remote.url}"
        log.info(
            "job finished: backup removed from %s (%d local and %d remote files and "
            "checkpoints; event records kept)",
            where,
            len(local),
            len(remote),
            extra={
                "event": "backup_removed",
                "local": len(local),
                "remote": len(remote),
            },
        )

    def _await_chief_upload(self, deadline: StopDeadline) -> None:
        """Stopped, not the chief: wait until the backup holds our newest step."""
        step = self.store.latest_step()
        if step is not None:
            self.reader.wait_for_step(step, until=deadline.upload_by)

    def _remove_unfinished_writes(self) -> None:
        # The worker is gone and we hold the lock: a `.tmp-` directory is a
        # checkpoint write it never finished. It was never visible; drop it.
        # The store logs what it removed.
        self.store.remove_stale_temporaries()

    def _clean_up_group(self, pid: int) -> None:
        # What the worker left running belongs to a dead attempt; it must not
        # write into the checkpoint directory beside the next one.
        signal_group(pid, signal.SIGKILL)
        leftovers = kill_descendants()
        if leftovers:
            log.warning(
                "killed %d leftover process(es) of the worker: %s",
                len(leftovers),
                leftovers,
                extra={"event": "leftovers_killed"},
            )
        reap_children()

    def _watch_checkpoints(self) -> None:
        self.observers.heartbeat()
        step = self.store.latest_step()
        if step is not None and step != self._last_seen_step:
            # The worker logs its own commit; ours is for JSON logs and metrics.
            log.debug(
                "checkpoint committed at step %d", step, extra={"event": "checkpoint", "step": step}
            )
            self.observers.checkpoints_committed(commits_since(self.store, self._last_seen_step))
            self._last_seen_step = step
            if self.replicator is not None:
                self.replicator.notify()

    def _final_upload(self, deadline: StopDeadline) -> None:
        """Push the newest local checkpoint to the remote store before we exit."""
        if self.replicator is None:
            return
        upload_by = deadline.upload_by
        step = self.store.latest_step()
        started = time.monotonic()
        log.info(
            "uploading the newest checkpoint (step %s); %.1f s of budget left",
            step,
            upload_by - started,
            extra={"event": "final_upload", "step": step},
        )
        if self.replicator.flush(upload_by):
            log.info(
                "final upload done in %.1f s: step %s is in %s",
                time.monotonic() - started,
                step,
                redact_url(self.config.backup_url),
                extra={"event": "final_upload_done", "step": step},
            )
        else:
            log.error(
                "final upload of step %s did not finish in time; the remote store has step %s",
                step,
                self.replicator.uploaded_step,
                extra={"event": "final_upload_failed", "step": step},
            )

    def _log_exit(self, attempt: int, pid: int, result: AttemptResult) -> None:
        log.info(
            "attempt %d (pid %d) ended after %.1f s: %s",
            attempt,
            pid,
            result.duration,
            result.status.describe(),
            extra={
                "event": "exit",
                "attempt": attempt,
                "exit_code": result.status.code,
                "signal": result.status.signal,
            },
        )

    def _log_end(self, decision: Exit, number: int, result: AttemptResult | None) -> None:
        """The run's last line, after the final upload."""
        if result is None:  # stopped during the backoff
            log.info(
                "%s during backoff; the last committed checkpoint stands",
                signal.Signals(decision.code - 128).name,
                extra={"event": "stopped"},
            )
        elif decision.event == "finished":
            log.info("training finished", extra={"event": "finished", "attempt": number})
        elif decision.event == "stopped":
            self._log_stopped(result)
        else:  # fatal, gave_up
            log.error(decision.reason, extra={"event": decision.event, "attempt": number})

    def _log_stopped(self, result: AttemptResult) -> None:
        step = self.store.latest_step()
        preempted_cleanly = result.status.signal is None and result.status.code == (
            exit_code_for_signal(result.stop_signal)
        )
        if preempted_cleanly:
            log.info(
                "final checkpoint in %.1f s, committed at step %s; stopped",
                result.stop_duration,
                step,
                extra={"event": "stopped", "step": step, "seconds": round(result.stop_duration, 3)},
            )
        else:
            log.warning(
                "the worker ended with %s instead of writing a final checkpoint; the last "
                "committed checkpoint is at step %s",
                result.status.describe(),
                step,
                extra={"event": "stopped", "step": step},
            )
