"""What every checkpoint store offers, and the retention rule, written once.

`LocalCheckpointStore` (a directory) and `RemoteCheckpointStore` (any fsspec
URL) both satisfy `CheckpointStore`; the store contract suite
(tests/cloud/test_store_contract.py) runs every backend through it, and the
inspection commands read backups through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TypeVar

from ftharness.checkpoint.manifest import Manifest

log = logging.getLogger("ftharness.checkpoint")


class CheckpointEntry(Protocol):
    """A committed checkpoint as a store lists it (its manifest not yet verified)."""

    @property
    def name(self) -> str: ...

    @property
    def step(self) -> int: ...


RefT = TypeVar("RefT", bound=CheckpointEntry)


class CheckpointStore(Protocol[RefT]):
    """The committed checkpoints of one backup; `RefT` is the store's ref type.

    Reads raise `CorruptCheckpointError` for content found wrong and
    `CheckpointIOError` for content that could not be read.
    """

    url: str

    def list_committed(self) -> list[RefT]:
        """Checkpoints whose manifest exists, oldest first."""
        ...

    def read_manifest(self, ref: RefT) -> Manifest: ...

    def verify(self, ref: RefT) -> list[str]:
        """Problems with `ref` (sizes and checksums), file by file; empty when intact."""
        ...

    def file_size(self, ref: RefT, file_name: str) -> int | None:
        """Size of one of its files, None when it is missing."""
        ...

    def open_file(self, ref: RefT, file_name: str) -> BinaryIO: ...

    def delete(self, ref: RefT) -> None:
        """Remove a committed checkpoint so that it is never half-visible."""
        ...

    def apply_retention(self, keep: int, trusted: Collection[str] = ()) -> list[RefT]:
        """`apply_retention(store, keep)` below; returns the deleted."""
        ...


@dataclass(frozen=True)
class RetentionPlan:
    kept: tuple  # newest last
    doomed: tuple  # oldest first
    newest_intact: str | None  # the name of the newest checkpoint that verifies


def plan_retention(
    refs: Sequence[RefT], keep: int, verifies: Callable[[RefT], bool]
) -> RetentionPlan:
    """Keep the newest `keep`, and always the newest one that verifies.

    A damaged newest checkpoint must not push the one a restore would fall
    back to out of the window: everything from the newest intact checkpoint
    up is kept, whatever `keep` says. Refs are checked newest first and the
    check stops at the first that verifies.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the newest checkpoint is never deleted), got {keep}")
    newest_intact = None
    for index in range(len(refs) - 1, -1, -1):
        if verifies(refs[index]):
            newest_intact = index
            break
    first_kept = max(0, len(refs) - keep)
    if newest_intact is not None:
        first_kept = min(first_kept, newest_intact)
    return RetentionPlan(
        kept=tuple(refs[first_kept:]),
        doomed=tuple(refs[:first_kept]),
        newest_intact=None if newest_intact is None else refs[newest_intact].name,
    )


def apply_retention(
    store: CheckpointStore[RefT],
    keep: int,
    trusted: Collection[str] = (),
    before_delete: Callable[[], None] | None = None,
) -> list[RefT]:
    """Delete what `plan_retention` dooms; returns the deleted, oldest first.

    `trusted` names checkpoints known intact without reading them again (the
    one this process has just written from verified bytes). `before_delete`
    runs before each deletion and may raise to stop it (the lease check).
    """
    decided = plan_retention(
        store.list_committed(), keep, lambda ref: ref.name in trusted or not store.verify(ref)
    )
    if decided.newest_intact is None and decided.doomed:
        log.warning("no checkpoint verifies; retention deletes nothing")
        return []
    deleted = []
    for ref in decided.doomed:
        if before_delete is not None:
            before_delete()
        store.delete(ref)
        deleted.append(ref)
    return deleted
