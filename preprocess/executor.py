"""The build's task executor: shard tasks run in this process, or on a dask.distributed cluster.

    canonstore build R                                  # in this process
    canonstore build R --workers 4                      # a LocalCluster of 4 processes on this machine
    canonstore build R --scheduler tcp://host:8786      # a running cluster (dask-jobqueue, dask-mpi, ...)
    canonstore build R --scheduler-file scheduler.json

Workers read the raw files and write the shards by path, so inputs and the output must be on a filesystem every
worker sees (what HPC centres mount on all nodes); `check_shared` stops with a clear error before any task if not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from canonstore.errors import StoreError
from canonstore.preprocess.buildlog import SILENT, quiet_dask
from canonstore.preprocess.pipeline import ordered_map
from canonstore.remote import is_url

logger = logging.getLogger(__name__)

UNTRIMMED = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


class WorkersLost(StoreError):
    """The cluster lost the workers of a task on every retry; the staging store is kept for --resume."""

    keep_staging = True


class Executor(Protocol):
    """What runs a pass of shard tasks: `map` yields (item, result) pairs in item order or as tasks finish;
    `check_shared` stops early when a worker cannot see the files."""

    def map(self, fn, job, items, *args) -> Iterator[tuple]: ...

    def check_shared(self, paths) -> None: ...


class InProcessExecutor:
    """Run tasks here, `threads` at a time (`preprocess.pipeline`), in item order as one after another. Default 2; 3 on
    2+ cores for `one_block_shards` (x1.07-1.10 at 8-32 MiB shards, +25-112 MB; none at 64 MiB+, +110-140 MB)."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def map(self, fn, job, items, *args):
        threads = self.threads or (3 if job.one_block_shards and len(os.sched_getaffinity(0)) >= 2 else 2)
        return ordered_map(lambda item: fn(job, item, *args), items, threads)

    def check_shared(self, paths) -> None:
        pass


class DistributedExecutor:
    """Run tasks on a dask.distributed cluster through `client`; results come back as tasks finish.

    Every wait is bounded. Tasks are per shard and idempotent, so a task the cluster loses is submitted
    again: dask reruns a task whose worker died (up to `distributed.scheduler.allowed-failures` times,
    then WorkersLost); a task the client hears nothing of for `poll` seconds is looked up on the
    scheduler, and one it no longer knows, or knows as done while the client still waits, is submitted
    again (at most `resubmits` times); with no worker at all for `no_workers` seconds the build stops.
    """

    poll = 10.0  # seconds without a finished task before the scheduler is asked about the others
    resubmits = 3  # submissions again of one shard's task that the cluster lost track of
    no_workers = 300.0  # seconds without any worker before the build stops (the staging is kept)

    def __init__(self, client):
        self.client = client
        self._passes = weakref.WeakSet()  # map generators not finished yet, closed before the client

    def map(self, fn, job, items, *args):
        """Yield (item, fn(job, item, *args)) as tasks finish. A task's error is raised here as it was
        raised there; a task whose workers keep dying (dask retries it on others) raises WorkersLost."""
        tasks = self._map(fn, job, list(items), args)
        self._passes.add(tasks)
        return tasks

    def close(self) -> None:
        """Cancel what passes left running (a pass given up by an error elsewhere), while the client is up."""
        for tasks in list(self._passes):
            tasks.close()

    def _map(self, fn, job, items: list, args: tuple):
        from distributed import as_completed

        name = fn.__name__
        # The job travels as a task of its own, not as data scattered with broadcast=True: dask's
        # Scheduler.replicate never returns when a worker dies while the data is copied to it (its
        # set of target workers is fixed), which left `scatter` and the build waiting forever. A task
        # is also computed again if every worker holding it dies, where scattered data is forgotten and
        # its dependents cancelled ("lost dependencies"). Its own key per pass: the previous pass's
        # cancel (sent on another channel) can never release it.
        shared = self._submit(_as_it_is, job)
        finished = as_completed(loop=self.client.loop)
        pending: dict = {}  # future -> index of its item
        sent = dict.fromkeys(range(len(items)), 0)

        def submit(i: int) -> None:
            nonlocal shared
            if sent[i] > self.resubmits:
                raise WorkersLost(
                    f"{name} of shard {_shard(items[i])}: the dask cluster lost the task {sent[i]} "
                    "times (workers restarted or the scheduler lost track); rerun with --resume to go on"
                )
            if shared.status in ("cancelled", "error"):
                shared = self._submit(_as_it_is, job)
            future = self._submit(fn, shared, items[i], *args, name=f"{name}-{_shard(items[i])}")
            pending[future] = i
            sent[i] += 1
            finished.add(future)

        for i in range(len(items)):
            submit(i)
        heard = workers_seen = time.monotonic()  # when a task last finished; when a worker was last there
        try:
            while pending:
                batch = [f for f in finished.next_batch(block=False) if f in pending]  # others: given up on
                if not batch:
                    if time.monotonic() - heard > self.poll:
                        for future in self._lost(pending):
                            future.cancel()
                            submit(pending.pop(future))
                        workers_seen = self._check_workers(workers_seen)
                        heard = time.monotonic()
                    time.sleep(0.02)
                    continue
                heard = time.monotonic()
                for future in batch:
                    outcome, result = self._outcome(future, f"{name} of shard {_shard(items[pending[future]])}")
                    if outcome == "lost":
                        submit(pending.pop(future))
                    elif outcome == "again":
                        finished.add(future)
                    else:
                        future.release()
                        yield items[pending.pop(future)], result
        finally:
            if self.client.status == "running":
                self.client.cancel(list(pending) + [shared])

    def _outcome(self, future, what: str) -> tuple[str, object]:
        """("done", result) of a finished task; ("again", None) when its result went with a worker (dask
        computes it again); ("lost", None) when the scheduler cancelled it (e.g. a lost dependency).
        The task's own error is raised; KilledWorker (its workers died on every retry) as WorkersLost."""
        from distributed import CancelledError
        from distributed import TimeoutError as DaskTimeout
        from distributed.scheduler import KilledWorker

        try:
            return "done", future.result(timeout=self.poll)
        except DaskTimeout:
            return "again", None
        except CancelledError:
            return "lost", None
        except KilledWorker:
            raise WorkersLost(
                f"{what}: the dask workers running it died (out of memory? killed?) on every retry; "
                "rerun with --resume to go on"
            ) from None

    def _submit(self, fn, *args, name: str | None = None):
        return self.client.submit(fn, *args, pure=False, key=f"{name or fn.__name__}-{uuid.uuid4().hex}")

    def _lost(self, pending: dict) -> list:
        """Pending tasks the scheduler no longer knows, or knows as finished while the client has not heard."""
        try:
            states = self.client.sync(
                self.client.scheduler.get_task_status, keys=[f.key for f in pending], callback_timeout=60
            )
        except (OSError, TimeoutError) as exc:
            raise WorkersLost(
                f"lost the dask scheduler at {self.client.scheduler.address} ({exc}); rerun with --resume to go on"
            ) from None
        return [f for f in pending if not f.done() and states.get(f.key) in (None, "forgotten", "memory", "erred")]

    def _check_workers(self, since: float) -> float:
        """Now if the cluster has a worker, else `since`; give up after `no_workers` seconds without one."""
        if self.client.sync(self.client.scheduler.ncores_running, callback_timeout=60):
            return time.monotonic()
        if time.monotonic() - since > self.no_workers:
            raise WorkersLost(
                f"the dask cluster at {self.client.scheduler.address} has had no worker for "
                f"{self.no_workers:.0f} s; rerun with --resume once it has"
            )
        return since

    def check_shared(self, paths) -> None:
        """Every worker must see `paths` (the recipe, the first input, the staging store): else stop here.
        Object-storage sources (`s3://`) are not paths: each worker reaches them with its own AWS_* variables."""
        wanted = [str(Path(p).resolve()) for p in paths if not is_url(p)]
        seen = self.client.run(_missing, wanted)
        blind = {worker: missing for worker, missing in seen.items() if missing}
        if blind:
            worker, missing = next(iter(blind.items()))
            raise StoreError(
                f"dask worker {worker} cannot see {missing[0]} ({len(blind)} of {len(seen)} workers "
                "cannot see every path): the recipe, the inputs and the output must be on a filesystem "
                "that every worker mounts at the same path"
            )


@contextlib.contextmanager
def environ_kept():
    """Restore this process's environment afterwards: dask's nannies set OMP_NUM_THREADS=1 and more in
    the process that starts them, which would change a later subprocess (e.g. training's threads)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _as_it_is(job):
    return job  # the job, as a task of its own (see _map)


def _shard(item) -> int:
    """The shard number of a task's item (a write task's item is (k, crc32))."""
    return item[0] if isinstance(item, tuple) else item


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


@contextlib.contextmanager
def executor_for(scheduler: str | None = None, scheduler_file: str | None = None, workers: int | None = None):
    """This process (`InProcessExecutor`), or a client of a running cluster or a LocalCluster of `workers`."""
    if not (scheduler or scheduler_file or workers):
        yield InProcessExecutor()
        return
    if sum(bool(x) for x in (scheduler, scheduler_file, workers)) > 1:
        raise StoreError("give one of --scheduler, --scheduler-file and --workers")
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise StoreError("a distributed build needs dask.distributed: pip install distributed") from exc
    if workers:
        import dask

        # One thread per process: netCDF4/HDF5 reads hold a global lock, processes do not share it.
        # Without dask's default MALLOC_TRIM_THRESHOLD_, glibc keeps freed 32 MiB blocks for reuse
        # instead of mapping and faulting in new pages for each block: tasks ran 1.5-2x slower with it.
        # Dask's own messages (a task's "Compute Failed", a worker's lost heartbeat while the cluster
        # closes) go to the build log, not the terminal, and the scheduler's HTTP server takes any free
        # port (a second build's would warn that 8787 is taken).
        with environ_kept(), dask.config.set(UNTRIMMED), quiet_dask():
            try:
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=SILENT,
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
            except Exception as exc:  # e.g. "Nanny failed to start": a worker died while starting
                raise StoreError(
                    f"could not start a local dask cluster of {workers} workers: {type(exc).__name__}: {exc}"
                ) from exc
            with cluster, Client(cluster) as client:
                logger.info(f"started a local dask cluster of {workers} worker processes")
                yield from _distributed(client)
        return
    try:
        client = (
            Client(scheduler_file=scheduler_file, timeout="30s") if scheduler_file else Client(scheduler, timeout="30s")
        )
    except (OSError, TimeoutError, ValueError) as exc:
        raise StoreError(f"cannot connect to the dask scheduler {scheduler or scheduler_file}: {exc}") from None
    with client, quiet_dask():
        if not client.scheduler_info()["workers"]:
            client.wait_for_workers(1, timeout=120)
        logger.info(
            f"building on the dask cluster at {client.scheduler.address} "
            f"({len(client.scheduler_info()['workers'])} workers)"
        )
        yield from _distributed(client)


def _distributed(client):
    """The executor of `client`; the passes it leaves open are cancelled while the client still runs (else
    their cleanup would run at exit, on a closed event loop: `RuntimeError: IOLoop is closed`)."""
    executor = DistributedExecutor(client)
    try:
        yield executor
    finally:
        executor.close()
