"""The supervisor's lifecycle: prepare, launch, watch, stop or restart.

States (`SupervisorState`):
    PREPARING  -> lock the local checkpoint directory, clean up, then
    RUNNING    -> a worker attempt is running; we forward signals and watch
                  for committed checkpoints, until it exits, then
    BACKING_OFF-> after a crash, wait before the next attempt (RUNNING again),
    STOPPING   -> a stop signal arrived: the worker writes its final
                  checkpoint within the grace budget, or is killed, then
    DONE       -> the result is returned as an exit code.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import time
from dataclasses import dataclass

from ftharness.checkpoint.local import LocalCheckpointStore
from ftharness.checkpoint.lock import DirectoryLock
from ftharness.checkpoint.replicator import Replicator
from ftharness.config import SupervisorConfig, WorkerEnvironment
from ftharness.events import ObserverGroup, RunRecorder, commits_since, newest_commit
from ftharness.exitcodes import ExitCode, exit_code_for_signal
from ftharness.metrics import NullMetrics, SupervisorMetrics
from ftharness.notices import NoticeWatcher, PreemptionNotice
from ftharness.policy import Outcome, RestartBudget, classify
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

log = logging.getLogger("ftharness.supervisor")

STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
# Seconds kept back at the end of the grace period to exit before the SIGKILL.
EXIT_RESERVE = 1.0
# How long a finished (or failed) run may spend making its last upload.
FINISHED_UPLOAD_BUDGET = 600.0


class SupervisorState(str, enum.Enum):
    PREPARING = "preparing"
    RUNNING = "running"
    BACKING_OFF = "backing_off"
    STOPPING = "stopping"
    DONE = "done"


@dataclass(frozen=True)
class AttemptResult:
    status: ExitStatus
    stop_signal: int | None  # the stop signal we forwarded, if any
    duration: float
    stop_duration: float  # from forwarding the stop signal to the exit
    stop_started: float | None  # time.monotonic() when the stop signal came


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
    ) -> None:
        self.config = config
        self.lock = lock
        self.replicator = replicator
        self.store = LocalCheckpointStore(config.local_dir)
        self.state = SupervisorState.PREPARING
        self._last_seen_step = self.store.latest_step()
        # Told of every attempt: the run's record beside the checkpoints
        # (`ftharness status`) and the metrics (`upload_finished` for uploads).
        self.metrics = metrics if metrics is not None else NullMetrics()
        self.observers = ObserverGroup(
            RunRecorder.beside(
                config.local_dir,
                config.run_id,
                remote=replicator.remote if replicator is not None else None,
                lease=replicator.lease if replicator is not None else None,
            ),
            self.metrics,
        )

    def run(self) -> RunResult:
        inbox = SignalInbox()
        watcher = NoticeWatcher(self.config.notices, self._on_preemption_notice)
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
            self.state = SupervisorState.DONE

    def _on_preemption_notice(self, notice: PreemptionNotice) -> None:
        """Called from the watcher thread: log, then wake the main loop.

        SIGUSR1 to ourselves is the thread-safe way in: the main loop treats
        it as any "checkpoint now" request and forwards it to the worker.
        """
        expected = (
            f"; termination expected in {notice.deadline - time.time():.0f} s"
            if notice.deadline is not None
            else ""
        )
        log.warning(
            "preemption notice from %s: %s%s; asking the worker for a checkpoint now",
            notice.source,
            notice.detail,
            expected,
            extra={"event": "preemption_notice", "source": notice.source},
        )
        os.kill(os.getpid(), signal.SIGUSR1)

    def _run(self, inbox: SignalInbox) -> RunResult:
        become_subreaper()
        budget = RestartBudget(self.config.restart)
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                self._remove_unfinished_writes()
            step_before = self.store.latest_step()
            try:
                pid = self._launch(attempt)
            except CommandNotFound as error:
                log.error("%s", error.strerror, extra={"event": "exec_failed"})
                return RunResult(ExitCode.COMMAND_NOT_FOUND, attempt, error.strerror)
            except CommandNotExecutable as error:
                log.error("%s", error.strerror, extra={"event": "exec_failed"})
                return RunResult(ExitCode.CANNOT_EXECUTE, attempt, error.strerror)

            self.state = SupervisorState.RUNNING
            result = self._supervise_attempt(pid, inbox)
            self._log_exit(attempt, pid, result)
            outcome = classify(
                result.status,
                stop_requested=result.stop_signal is not None,
                fatal_exit_codes=self.config.restart.fatal_exit_codes,
            )
            self.observers.attempt_ended(
                result.status,
                outcome,
                self.store.latest_step(),
                result.stop_duration if result.stop_signal is not None else None,
            )
            if outcome is Outcome.STOPPED and result.stop_signal is not None:
                self._final_upload(self._upload_deadline(result.stop_started))
                return self._stopped(attempt, result, result.stop_signal)
            if outcome is Outcome.FINISHED:
                self._final_upload(time.monotonic() + FINISHED_UPLOAD_BUDGET)
                log.info("training finished", extra={"event": "finished", "attempt": attempt})
                return RunResult(ExitCode.FINISHED, attempt, "finished")
            if outcome is Outcome.FATAL:
                self._final_upload(time.monotonic() + FINISHED_UPLOAD_BUDGET)
                reason = f"worker exit code {result.status.code} is fatal; not restarting"
                log.error(reason, extra={"event": "fatal", "attempt": attempt})
                return RunResult(result.status.code or 1, attempt, reason)

            made_progress = self.store.latest_step() != step_before
            decision = budget.after_crash(made_progress=made_progress)
            if not decision.restart:
                self._final_upload(time.monotonic() + FINISHED_UPLOAD_BUDGET)
                reason = (
                    f"gave up: {decision.max_restarts} restarts without a new checkpoint all failed"
                )
                log.error(reason, extra={"event": "gave_up", "attempt": attempt})
                return RunResult(ExitCode.GAVE_UP, attempt, reason)
            log.warning(
                "restarting in %.1f s, %d/%d restarts left%s",
                decision.delay,
                decision.restarts_left,
                decision.max_restarts,
                " (the attempt made progress: backoff reset)" if made_progress else "",
                extra={
                    "event": "restart_scheduled",
                    "delay": round(decision.delay, 3),
                    "restarts_left": decision.restarts_left,
                    "made_progress": made_progress,
                },
            )
            self.state = SupervisorState.BACKING_OFF
            stop_signal = self._sleep(decision.delay, inbox)
            if stop_signal is not None:
                self._final_upload(self._upload_deadline(time.monotonic()))
                log.info(
                    "%s during backoff; the last committed checkpoint stands",
                    signal.Signals(stop_signal).name,
                    extra={"event": "stopped"},
                )
                return RunResult(exit_code_for_signal(stop_signal), attempt, "stopped in backoff")

    # -- one attempt ---------------------------------------------------------

    def _launch(self, attempt: int) -> int:
        worker_env = WorkerEnvironment(
            checkpoint_dir=self.config.local_dir.resolve(),
            backup_url=self.config.backup_url,
            run_id=self.config.run_id,
            attempt=attempt,
            keep=self.config.keep,
            stop_budget=self.config.final_checkpoint_budget,
            lock_fd=self.lock.make_inheritable(),
            supervisor_pid=os.getpid(),
        )
        env = {**os.environ, **worker_env.to_environ()}
        pid = spawn_in_new_group(self.config.command, env)
        self.observers.attempt_launched(attempt, pid, newest_commit(self.store))
        log.info(
            "launched attempt %d: pid %d: %s",
            attempt,
            pid,
            " ".join(self.config.command),
            extra={"event": "launch", "attempt": attempt, "pid": pid},
        )
        return pid

    def _supervise_attempt(self, pid: int, inbox: SignalInbox) -> AttemptResult:
        started = time.monotonic()
        stop_signal: int | None = None
        stop_started = 0.0
        deadline: float | None = None
        killed = False
        next_watch = started
        while True:
            now = time.monotonic()
            if now >= next_watch:
                self._watch_checkpoints()
                next_watch = now + self.config.watch_interval
            wake_at = next_watch if deadline is None or killed else min(next_watch, deadline)
            for signum in inbox.wait(wake_at - time.monotonic()):
                if signum == signal.SIGCHLD:
                    status = reap_children().get(pid)
                    if status is not None:
                        self._clean_up_group(pid)
                        self._watch_checkpoints()
                        ended = time.monotonic()
                        return AttemptResult(
                            status,
                            stop_signal,
                            ended - started,
                            ended - stop_started if stop_signal is not None else 0.0,
                            stop_started if stop_signal is not None else None,
                        )
                elif signum in STOP_SIGNALS and stop_signal is None:
                    stop_signal = signum
                    stop_started = time.monotonic()
                    deadline = stop_started + self.config.final_checkpoint_budget
                    self.state = SupervisorState.STOPPING
                    signal_group(pid, signum)
                    self.observers.stop_requested(signum)
                    log.info(
                        "received %s: forwarded to the worker; waiting up to %.1f s for its "
                        "final checkpoint",
                        signal.Signals(signum).name,
                        self.config.final_checkpoint_budget,
                        extra={"event": "stop_requested", "signal": signal.Signals(signum).name},
                    )
                elif signum in STOP_SIGNALS:
                    log.info(
                        "received %s again; %.1f s of the grace budget left",
                        signal.Signals(signum).name,
                        max(0.0, deadline - time.monotonic()),
                        extra={"event": "stop_repeated"},
                    )
                elif signum == signal.SIGUSR1:
                    log.info(
                        "checkpoint requested: SIGUSR1 forwarded",
                        extra={"event": "checkpoint_requested"},
                    )
                    signal_group(pid, signal.SIGUSR1)
            if deadline is not None and not killed and time.monotonic() >= deadline:
                log.warning(
                    "grace budget of %.1f s spent; killing the worker's process group",
                    self.config.final_checkpoint_budget,
                    extra={"event": "grace_expired"},
                )
                signal_group(pid, signal.SIGKILL)
                killed = True

    def _remove_unfinished_writes(self) -> None:
        # The worker is gone and we hold the lock: a `.tmp-` directory is a
        # checkpoint write it never finished. It was never visible; drop it.
        removed = self.store.remove_stale_temporaries()
        if removed:
            log.info(
                "removed %d unfinished checkpoint write(s): %s",
                len(removed),
                ", ".join(removed),
                extra={"event": "stale_removed"},
            )

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
            log.info(
                "checkpoint committed at step %d", step, extra={"event": "checkpoint", "step": step}
            )
            self.observers.checkpoints_committed(commits_since(self.store, self._last_seen_step))
            self._last_seen_step = step
            if self.replicator is not None:
                self.replicator.notify()

    def _upload_deadline(self, stop_started: float | None) -> float:
        """The platform SIGKILLs us grace-period after its signal; finish before."""
        started = stop_started if stop_started is not None else time.monotonic()
        return started + self.config.grace_period - EXIT_RESERVE

    def _final_upload(self, deadline: float) -> None:
        """Push the newest local checkpoint to the remote store before we exit."""
        if self.replicator is None:
            return
        step = self.store.latest_step()
        started = time.monotonic()
        log.info(
            "uploading the newest checkpoint (step %s); %.1f s of budget left",
            step,
            deadline - started,
            extra={"event": "final_upload", "step": step},
        )
        if self.replicator.flush(deadline):
            log.info(
                "final upload done in %.1f s: step %s is in %s",
                time.monotonic() - started,
                step,
                self.config.backup_url,
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

    def _stopped(self, attempt: int, result: AttemptResult, stop_signal: int) -> RunResult:
        step = self.store.latest_step()
        preempted_cleanly = (
            result.status.signal is None and result.status.code == exit_code_for_signal(stop_signal)
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
        return RunResult(exit_code_for_signal(stop_signal), attempt, "stopped")

    def _sleep(self, seconds: float, inbox: SignalInbox) -> int | None:
        """Wait, but return early with the stop signal if one arrives."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            for signum in inbox.wait(remaining):
                if signum in STOP_SIGNALS:
                    return signum
                if signum == signal.SIGCHLD:
                    reap_children()
        return None
