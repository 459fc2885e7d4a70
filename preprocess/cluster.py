"""Where the build's shard tasks run: in this process, or on a dask.distributed cluster.

    canonstore build R                                  # in this process
    canonstore build R --workers 4                      # a LocalCluster of 4 processes on this machine
    canonstore build R --scheduler tcp://host:8786      # a running cluster (dask-jobqueue, dask-mpi, ...)
    canonstore build R --scheduler-file scheduler.json

Workers read the raw files and write the shards by path, so inputs and the output must be on a
filesystem every worker sees (what HPC centres mount on all nodes). `check_shared` tests that on
every worker before any task runs and stops with a clear error otherwise.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from canonstore.errors import StoreError


UNTRIMMED = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


class WorkersLost(StoreError):
    """The cluster lost the workers of a task on every retry; the staging store is kept for --resume."""

    keep_staging = True


class InProcess:
    """Run tasks one after another here (the default build)."""

    def map(self, fn, job, items, *args):
        """Yield (item, fn(job, item, *args)) for each item, in order."""
        for item in items:
            yield item, fn(job, item, *args)

    def check_shared(self, paths) -> None:
        pass


class Distributed:
    """Run tasks on a dask.distributed cluster through `client`; results come back as tasks finish."""

    def __init__(self, client):
        self.client = client

    def map(self, fn, job, items, *args):
        """Yield (item, fn(job, item, *args)) as tasks finish. A task's error is raised here as it was
        raised there; a task whose workers keep dying (dask retries it on others) raises StoreError."""
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        name = fn.__name__
        shared = self.client.scatter(job, broadcast=True)  # sent once, not once per task
        futures = {self.client.submit(fn, shared, item, *args, pure=False, key=f"{name}-{item}-{os.urandom(4).hex()}"):
                   item for item in items}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except KilledWorker:
                    raise WorkersLost(f"{name} of shard {futures[future]}: the dask workers running it died "
                                     "(out of memory? killed?) on every retry; rerun with --resume to go on") from None
                future.release()
                yield futures[future], result
        finally:
            self.client.cancel(list(futures) + [shared])

    def check_shared(self, paths) -> None:
        """Every worker must see `paths` (the recipe, the first input, the staging store): else stop here."""
        wanted = [str(Path(p).resolve()) for p in paths]
        seen = self.client.run(_missing, wanted)
        blind = {worker: missing for worker, missing in seen.items() if missing}
        if blind:
            worker, missing = next(iter(blind.items()))
            raise StoreError(f"dask worker {worker} cannot see {missing[0]} ({len(blind)} of {len(seen)} workers "
                             "cannot see every path): the recipe, the inputs and the output must be on a filesystem "
                             "that every worker mounts at the same path")


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


def _missing(paths: list[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


@contextlib.contextmanager
def runner(scheduler: str | None = None, scheduler_file: str | None = None, workers: int | None = None, log=print):
    """The runner for these options: a client of a running cluster, a LocalCluster of `workers`
    processes (one thread each), or this process when none is given."""
    if not (scheduler or scheduler_file or workers):
        yield InProcess()
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
        with environ_kept(), dask.config.set(UNTRIMMED), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                      dashboard_address=None, silence_logs=40) as cluster, \
                Client(cluster) as client:
            log(f"started a local dask cluster of {workers} worker processes")
            yield Distributed(client)
        return
    try:
        client = Client(scheduler_file=scheduler_file, timeout="30s") if scheduler_file else Client(scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise StoreError(f"cannot connect to the dask scheduler {scheduler or scheduler_file}: {exc}") from None
    with client:
        if not client.scheduler_info()["workers"]:
            client.wait_for_workers(1, timeout=120)
        log(f"building on the dask cluster at {client.scheduler.address} "
            f"({len(client.scheduler_info()['workers'])} workers)")
        yield Distributed(client)
