"""Drawing figures in worker processes when there are cores (qvtune.common.figures saves them).

Drawing is the slowest part of a collection; a worker process draws while the main process builds
the tables, so `collect all` takes about as long as the longer of the two.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Optional


class Renderer:
    """Runs figure jobs in `processes` background processes (started on the first job), or inline with 0."""

    def __init__(self, processes: int = 0):
        self.processes = processes
        self._pool: Optional[ProcessPoolExecutor] = None

    @classmethod
    def for_cores(cls, cores: int) -> Renderer:
        """One core stays with the main process (it builds the tables meanwhile), the others draw."""
        return cls(min(cores - 1, 4))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self.processes < 1:
            future: Future = Future()
            future.set_result(fn(*args))
            return future
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes)
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
