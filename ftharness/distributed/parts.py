"""Per-worker checkpoint parts, handed to the chief through the key-value store.

Each worker's own state (its global RNGs, its input position) differs from
its peers'. Every worker saves its own part in its local checkpoint; the
chief's checkpoint also holds every other worker's, so that a replacement
with an empty local directory restores its part from the backup (which
holds the chief's checkpoints). Parts are small JSON (a few KB of RNG
state), well within what the store carries.
"""

from __future__ import annotations

from ftharness.distributed.worker_group import WorkerGroup

PART_KEY = "ftharness/ckpt/{step}/worker/{worker}"
PART_FILE = "worker-{worker}.json"


def part_file(worker: int) -> str:
    return PART_FILE.format(worker=worker)


def hand_to_chief(group: WorkerGroup, step: int, part: bytes) -> None:
    group.store.put(PART_KEY.format(step=step, worker=group.worker_id), part.decode())


def collect_from_peers(group: WorkerGroup, step: int) -> dict[str, bytes]:
    """The chief: every other worker's part of checkpoint `step`, by file name."""
    parts = group.gather(
        lambda worker: PART_KEY.format(step=step, worker=worker),
        [worker for worker in group.peer_ids if worker != group.worker_id],
        group.timeouts.exchange,
        lambda worker: (
            f"worker {worker} did not hand over its part of checkpoint {step} within "
            f"{group.timeouts.exchange:g} s; exiting 76 (peer lost), nothing committed"
        ),
    )
    files = {part_file(worker): value.encode() for worker, value in parts.items()}
    return files
