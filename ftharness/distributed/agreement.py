"""The restore step every worker agrees on: the newest one every worker has.

At start each worker publishes the step of its newest local checkpoint that
verifies (0: none) under `ftharness/restore/<round>/<id>`; all take the
minimum. The chief may hold a newer checkpoint that its supervisor had no
time to upload; no replacement could fetch it, so it is not used. A worker
without that exact step exits PEER_LOST: its supervisor fetches the backup's
checkpoints before relaunching it.
"""

from __future__ import annotations

import itertools
import logging

from ftharness.distributed.worker_group import WorkerGroup

log = logging.getLogger("ftharness.distributed")

RESTORE_KEY = "ftharness/restore/{round}/{worker}"
# A process may restore more than once (a second TrainingCheckpoint): each
# agreement gets a key of its own. The store starts empty with each new
# group, and every worker of a group counts its rounds alike.
_rounds = itertools.count(1)


def agree_on_restore_step(group: WorkerGroup, local_step: int) -> int:
    """The minimum of every worker's `local_step`, waiting at most the group timeout."""
    round_number = next(_rounds)
    group.store.put(RESTORE_KEY.format(round=round_number, worker=group.worker_id), str(local_step))
    answers = group.gather(
        lambda worker: RESTORE_KEY.format(round=round_number, worker=worker),
        group.peer_ids,
        group.timeouts.group,
        lambda worker: (
            f"worker {worker} did not say which checkpoint it has within "
            f"{group.timeouts.group:g} s (FTHARNESS_GROUP_TIMEOUT); exiting 76 (peer lost)"
        ),
    )
    steps = {worker: int(value) for worker, value in answers.items()}
    agreed = min(steps.values())
    if agreed != local_step:
        log.info(
            "the group restores step %d (newest checkpoint by worker: %s)",
            agreed,
            ", ".join(f"{worker}: {step}" for worker, step in sorted(steps.items())),
        )
    return agreed
