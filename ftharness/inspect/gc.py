"""Garbage collection of a backup: keep the newest N committed checkpoints.

Never deletes the newest committed checkpoint, nor the newest one that
verifies (the one a restore would fall back to when the newest is damaged:
see `checkpoint.store.plan_retention`), and never while another run
holds the directory's lock: a writer's retention and ours must not race, and
a checkpoint being restored must not vanish under its reader. Quarantined
`corrupt-ckpt-*` directories are left alone (they are kept for inspection).
"""

from __future__ import annotations

from dataclasses import dataclass

from ftharness.checkpoint.local import CheckpointRef
from ftharness.checkpoint.store import plan_retention
from ftharness.inspect.backup import LocalBackup, RemoteBackup


@dataclass(frozen=True)
class GcPlan:
    kept: tuple[CheckpointRef, ...]
    doomed: tuple[CheckpointRef, ...]  # oldest first


def plan(backup: LocalBackup | RemoteBackup, keep: int) -> GcPlan:
    """What `collect` would delete now."""
    if keep < 1:
        raise ValueError(
            f"--keep must be >= 1 (the newest checkpoint is never deleted), got {keep}"
        )
    decided = plan_retention(backup.list_committed(), keep, lambda ref: not backup.verify(ref))
    if decided.newest_intact is None:  # nothing verifies: delete nothing
        return GcPlan(kept=decided.kept + decided.doomed, doomed=())
    return GcPlan(kept=decided.kept, doomed=decided.doomed)


def collect(backup: LocalBackup | RemoteBackup, keep: int) -> GcPlan:
    """Delete all but the newest `keep`, under the directory's lock.

    Raises `DirectoryLockedError` (naming the holder) when a run holds it.
    """
    lock = backup.lock(role="gc")
    try:
        # Planned again under the lock: the listing may have changed since.
        decided = plan(backup, keep)
        for ref in decided.doomed:
            backup.delete(ref)
        return decided
    finally:
        lock.release()
