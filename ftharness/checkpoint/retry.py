"""Retrying store operations against a deadline, and telling I/O errors from corruption.

Only content that was read and found wrong makes a checkpoint corrupt. An
error on the way to the content (a connection reset, EIO, EMFILE, ESTALE, a
permission error) says nothing about the checkpoint: it is retried until the
deadline and then raised as `CheckpointIOError`, and nothing is moved aside
or skipped because of it.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from ftharness.checkpoint.manifest import CheckpointError
from ftharness.redact import describe_error

log = logging.getLogger("ftharness.retry")

T = TypeVar("T")

# Errors that retrying cannot fix, even though they are OSErrors.
_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
# How long a read of a local checkpoint keeps trying through I/O errors: a
# stale NFS handle or a full file table usually clears within seconds.
LOCAL_READ_SECONDS = 3.0


class CheckpointIOError(CheckpointError, OSError):
    """A checkpoint could not be read or written; its content is unknown, not corrupt.

    An OSError, so callers that map OSError to exit 73 (unavailable) do so.
    """

    def __init__(self, location: str, detail: str) -> None:
        super().__init__(errno.EIO, f"{location}: {detail}")
        self.location = location
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.location}: I/O error ({self.detail})"

    def __reduce__(self):
        return (type(self), (self.location, self.detail))


def transient_errors() -> tuple[type[BaseException], ...]:
    """The store and network errors worth a retry.

    s3fs maps S3's errors to OSError; aiohttp's connection errors are
    OSErrors too; gcsfs raises its own HttpError. Programming errors
    (AttributeError, TypeError, ...) are never retried.
    """
    errors: list[type[BaseException]] = [OSError, TimeoutError]
    gcsfs_retry = sys.modules.get("gcsfs.retry")
    if gcsfs_retry is not None:
        errors.append(gcsfs_retry.HttpError)
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        errors.append(aiohttp.ClientError)
    return tuple(errors)


def retry_until(
    deadline: float | None, what: str, operation: Callable[[], T], attempts: int = 8
) -> T:
    """Run `operation`, retrying transient errors with backoff until `deadline`.

    fsspec's backends retry some errors themselves, but not against a
    deadline: the final upload has a grace period to fit in.
    """
    delay = 0.2
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except _NOT_TRANSIENT:
            raise
        except CheckpointError:
            raise
        except transient_errors() as error:
            remaining = None if deadline is None else deadline - time.monotonic()
            if attempt == attempts or (remaining is not None and remaining <= delay):
                raise
            # INFO: a retry that works is routine; one that does not ends in an
            # error that says so, and an inspection command stays at one line.
            log.info("%s failed (%s); retrying in %.1f s", what, describe_error(error), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")


def read_or_io_error(
    location: str, what: str, operation: Callable[[], T], deadline: float | None
) -> T:
    """`retry_until`, then any error left that is not "it is not there" becomes
    a `CheckpointIOError`: the caller must not take it for corruption."""
    try:
        return retry_until(deadline, what, operation)
    except _NOT_TRANSIENT:
        raise
    except CheckpointError:
        raise
    except transient_errors() as error:
        raise CheckpointIOError(location, describe_error(error)) from None
