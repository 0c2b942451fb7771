"""An fsspec filesystem that wraps a real one and is slow or fails on chosen calls.

Faults are injected here, around a real store (local, memory, s3, gs), never
by patching ftharness: the code under test sees an ordinary fsspec
filesystem. Example::

    fs = FaultyFileSystem(LocalFileSystem(auto_mkdir=True))
    fs.add(Fault("put_file", delay=2.0))                           # every upload slow
    fs.add(Fault("cat_file", match="manifest.json", times=1,
                 error=lambda: ConnectionResetError(104, "Connection reset by peer")))
    store = RemoteCheckpointStore("file:///tmp/remote", fs=fs)
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

# A process started with this variable set (and `faulty_site` on its path)
# serves `faulty:///path` URLs with the faults it describes: see `register`.
PLAN_VARIABLE = "FAULTY_FS_PLAN"


@dataclass
class Fault:
    """What to do to calls of `method` whose first path contains `match`.

    `delay` seconds are slept first (or a random delay up to `max_delay`);
    then `error()` is raised, `times` times (None: every time), each time
    with `probability`. A fault with neither only counts its calls.
    """

    method: str
    match: str = ""
    delay: float = 0.0
    error: Callable[[], BaseException] | None = None
    times: int | None = None
    probability: float = 1.0
    max_delay: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    calls: int = field(default=0, init=False)
    raised: int = field(default=0, init=False)


class FaultyFileSystem(AbstractFileSystem):
    protocol = "faulty"
    cachable = False  # every test gets its own instance and faults

    def __init__(self, target: AbstractFileSystem | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target = target if target is not None else LocalFileSystem(auto_mkdir=True)
        self.faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _inject(self, method: str, path: str) -> None:
        with self._lock:
            matching = [f for f in self.faults if f.method == method and f.match in str(path)]
            for fault in matching:
                fault.calls += 1
        for fault in matching:
            with self._lock:
                jitter = fault.rng.uniform(0, fault.max_delay) if fault.max_delay else 0.0
                lucky = fault.rng.random() >= fault.probability
            if fault.delay or jitter:
                time.sleep(fault.delay + jitter)
            with self._lock:
                fire = (
                    fault.error is not None
                    and not lucky
                    and (fault.times is None or fault.raised < fault.times)
                )
                if fire:
                    fault.raised += 1
            if fire:
                raise fault.error()

    # -- delegated calls (the ones ftharness makes) ------------------------------

    def ls(self, path, detail=True, **kwargs):
        self._inject("ls", path)
        return self.target.ls(path, detail=detail, **kwargs)

    def info(self, path, **kwargs):
        self._inject("info", path)
        return self.target.info(path, **kwargs)

    def glob(self, path, maxdepth=None, **kwargs):
        self._inject("glob", path)
        return self.target.glob(path, maxdepth=maxdepth, **kwargs)

    def exists(self, path, **kwargs):
        self._inject("exists", path)
        return self.target.exists(path, **kwargs)

    def size(self, path):
        self._inject("size", path)
        return self.target.size(path)

    def cat_file(self, path, start=None, end=None, **kwargs):
        self._inject("cat_file", path)
        return self.target.cat_file(path, start=start, end=end, **kwargs)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._inject("pipe_file", path)
        return self.target.pipe_file(path, value, mode=mode, **kwargs)

    def put_file(self, lpath, rpath, callback=None, **kwargs):
        self._inject("put_file", rpath)
        if callback is not None:
            kwargs["callback"] = callback
        return self.target.put_file(lpath, rpath, **kwargs)

    def get_file(self, rpath, lpath, callback=None, **kwargs):
        self._inject("get_file", rpath)
        if callback is not None:
            kwargs["callback"] = callback
        return self.target.get_file(rpath, lpath, **kwargs)

    def open(self, path, mode="rb", **kwargs):
        self._inject("open", path)
        return self.target.open(path, mode, **kwargs)

    def rm_file(self, path):
        self._inject("rm_file", path)
        return self.target.rm_file(path)

    def rm(self, path, recursive=False, maxdepth=None):
        self._inject("rm", path)
        return self.target.rm(path, recursive=recursive, maxdepth=maxdepth)

    def makedirs(self, path, exist_ok=False):
        self._inject("makedirs", path)
        return self.target.makedirs(path, exist_ok=exist_ok)

    def mkdir(self, path, create_parents=True, **kwargs):
        self._inject("mkdir", path)
        return self.target.mkdir(path, create_parents=create_parents, **kwargs)

    def invalidate_cache(self, path=None):
        return self.target.invalidate_cache(path)


def connection_reset() -> BaseException:
    return ConnectionResetError(104, "Connection reset by peer")


def register() -> None:
    """Serve `faulty:///path` (a local path) with the faults of $FAULTY_FS_PLAN.

    The plan, JSON: {"seed": 1, "faults": [{"method": "put_file", "match": "ckpt-",
    "max_delay": 0.3, "probability": 0.2, "error": "reset"}]}. Used by
    tests/faulty_site/sitecustomize.py, so that a real `ftharness` process
    (the chaos test's supervisor) writes to a slow and failing store.
    """
    plan = json.loads(os.environ[PLAN_VARIABLE])
    rng = random.Random(plan.get("seed", 0))
    errors = {"reset": connection_reset}

    class PlannedFileSystem(FaultyFileSystem):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            for spec in plan["faults"]:
                spec = dict(spec)
                error = errors[spec.pop("error")] if "error" in spec else None
                self.add(Fault(error=error, rng=rng, **spec))

    fsspec.register_implementation("faulty", PlannedFileSystem, clobber=True)
