"""Read ahead: the next tensors are read in background threads while the current one is measured.

Reads release the GIL (positioned ``readinto``), so a background thread can overlap the disk with
the arithmetic while the reads stay in order. Off by default (``WeightsConfig.prefetch=0``): the
stream already asks the kernel to read ahead (``posix_fadvise``), and on the project's shared VM the
thread made reads slower, not faster (``benchmarks/bench_weights.py``). ``depth``
bounds what is held: at most ``depth`` tensors beyond the one being measured (``depth=1``: one
module of two checkpoints). Results come back in job order; a reader is never used by two threads at
once (one lock per reader).
"""

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from revlens.weights.catalog import Param
from revlens.weights.readers import AdapterReader, FullReader

__all__ = ["Prefetch", "fetch"]


def fetch(reader: FullReader | AdapterReader, param: Param) -> Any:
    """What the stream needs of ``param`` from one checkpoint: its tensor (full) or its update (adapter)."""
    return (
        reader.delta(param) if getattr(reader, "kind", "full") == "adapter" else reader.read(param)
    )


class Prefetch:
    """Iterate over ``fetch(reader, param)`` for ``jobs`` in order, ``depth`` jobs ahead."""

    def __init__(
        self, jobs: Iterable[tuple[Any, Any]], *, depth: int = 1, workers: int = 1
    ) -> None:
        self._jobs = iter(jobs)
        self._depth = max(0, depth)
        self._pool = (
            ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="revlens-read")
            if self._depth
            else None
        )  # depth 0: read in the caller's thread
        self._locks: dict[int, threading.Lock] = {}
        self._queue: deque[Future] = deque()

    def _submit(self) -> bool:
        job = next(self._jobs, None)
        if job is None:
            return False
        reader, param = job
        lock = self._locks.setdefault(id(reader), threading.Lock())

        def run() -> Any:
            with lock:
                return fetch(reader, param)

        self._queue.append(self._pool.submit(run))
        return True

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._pool is None:
            job = next(self._jobs, None)
            if job is None:
                raise StopIteration
            return fetch(*job)
        while len(self._queue) <= self._depth and self._submit():
            pass
        if not self._queue:
            raise StopIteration
        return self._queue.popleft().result()

    def close(self) -> None:
        """Stop reading ahead (pending reads are cancelled or awaited)."""
        for f in self._queue:
            f.cancel()
        self._queue.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
