"""Executors that fan :func:`revlens.collect` out over processes, a Dask cluster or a Ray cluster.

``collect(executor=...)`` takes any ``concurrent.futures.Executor``: each worker process boots the
history's architecture once (on ``device`` / ``dtype``), swaps in the checkpoints it is given and
ships back statistics only (sums, bootstrap sums, moments; per-prompt references of the reference
checkpoints); statistics merge exactly, so the result equals a serial run's. The helpers here build
the usual ones:

- :func:`process_pool`: local processes (``spawn``: forking a process that already runs torch
  threads can deadlock);
- :func:`dask_executor`: a ``distributed.Client``'s executor (a ``LocalCluster`` by default, or the
  scheduler at ``address``) — ``pip install "revlens[dask]"``;
- :func:`ray_executor`: Ray tasks (a local Ray instance by default, or the cluster at ``address``;
  one CPU — or GPU — per task) — ``pip install "revlens[ray]"``.

For a batch scheduler (SLURM arrays, submitit) see ``docs/scale.md``: per-checkpoint statistics
written by independent jobs and merged with :class:`~revlens.collect.HistoryStats`.
"""

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any

from revlens.errors import MissingExtraError

__all__ = ["RayExecutor", "dask_executor", "process_pool", "ray_executor"]


def process_pool(max_workers: int | None = None) -> ProcessPoolExecutor:
    """A local ``ProcessPoolExecutor`` with the ``spawn`` start method."""
    return ProcessPoolExecutor(
        max_workers=max_workers, mp_context=multiprocessing.get_context("spawn")
    )


def dask_executor(address: Any = None, **cluster: Any) -> Any:
    """The executor of a ``distributed.Client`` on ``address`` (a scheduler address or a cluster),
    or on a new ``LocalCluster(**cluster)``. Close it with ``executor.shutdown()``; the client and
    a cluster made here are closed with it."""
    try:
        import distributed
    except ImportError:
        raise MissingExtraError(
            'dask_executor needs dask.distributed: pip install "revlens[dask]"'
        ) from None
    owned = None
    if address is None:
        owned = distributed.LocalCluster(
            **{"dashboard_address": None, "processes": True, **cluster}
        )
        address = owned
    client = distributed.Client(address)
    executor = client.get_executor()
    close = executor.shutdown

    def shutdown(wait: bool = True, **kw: Any) -> None:
        close(wait=wait, **kw)
        client.close()
        if owned is not None:
            owned.close()

    executor.shutdown = shutdown  # type: ignore[method-assign]
    return executor


class RayExecutor(Executor):
    """``concurrent.futures`` on Ray tasks: ``submit(fn, *args)`` runs ``fn`` as a Ray task with
    ``num_cpus`` / ``num_gpus`` each and returns the task's ``Future``. Ray reuses its worker
    processes, so each boots the architecture once. ``shutdown`` stops a Ray instance started
    here."""

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float | int = 1,
        num_gpus: float | int = 0,
        init: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise MissingExtraError('ray_executor needs ray: pip install "revlens[ray]"') from None
        self._ray = ray
        self._started = not ray.is_initialized()
        if self._started:
            ray.init(
                address=address,
                **{"include_dashboard": False, "log_to_driver": False, **(init or {})},
            )
        self._options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        task = self._remote.get(fn)
        if task is None:
            task = self._remote[fn] = self._ray.remote(**self._options)(fn)
        return task.remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False


def ray_executor(
    address: str | None = None,
    *,
    cpus_per_task: float | int = 1,
    gpus_per_task: float | int = 0,
    **init: Any,
) -> RayExecutor:
    """A :class:`RayExecutor`: tasks of ``cpus_per_task`` / ``gpus_per_task`` on the Ray cluster at
    ``address``, or on a local Ray instance started with ``ray.init(**init)`` (e.g. ``num_cpus=4``)."""
    return RayExecutor(address=address, num_cpus=cpus_per_task, num_gpus=gpus_per_task, init=init)
