"""Logging on stderr, as text for people or JSON lines for machines.

Events carry their facts as `extra=` fields (event, attempt, pid, step, ...),
which the JSON format emits as keys and the text format leaves in the message.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from ftharness.untrusted import shown

_STANDARD_ATTRIBUTES = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# The choices of --log-format and --log-level, for the supervisor and its worker alike.
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s ftharness %(levelname)s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger("ftharness")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def print_error(message: str) -> None:
    """The one way a command reports a failure on stderr: one line, prefixed.

    Escaped, because a message may quote untrusted text (a store's error, a
    name read from a checkpoint): a newline or an escape sequence in it must
    not reach the terminal.
    """
    print(f"ftharness: error: {shown(message, limit=1000)}", file=sys.stderr, flush=True)
