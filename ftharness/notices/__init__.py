"""Cloud preemption notices: ask the GCE or AWS metadata server whether the
machine is about to be taken away.

A SIGTERM gives the worker the grace period to write a final checkpoint; a
cloud notice can come earlier (AWS announces spot interruptions two minutes
ahead, GCE sets `instance/maintenance-event` before host maintenance), so the
supervisor polls for one and asks the worker to checkpoint soon while it keeps
training.

Modules: `notice` (the data), `http` (shared HTTP details and the source base
class), `gce` and `aws` (one per cloud), `watcher` (selection, the thread).

`NoticeWatcher` polls in a daemon thread and calls `on_notice` once per
notice; `poll_once` makes one synchronous check. Polling failures never raise:
the metadata server is a hint, not a dependency, and a job must not die
because a hint is unavailable. Each source logs a given kind of failure once
(to the "ftharness.notices" logger), not on every poll.

Only the standard library is used (urllib), with short timeouts.

Example::

    config = NoticeConfig(kind="auto")
    watcher = NoticeWatcher(config, on_notice=lambda notice: wake_pipe.write(b"n"))
    watcher.start()
    ...
    watcher.stop()
"""

from __future__ import annotations

from ftharness.notices.aws import AwsImdsSource
from ftharness.notices.gce import GceMetadataSource
from ftharness.notices.notice import (
    AWS_DEFAULT_BASE_URL,
    GCE_DEFAULT_BASE_URL,
    NOTICE_KINDS,
    NoticeConfig,
    PreemptionNotice,
)
from ftharness.notices.watcher import NoticeWatcher, poll_once

__all__ = [
    "AWS_DEFAULT_BASE_URL",
    "GCE_DEFAULT_BASE_URL",
    "NOTICE_KINDS",
    "AwsImdsSource",
    "GceMetadataSource",
    "NoticeConfig",
    "NoticeWatcher",
    "PreemptionNotice",
    "poll_once",
]
