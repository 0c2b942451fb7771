"""The supervisor's exit codes: the one table docs/supervise.md documents.

Codes follow the shell where the shell has a meaning for them (126, 127,
128 + N) and BSD's sysexits.h elsewhere, so that they stay clear of the 1 and
2 that Python programs exit with on an exception or a usage error.
"""

from __future__ import annotations

import enum
import signal


class ExitCode(enum.IntEnum):
    FINISHED = 0
    # Bad arguments or configuration. Retrying cannot help.
    USAGE_ERROR = 64  # EX_USAGE
    # A checkpoint exists but cannot be restored into this model (another
    # architecture, another format). Retrying cannot help; nothing is deleted.
    INCOMPATIBLE_CHECKPOINT = 65  # EX_DATAERR
    # `ftharness verify`: the checkpoint is damaged, or there is none to verify.
    # (65, EX_DATAERR, would fit the damage but means "incompatible" above.)
    CHECKPOINT_DAMAGED = 66  # EX_NOINPUT: no intact input to restore from
    # The restart budget is spent: the worker kept failing without progress.
    GAVE_UP = 70  # EX_SOFTWARE
    # The backup directory cannot be created or written.
    BACKUP_DIR_UNUSABLE = 73  # EX_CANTCREAT
    # Another run (supervisor or worker) holds the backup directory's lock.
    BACKUP_DIR_LOCKED = 75  # EX_TEMPFAIL: retry once the other run is gone
    # A peer of a multi-worker group was lost (killed, its node gone, the group
    # never re-formed): relaunch with the group, not counted as a crash.
    PEER_LOST = 76  # EX_PROTOCOL: remote error in protocol
    # Another worker of the group was told to stop; this worker saved the
    # group's final checkpoint with it. Relaunch at once: not a crash.
    PEER_STOPPED = 79
    # As shells do: the command exists but cannot be executed ...
    CANNOT_EXECUTE = 126
    # ... or does not exist.
    COMMAND_NOT_FOUND = 127
    # 128 + signal number: stopped by that signal after the final checkpoint.
    HANGUP = 128 + signal.SIGHUP
    INTERRUPTED = 128 + signal.SIGINT
    PREEMPTED = 128 + signal.SIGTERM


# Worker exit codes the supervisor never retries unless told otherwise.
DEFAULT_FATAL_EXIT_CODES: frozenset[int] = frozenset(
    {
        ExitCode.USAGE_ERROR,
        ExitCode.INCOMPATIBLE_CHECKPOINT,
        ExitCode.BACKUP_DIR_UNUSABLE,
    }
)


def exit_code_for_signal(signum: int) -> int:
    """The code a process reports after stopping cleanly on `signum`."""
    return 128 + signum
