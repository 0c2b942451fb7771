"""This worker's group, found from the strategy its variables belong to.

`TrainingCheckpoint` is built outside `strategy.scope()` in the usual
script, where `tf.distribute.has_strategy()` is False; the variables built
inside the scope know their strategy (`MirroredVariable.distribute_strategy`),
so the group is found from the objects given to save.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import tensorflow as tf

from ftharness.distributed.coordination import KeyValueStore
from ftharness.distributed.errors import PeerLostError
from ftharness.distributed.timeouts import PeerTimeouts
from ftharness.group import GroupPlace


@dataclass(frozen=True)
class WorkerGroup:
    """The workers training together; this one is `place.id_in_cluster`."""

    place: GroupPlace
    timeouts: PeerTimeouts
    store: KeyValueStore

    @property
    def worker_id(self) -> int:
        return self.place.id_in_cluster

    @property
    def worker_count(self) -> int:
        return self.place.worker_count

    @property
    def is_chief(self) -> bool:
        return self.place.is_chief

    @property
    def peer_ids(self) -> range:
        return range(self.worker_count)

    def gather(
        self,
        key_of: Callable[[int], str],
        workers: Iterable[int],
        timeout: float,
        missing: Callable[[int], str],
    ) -> dict[int, str]:
        """Each worker's value under `key_of(worker)`, all within `timeout` s in total.

        PeerLostError with `missing(worker)` for the first one not there in time.
        """
        deadline = time.monotonic() + timeout
        values = {}
        for worker in workers:
            try:
                values[worker] = self.store.get(
                    key_of(worker), timeout=max(deadline - time.monotonic(), 0.001)
                )
            except tf.errors.DeadlineExceededError:
                raise PeerLostError(missing(worker)) from None
        return values


def strategy_of(trackables: Mapping[str, object]):
    """The tf.distribute strategy the objects given were built under, or None."""
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    for value in trackables.values():
        for variable in _some_variables(value):
            strategy = getattr(getattr(variable, "value", variable), "distribute_strategy", None)
            if strategy is not None and not _is_default(strategy):
                return strategy
    return None


def is_multi_worker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def group_of(strategy, timeouts: PeerTimeouts) -> WorkerGroup | None:
    """The group of a MultiWorkerMirroredStrategy with more than one worker, else None."""
    if not is_multi_worker(strategy):
        return None
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    if not cluster or resolver.task_type is None:
        return None  # a local MWMS (no TF_CONFIG): one worker, nothing to agree on
    place = GroupPlace(
        cluster=tuple((job, tuple(addresses)) for job, addresses in sorted(cluster.items())),
        task_type=resolver.task_type,
        task_index=int(resolver.task_id),
    )
    if place.worker_count < 2:
        return None
    return WorkerGroup(place=place, timeouts=timeouts, store=KeyValueStore())


def _some_variables(value) -> list:
    variables = getattr(value, "variables", None)
    if isinstance(variables, list | tuple):
        return list(variables[:1])
    if isinstance(value, tf.Variable):
        return [value]
    return []


def _is_default(strategy) -> bool:
    return type(strategy).__name__ == "_DefaultDistributionStrategy"
