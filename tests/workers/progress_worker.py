"""A worker that commits one checkpoint per attempt, then crashes until attempt N.

argv: FINISH_AT_ATTEMPT. Uses the worker protocol without any framework.
"""

from __future__ import annotations

import sys

from ftharness.worker import WorkerSession

session = WorkerSession.open(backup_dir=None)
attempt = session.env.attempt
session.commit(step=attempt * 10, epoch=0, batch=attempt, files={"data.bin": [b"x" * attempt]})
sys.exit(0 if attempt >= int(sys.argv[1]) else 1)
