"""The `ftharness` command line: arguments -> config -> run -> exit code.

This is the one place where errors become exit codes (see `exitcodes`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from ftharness.checkpoint.lease import LeaseHeldError
from ftharness.checkpoint.lock import DirectoryLockedError
from ftharness.config import (
    DEFAULT_GROUP_TIMEOUT,
    DEFAULT_KEEP,
    DEFAULT_PEER_TIMEOUT,
    ENV_PEER_PORT,
    ENV_WORKER_COUNT,
    MIN_GROUP_DURATION,
    BackupLocation,
    RestartPolicyConfig,
    SupervisorConfig,
    default_local_dir,
    parse_duration,
    parse_storage_options,
)
from ftharness.exitcodes import DEFAULT_FATAL_EXIT_CODES, ExitCode
from ftharness.group import GroupConfigError, GroupPlace, place_from_environ
from ftharness.inspect import commands as inspect_commands
from ftharness.logs import LOG_FORMATS, LOG_LEVELS, configure_logging, print_error
from ftharness.metrics import (
    MetricsUnavailable,
    NullMetrics,
    SupervisorMetrics,
    start_metrics,
)
from ftharness.notices import (
    AWS_DEFAULT_BASE_URL,
    GCE_DEFAULT_BASE_URL,
    NOTICE_KINDS,
    NoticeConfig,
)
from ftharness.redact import redact_url
from ftharness.startup import prepare_local_dir, prepare_reader, prepare_remote
from ftharness.supervisor import Supervisor

log = logging.getLogger("ftharness.cli")


class UsageError(Exception):
    """Bad arguments or configuration: exit 64 with a one-line message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, our exit code, not argparse's 2
        raise UsageError(message)


def _exit_codes(text: str) -> frozenset[int]:
    try:
        codes = frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of exit codes: {text!r}"
        ) from None
    if any(not 0 < code < 256 for code in codes):
        raise argparse.ArgumentTypeError(f"exit codes must be in 1..255: {text!r}")
    return codes


def _seconds(text: str, *, positive: bool = False) -> float:
    """argparse type of every duration option: finite, 0 (or >0) .. a day."""
    try:
        return parse_duration(text, name="the value", allow_minimum=not positive)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


SECONDS = _seconds
POSITIVE_SECONDS = functools.partial(_seconds, positive=True)


def _group_seconds(text: str) -> float:
    """The coordination service's timeouts: TensorFlow takes milliseconds."""
    try:
        return parse_duration(text, name="the value", minimum=MIN_GROUP_DURATION)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _one_of(choices: Sequence[str]):
    """A type that checks the choice itself: argparse skips `choices` for defaults,
    so a value from the environment (FTHARNESS_LOG_LEVEL=TRACE) would pass."""

    def check(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {text!r} (choose from {', '.join(choices)})"
            )
        return text

    return check


class _EnvOptions:
    """Adds options whose default comes from FTHARNESS_<OPTION>, then the built-in.

    argparse passes a string default through the option's type, so a bad
    value in the environment is a usage error like a bad flag.
    """

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def __call__(self, flag, kind, default, metavar, help_text, **extra) -> None:
        variable = "FTHARNESS_" + flag.removeprefix("--").replace("-", "_").upper()
        shown = "" if default is None else f"; default: {default}"
        if "choices" in extra and kind is str:
            kind = _one_of(extra["choices"])
        self.parser.add_argument(
            flag,
            type=kind,
            # An empty variable counts as unset, as in most tools.
            default=os.environ.get(variable) or default,
            metavar=metavar,
            help=f"{help_text} ({variable}{shown})",
            **extra,
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ftharness",
        description="Fault-tolerance harness for training on preemptible machines.",
    )
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", parser_class=_Parser)
    supervise = commands.add_parser(
        "supervise",
        help="run a training command, checkpoint on SIGTERM, restart on crashes",
        description="Run CMD as the training worker: forward stop signals so it writes a final "
        "checkpoint, restart it after crashes, resume from the last committed checkpoint. "
        "Every option can also be set as FTHARNESS_<OPTION> (e.g. FTHARNESS_BACKUP_DIR).",
        usage="ftharness supervise [options] -- CMD [ARG ...]",
    )
    option = _EnvOptions(supervise)
    option(
        "--backup-dir",
        str,
        None,
        "URL",
        "where checkpoints are kept: a local path or an fsspec URL (gs://, s3://, file://)",
    )
    option(
        "--local-dir",
        str,
        None,
        "PATH",
        "local checkpoint directory (default: the backup dir when local, else a cache dir)",
    )
    supervise.add_argument(
        "--storage-option", action="append", default=[], metavar="KEY=VALUE",
        help="an fsspec storage option of the backup URL (endpoint_url, token, anon, ...); "
        "repeatable; also FTHARNESS_STORAGE_OPTIONS as a JSON object",
    )  # fmt: skip
    option("--keep", int, DEFAULT_KEEP, "N", "committed checkpoints to keep")
    option(
        "--grace-period",
        POSITIVE_SECONDS,
        30,
        "SECONDS",
        "time between SIGTERM and SIGKILL from the platform (Kubernetes' "
        "terminationGracePeriodSeconds, docker stop's timeout)",
    )
    option(
        "--grace-margin",
        SECONDS,
        5,
        "SECONDS",
        "kept back from the grace period for the final upload and exit",
    )
    option("--max-restarts", int, 5, "N", "crashes in a row without progress before giving up")
    option("--backoff-initial", SECONDS, 1.0, "SECONDS", "delay before the first restart")
    option("--backoff-max", SECONDS, 60.0, "SECONDS", "longest delay between restarts")
    option(
        "--fatal-exit-codes",
        _exit_codes,
        ",".join(str(int(code)) for code in sorted(DEFAULT_FATAL_EXIT_CODES)),
        "LIST",
        "worker exit codes never retried",
    )
    option(
        "--lease-ttl",
        POSITIVE_SECONDS,
        60,
        "SECONDS",
        "lifetime of the remote lease, renewed every third of it",
    )
    option(
        "--lease-wait",
        SECONDS,
        90,
        "SECONDS",
        "how long to wait for another run's lease to expire before exiting 75",
    )
    option(
        "--peer-host-pattern",
        str,
        None,
        "PATTERN",
        "multi-worker: build TF_CONFIG from JOB_COMPLETION_INDEX (Indexed Job, JobSet) with "
        "this host name of every worker, {index} in it (e.g. train-{index}.train); "
        "TF_CONFIG, when set, wins",
    )
    option("--peer-port", int, None, "PORT", "multi-worker: the port every worker listens on")
    option("--worker-count", int, None, "N", "multi-worker: how many workers the group has")
    option(
        "--peer-timeout",
        _group_seconds,
        DEFAULT_PEER_TIMEOUT,
        "SECONDS",
        "multi-worker: a peer silent this long is lost (the coordination service's "
        "heartbeat timeout; bounds how long a lost worker takes to be noticed)",
    )
    option(
        "--group-timeout",
        _group_seconds,
        DEFAULT_GROUP_TIMEOUT,
        "SECONDS",
        "multi-worker: how long a relaunched worker waits for its peers before it exits "
        "PEER_LOST (76)",
    )
    option(
        "--preemption-notice",
        str,
        "none",
        None,
        "poll the cloud's metadata server for preemption notices and ask the worker for a "
        "checkpoint when one comes",
        choices=NOTICE_KINDS,
    )
    option(
        "--notice-poll-interval", POSITIVE_SECONDS, 5.0, "SECONDS", "seconds between metadata polls"
    )
    option("--gce-metadata-url", str, GCE_DEFAULT_BASE_URL, "URL", "GCE metadata server")
    option("--aws-metadata-url", str, AWS_DEFAULT_BASE_URL, "URL", "AWS instance metadata server")
    option("--run-id", str, None, "ID", "names the run in logs and records (default: random)")
    option(
        "--log-format",
        str,
        "text",
        None,
        "events on stderr as text or JSON lines",
        choices=LOG_FORMATS,
    )
    option(
        "--log-level",
        str,
        "INFO",
        None,
        "least severe event logged",
        choices=LOG_LEVELS,
    )
    option(
        "--metrics-port",
        int,
        None,
        "PORT",
        "serve Prometheus metrics over HTTP on this port, 0 for any free one "
        "(needs ftharness[metrics])",
    )
    option("--metrics-address", str, "127.0.0.1", "ADDRESS", "address the metrics server binds")
    option(
        "--metrics-textfile",
        str,
        None,
        "PATH",
        "write the metrics to PATH (*.prom) for node-exporter's textfile collector",
    )
    supervise.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD", help="the training command"
    )
    inspect_commands.add_subcommands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        return _usage_error(str(error))
    except ValueError as error:  # a malformed FTHARNESS_* default
        return _usage_error(str(error))
    if args.subcommand == "supervise":
        return run_supervise(args)
    if args.subcommand in inspect_commands.NAMES:
        return inspect_commands.run(args)
    build_parser().print_help(sys.stderr)
    return ExitCode.USAGE_ERROR


def run_supervise(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        return _usage_error(
            "no command given after --; usage: ftharness supervise [options] -- CMD"
        )
    if not args.backup_dir:
        return _usage_error("--backup-dir (or FTHARNESS_BACKUP_DIR) is required")
    try:
        location = BackupLocation.parse(args.backup_dir)
    except ValueError as error:
        return _usage_error(f"--backup-dir: {error}")
    if args.local_dir:
        local_dir = Path(args.local_dir)
    elif location.is_local:
        local_dir = location.local_path
    else:
        local_dir = default_local_dir(args.backup_dir)
    try:
        storage_options = parse_storage_options(args.storage_option)
    except ValueError as error:
        return _usage_error(str(error))
    try:
        group = place_from_environ(
            os.environ,
            host_pattern=args.peer_host_pattern,
            port=args.peer_port,
            worker_count=args.worker_count,
        )
    except GroupConfigError as error:
        # The variables are the options' own environment forms: name both.
        flag = {ENV_PEER_PORT: "--peer-port", ENV_WORKER_COUNT: "--worker-count"}.get(error.source)
        return _usage_error(f"{flag} / {error}" if flag else str(error))
    try:
        config = SupervisorConfig(
            command=tuple(command),
            backup_url=args.backup_dir,
            local_dir=local_dir,
            run_id=args.run_id or secrets.token_hex(4),
            keep=args.keep,
            grace_period=args.grace_period,
            grace_margin=args.grace_margin,
            restart=RestartPolicyConfig(
                max_restarts=args.max_restarts,
                backoff_initial=args.backoff_initial,
                backoff_max=args.backoff_max,
                fatal_exit_codes=args.fatal_exit_codes,
            ),
            storage_options=storage_options,
            lease_ttl=args.lease_ttl,
            lease_wait=args.lease_wait,
            log_format=args.log_format,
            log_level=args.log_level,
            group=group,
            peer_timeout=args.peer_timeout,
            group_timeout=args.group_timeout,
            notices=NoticeConfig(
                kind=args.preemption_notice,
                poll_interval=args.notice_poll_interval,
                gce_base_url=args.gce_metadata_url,
                aws_base_url=args.aws_metadata_url,
            ),
        )
    except ValueError as error:
        return _usage_error(str(error))

    try:
        lock = prepare_local_dir(config.local_dir, config.run_id)
    except DirectoryLockedError as error:
        log.error("%s", error, extra={"event": "locked"})
        return ExitCode.BACKUP_DIR_LOCKED
    except OSError as error:
        log.error(
            "backup directory %s is not usable: %s",
            config.local_dir,
            error.strerror or error,
            extra={"event": "backup_dir_unusable"},
        )
        return ExitCode.BACKUP_DIR_UNUSABLE
    replicator = None
    reader = None
    metrics: SupervisorMetrics | NullMetrics = NullMetrics()
    try:
        try:
            metrics = start_metrics(args)
        except MetricsUnavailable as error:
            return _usage_error(str(error))
        if group is not None:
            _log_place(group, config)
        if config.replicated:
            try:
                if config.is_chief:
                    replicator = prepare_remote(config)
                else:
                    reader = prepare_reader(config)
            except LeaseHeldError as error:
                log.error("%s", error, extra={"event": "leased"})
                return ExitCode.BACKUP_DIR_LOCKED
            except OSError as error:
                log.error(
                    "backup %s is not usable: %s",
                    redact_url(config.backup_url),
                    error,
                    extra={"event": "backup_dir_unusable"},
                )
                return ExitCode.BACKUP_DIR_UNUSABLE
        result = Supervisor(config, lock, replicator, metrics=metrics, reader=reader).run()
    finally:
        metrics.close()
        if replicator is not None:
            replicator.lease.release()
        lock.release()
    return int(result.exit_code)


def _log_place(group: GroupPlace, config: SupervisorConfig) -> None:
    role = (
        "the chief: it holds the backup's lease and uploads"
        if config.is_chief
        else "not the chief: it only reads the backup"
    )
    log.info(
        "worker %d of %d in the group (%s %d, %s), %s",
        group.id_in_cluster,
        group.worker_count,
        group.task_type,
        group.task_index,
        group.address,
        role,
        extra={
            "event": "group_place",
            "task_type": group.task_type,
            "task_index": group.task_index,
            "worker_count": group.worker_count,
            "chief": config.is_chief,
        },
    )


def _usage_error(message: str) -> int:
    print_error(redact_url(message))
    return ExitCode.USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
