"""One row of the peers benchmark: one tool reading the plan's batches, timed, in its own process.

    <venv>/bin/python bench/peers/rows.py PLAN.json ROW warm|cold [NAME]

Every row yields the same (x, y) batches as float32 arrays (B, C, lat, lon): x the normalised fields at
the plan's steps t, y those at t + 1, channels in the store's order. Rows import only what they use, so
this file runs in canonstore's venv and in the peers' (bench/.venv-peers*), which never share packages.
Prints one JSON line: samples/s, MB/s, seconds; in warm mode it also saves the first batch to compare
(and its steps, for a row that keeps its own order).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


# -- canonstore -------------------------------------------------------------------------------------
def canonstore_batch(plan, store: str = "store"):
    """canonstore's batch path: whole-batch gathers from the memmap, threads, no worker processes.
    `store`: which of the plan's builds (the default layout, many shards, zstd or blosc: read through zarr)."""
    from canonstore import open_store
    from canonstore.loaders import BatchLoader, StoreDataset

    dataset = StoreDataset(open_store(plan[store]), "train", lead=1)
    loader = BatchLoader(dataset, plan["batch"], seed=0, drop_last=True, device="cpu", workers=plan["workers"])
    expected = [list(b) for b in plan["epoch"]]

    def batches():
        for epoch in range(plan["passes"]):
            loader.set_epoch(0)  # the plan is epoch 0's order, repeated
            for k, (x, y) in enumerate(loader):
                if epoch == 0 and k < 3 and loader.last_steps.tolist() != expected[k]:
                    raise RuntimeError(f"batch path order differs from the plan at batch {k}")
                yield x, y

    return batches()


def store_dataloader(plan):
    """canonstore's StoreDataset, one sample per __getitem__, in a standard DataLoader."""
    from canonstore import open_store
    from canonstore.loaders import StoreDataset

    dataset = StoreDataset(open_store(plan["store"]), "train", lead=1)
    positions = [np.searchsorted(dataset.times, b).tolist() for b in plan["batches"]]
    return dataloader(dataset, positions, plan)


def netcdf_xarray(plan):
    """Today's baseline: canonstore's RawSourceDataset (xarray reads of the raw files, normalised per sample)."""
    from canonstore import open_store
    from canonstore.loaders import RawSourceDataset

    dataset = RawSourceDataset(open_store(plan["store"]), "train", lead=1)
    positions = [np.searchsorted(dataset.times, b).tolist() for b in plan["batches"]]
    return dataloader(dataset, positions, plan)


def memcpy(plan):
    """The ceiling: copies of the same number of bytes from the page-cached store, over the workers."""
    from concurrent.futures import ThreadPoolExecutor

    from canonstore import open_store
    from canonstore.buffers import page_aligned_empty

    array = open_store(plan["store"]).array
    array = array if isinstance(array, np.ndarray) else array.shard(0)
    flat = array.reshape(len(array), -1)
    steps = 2 * plan["batch"]
    # page-aligned as the memmap's steps and canonstore's buffers: np.empty's data starts 16 bytes into a page,
    # and slabs copied there ran at 13.1 against 14.1 GB/s (one thread, 40 interleaved rounds at s)
    out = page_aligned_empty((steps, flat.shape[1]), flat.dtype)
    parts = [p for p in np.array_split(np.arange(steps), plan["workers"]) if p.size]
    rng = np.random.default_rng(0)

    def copy(part, start):
        np.copyto(out[part[0] : part[-1] + 1], flat[start + part[0] : start + part[-1] + 1])

    def batches():
        with ThreadPoolExecutor(len(parts)) as pool:
            for _ in plan["batches"]:
                start = int(rng.integers(0, len(flat) - steps))
                list(pool.map(copy, parts, [start] * len(parts)))
                yield out[: plan["batch"]], out[plan["batch"] :]

    return batches()


# -- the store through other Zarr readers ------------------------------------------------------------
class ZarrSamples:
    """x = data[t], y = data[t + 1] of the store's `data` array, read by `reader` in each worker."""

    def __init__(self, plan, reader: str):
        self.path, self.reader, self.array = str(Path(plan["store"]) / "data"), reader, None

    def open(self):
        if self.reader == "tensorstore":
            import tensorstore as ts

            return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": self.path}}, read=True).result()
        import zarr

        if self.reader == "zarrs":  # the Rust codec pipeline, as the ACE emulator configures it
            import importlib

            importlib.import_module("zarrs")  # registers the pipeline
            zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
        return zarr.open_array(self.path, mode="r")

    def __getitem__(self, t: int):
        if self.array is None:
            self.array = self.open()
        if self.reader == "tensorstore":
            window = self.array[t : t + 2].read().result()
        else:
            window = self.array[t : t + 2]
        return window[0], window[1]


# -- anemoi-datasets ----------------------------------------------------------------------------------
class AnemoiSamples:
    """anemoi-training's way: open_dataset once, in the main process (opening it in a DataLoader worker
    fails: it starts an analytics process, and daemonic workers may not have children), one window read
    per sample in the workers, normalised with the dataset's own statistics; variables reordered to the
    store's channels and grid points back to (lat, lon)."""

    def __init__(self, plan):
        from anemoi.datasets import open_dataset

        self.ds, self.grid = open_dataset(plan["anemoi"]), plan["grid"]
        self.order = np.array([self.ds.name_to_index[name] for name in plan["anemoi_channels"]])
        stats = self.ds.statistics
        self.mean = stats["mean"][self.order, None, None].astype(np.float32)
        self.stdev = stats["stdev"][self.order, None, None].astype(np.float32)

    def __getitem__(self, t: int):
        window = self.ds[t : t + 2]  # (2 dates, variables, ensemble, grid points)
        window = window[:, self.order, 0].reshape(2, len(self.order), *self.grid)
        window = (window - self.mean) / self.stdev
        return window[0], window[1]


# -- raw NetCDF ---------------------------------------------------------------------------------------
def xbatcher_rows(plan, chunks):
    """xbatcher's BatchGenerator over open_mfdataset of the raw files, normalised on the fly (lazily),
    through its MapDataset in a DataLoader: its documented PyTorch pattern. The plan's random order is
    applied with isel before batching (BatchGenerator itself batches in order). `chunks`: {} is
    open_mfdataset's default (one dask chunk per file); {"time": 1} reads only the steps a batch needs."""
    import torch
    import xarray as xr
    import xbatcher
    from xbatcher.loaders.torch import MapDataset

    ds = xr.open_mfdataset(plan["raw"], chunks=chunks)
    fields = [ds[v].sel(level=lev) if lev is not None else ds[v] for v, lev in plan["fields"]]
    fields = [f.drop_vars("level", errors="ignore") for f in fields]
    data = xr.concat(fields, dim="channel").transpose("time", "channel", "latitude", "longitude")
    mean = xr.DataArray(np.asarray(plan["mean"], np.float32), dims="channel")
    std = xr.DataArray(np.asarray(plan["std"], np.float32), dims="channel")
    data = ((data - mean) / std).astype(np.float32)
    steps = np.concatenate(plan["epoch"])  # one epoch: a long fancy index makes every batch's dask graph slow
    dims = {"channel": data.sizes["channel"], "latitude": data.sizes["latitude"], "longitude": data.sizes["longitude"]}
    generators = [
        xbatcher.BatchGenerator(
            data.isel(time=steps + k), input_dims=dims, batch_dims={"time": plan["batch"]}, preload_batch=False
        )
        for k in (0, 1)
    ]
    loader = torch.utils.data.DataLoader(
        MapDataset(*generators), batch_size=None, num_workers=plan["workers"], persistent_workers=plan["workers"] > 0
    )

    def batches():
        for _ in range(plan["passes"]):
            for x, y in loader:
                yield x.reshape(-1, *x.shape[-3:]), y.reshape(-1, *y.shape[-3:])

    return batches()


class NetCDF4Batches:
    """A competent NetCDF loader: each worker keeps the files open (netCDF4) and reads a whole batch per
    variable and level in one call (the union of the steps t and t + 1), normalised in float32."""

    def __init__(self, plan):
        self.plan, self.files = plan, None

    def __len__(self):
        return len(self.plan["batches"])

    def __getitem__(self, k: int):
        import netCDF4

        plan = self.plan
        if self.files is None:
            self.files = {}
            for path in plan["raw"]:
                f = netCDF4.Dataset(path)
                f.set_always_mask(False)
                self.files[Path(path).stem] = f
        steps = np.asarray(plan["batches"][k])
        union = np.union1d(steps, steps + 1)
        xi, yi = np.searchsorted(union, steps), np.searchsorted(union, steps + 1)
        first = self.files[plan["fields"][0][0]].variables[plan["fields"][0][0]]
        block = np.empty((len(union), len(plan["fields"])) + tuple(first.shape[-2:]), np.float32)
        for c, (name, level) in enumerate(plan["fields"]):
            var = self.files[name].variables[name]
            if level is None:
                block[:, c] = var[union]
            else:
                levels = list(self.files[name].variables["level"][:])
                block[:, c] = var[union, levels.index(level)]
        block -= np.asarray(plan["mean"], np.float32)[:, None, None]
        block /= np.asarray(plan["std"], np.float32)[:, None, None]
        return block[xi], block[yi]


# -- whole batches in forked processes, no DataLoader ------------------------------------------------
class ForkedBatches:
    """`plan["workers"]` forked processes fill whole batches straight into reused shared memory, in the
    plan's order: each peer at its best, without a DataLoader's per-sample collation, pickling and
    worker queues. `fill(steps, x, y)` writes the batch at steps `t` (x) and `t + 1` (y) into the two
    float32 arrays; it runs in the workers, so whatever it opens lazily is opened after the fork.
    Batch k goes to worker k % workers and slot k % slots; a slot is handed out again only after the
    consumer has moved past the batch it held (`depth` batches in flight per worker)."""

    def __init__(self, plan, fill, depth: int = 2):
        self.plan, self.fill = plan, fill
        self.workers = max(plan["workers"], 1)
        self.slots = self.workers * depth

    def __iter__(self):
        import mmap
        import multiprocessing as mp

        plan, batches = self.plan, self.plan["batches"]
        shape = (plan["batch"], len(plan["fields"]), *plan["grid"])
        nbytes = int(np.prod(shape)) * 4
        shared = mmap.mmap(-1, 2 * self.slots * nbytes)  # anonymous and MAP_SHARED: the children see it
        buf = np.frombuffer(shared, np.float32).reshape(self.slots, 2, *shape)
        ctx = mp.get_context("fork")
        tasks = [ctx.SimpleQueue() for _ in range(self.workers)]
        done = ctx.SimpleQueue()

        def work(queue):
            while (k := queue.get()) is not None:
                self.fill(batches[k], buf[k % self.slots, 0], buf[k % self.slots, 1])
                done.put(k)

        procs = [ctx.Process(target=work, args=(q,), daemon=True) for q in tasks]
        for proc in procs:
            proc.start()
        try:
            for k in range(min(self.slots, len(batches))):
                tasks[k % self.workers].put(k)
            ready = set()
            for k in range(len(batches)):
                while k not in ready:
                    ready.add(done.get())
                ready.discard(k)
                yield buf[k % self.slots, 0], buf[k % self.slots, 1]
                if k + self.slots < len(batches):  # the consumer is done with batch k: reuse its slot
                    tasks[(k + self.slots) % self.workers].put(k + self.slots)
        finally:
            for proc in procs:
                proc.kill()


def anemoi_fill(samples):
    """Fill a batch from anemoi windows `ds[t:t+2]`, normalised straight into the output."""

    def fill(steps, x, y):
        for i, t in enumerate(steps):
            window = samples.ds[t : t + 2][:, samples.order, 0].reshape(2, len(samples.order), *samples.grid)
            np.subtract(window[0], samples.mean, out=x[i])
            np.subtract(window[1], samples.mean, out=y[i])
            x[i] /= samples.stdev
            y[i] /= samples.stdev

    return fill


def zarr_oindex_fill(plan, pipeline: str | None = None):
    """Fill a batch with ONE orthogonal read of zarr-python, `data.oindex[steps t and t + 1]`, opened in
    the worker (zarr's event-loop thread does not survive a fork). `pipeline`: zarr's
    `codec_pipeline.path`, set before the array is opened, since the array keeps the pipeline it was
    opened with."""
    import zarr  # imported here, before the fork, so that the import is not timed (as for every row)

    if pipeline:
        zarr.config.set({"codec_pipeline.path": pipeline})
    opened = {}

    def fill(steps, x, y):
        if "array" not in opened:
            opened["array"] = zarr.open_array(str(Path(plan["store"]) / "data"), mode="r")
        steps = np.asarray(steps)
        union = np.union1d(steps, steps + 1)
        block = opened["array"].oindex[union]
        np.take(block, np.searchsorted(union, steps), axis=0, out=x)
        np.take(block, np.searchsorted(union, steps + 1), axis=0, out=y)

    return fill


# -- insitubatch ------------------------------------------------------------------------------------
def insitubatch_rows(plan, store: str):
    """insitubatch's InSituDataset over the store through obstore, x = data[t] and y = data[t + 1] as
    two windowed views of one array (decoded once), numpy batches from its own event loop in this
    process, as its docs advise (no DataLoader workers). Its unit is the stored chunk, i.e. the shard:
    its splits are whole shards and it shuffles within blocks of shards, so it cannot follow the
    plan's order. Its train split is every shard whose windows all lie in canonstore's train split;
    a shard that straddles the val split cannot be split, so it is left out (on a one-shard store
    there is no such shard: the one shard is the train split, val included). Its cache budget is its
    default, the floor of two blocks of `block_chunks` shards."""
    import insitubatch
    from insitubatch import InSituDataset, SplitManifest, obstore_store

    path = Path(plan[store]).resolve()
    zstore = obstore_store(f"file://{path}")
    geometry = insitubatch.open_geometries(zstore, ["data"])["data"]
    spc, n = geometry.sample_chunk_size, geometry.n_samples
    last = plan["train_last"]  # the last train step t whose t + 1 is in train too
    train = [c for c in range(geometry.n_chunks) if min((c + 1) * spc, n) - 1 <= last]
    manifest = SplitManifest(
        n_chunks=geometry.n_chunks,
        sample_chunk_size=spc,
        n_samples=n,
        chunks={"train": train or [0], "val": [], "test": []},
        seed=0,
    )
    ds = InSituDataset(
        zstore,
        manifest,
        {"x": geometry, "y": geometry.shift(1)},
        batch_size=plan["batch"],
        block_chunks=2,
        seed=0,
    )
    plan["extra"] = {
        "shards": geometry.n_chunks,
        "shard_steps": spc,
        "train_shards": len(train or [0]),
        "val_kept_out": bool(train),
        "cache_budget_mb": round(ds.cache_budget_bytes / 1e6, 1),
        "store_mb": round(int(np.prod(geometry.shape)) * 4 / 1e6, 1),
    }

    def batches():
        for epoch in range(plan["passes"]):
            ds.set_epoch(epoch)
            for batch in ds.train:
                if len(batch) < plan["batch"]:
                    continue
                plan["last_steps"] = batch.sample_indices
                yield batch.arrays["x"], batch.arrays["y"]

    return batches()


# -- plumbing -----------------------------------------------------------------------------------------
class Pairs:
    """A map-style dataset of (x, y) at step t from a `samples[t]` reader (picklable to workers)."""

    def __init__(self, samples):
        self.samples = samples

    def __getitem__(self, t):
        return self.samples[t]


def dataloader(dataset, batches, plan):
    """A standard DataLoader over `batches` (lists of dataset indices), in the plan's order."""
    import torch

    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=plan["workers"], persistent_workers=plan["workers"] > 0
    )


def batch_dataloader(dataset, plan):
    """Each item is a whole batch; the workers take turns, one batch each."""
    import torch

    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=plan["workers"], persistent_workers=plan["workers"] > 0
    )


ROWS = {
    "canonstore-batch": canonstore_batch,
    "canonstore-shards": lambda plan: canonstore_batch(plan, "store_shards"),
    "canonstore-zstd": lambda plan: canonstore_batch(plan, "store_zstd"),
    "canonstore-blosc": lambda plan: canonstore_batch(plan, "store_blosc"),
    "canonstore-dataloader": store_dataloader,
    "anemoi": lambda plan: dataloader(Pairs(AnemoiSamples(plan)), plan["batches"], plan),
    "anemoi-fork": lambda plan: ForkedBatches(plan, anemoi_fill(AnemoiSamples(plan))),
    "xbatcher": lambda plan: xbatcher_rows(plan, chunks={}),
    "xbatcher-chunked": lambda plan: xbatcher_rows(plan, chunks={"time": 1}),
    "zarr-python": lambda plan: dataloader(Pairs(ZarrSamples(plan, "zarr")), plan["batches"], plan),
    "zarr-python-oindex": lambda plan: ForkedBatches(plan, zarr_oindex_fill(plan)),
    "zarr-python-fused": lambda plan: ForkedBatches(
        plan, zarr_oindex_fill(plan, "zarr.core.codec_pipeline.FusedCodecPipeline")
    ),
    "zarrs": lambda plan: dataloader(Pairs(ZarrSamples(plan, "zarrs")), plan["batches"], plan),
    "tensorstore": lambda plan: dataloader(Pairs(ZarrSamples(plan, "tensorstore")), plan["batches"], plan),
    "insitubatch": lambda plan: insitubatch_rows(plan, "store"),
    "insitubatch-shards": lambda plan: insitubatch_rows(plan, "store_shards"),
    "netcdf-xarray": netcdf_xarray,
    "netcdf4-batch": lambda plan: batch_dataloader(NetCDF4Batches(plan), plan),
    "memcpy": memcpy,
}


def measure(plan: dict, row: str, mode: str, out: Path | None, name: str | None = None) -> dict:
    """Time `row` over the plan: warm skips `warm_up_s` of batches first (at least 2: a loader's buffers and
    workers are new in its first passes; canonstore's ring of 7 pairs is touched over two) and reads until
    `seconds`; cold times the first pass from the loader's start (worker start-up included), as the first epoch
    after eviction.
    Imports and opening the files (`setup_s`) are never timed: each row function does them before it
    returns its iterable. `name`: the row's name in the results (default `row`), e.g. the same code run
    by a newer zarr-python."""
    name = name or row
    if mode == "warm":
        plan = {**plan, "epoch": plan["batches"], "batches": plan["batches"] * plan["passes"]}
    else:
        plan = {**plan, "epoch": plan["batches"], "passes": 1}
    start_setup = time.perf_counter()
    it = iter(ROWS[row](plan))
    setup = time.perf_counter() - start_setup
    if mode == "warm":
        k, warm_up, most = 0, time.perf_counter(), len(plan["batches"]) // 2  # at least half the plan is timed
        while k < 2 or (k < most and time.perf_counter() - warm_up < plan.get("warm_up_s", 0.0)):
            x, y = next(it)
            if k == 0 and out is not None and row != "memcpy":
                np.save(out / f"first-{name}-x.npy", np.asarray(x))
                np.save(out / f"first-{name}-y.npy", np.asarray(y))
                if "last_steps" in plan:  # a row in its own order: the steps t of its first batch
                    np.save(out / f"first-{name}-t.npy", np.asarray(plan["last_steps"]))
            k += 1
    n = nbytes = 0
    cap = plan["seconds"] * (1 if mode == "warm" else 2)
    start = time.perf_counter()
    for x, y in it:
        n, nbytes = n + len(x), nbytes + x.nbytes + y.nbytes
        if time.perf_counter() - start > cap:
            break
    elapsed = time.perf_counter() - start
    return {
        "row": name,
        "mode": mode,
        "samples": n,
        "seconds": round(elapsed, 3),
        "setup_s": round(setup, 2),
        "samples_per_s": round(n / elapsed, 2),
        "mb_per_s": round(nbytes / elapsed / 1e6, 1),
        # this process's own peak (not its workers'): what an in-process loader such as insitubatch holds
        "max_rss_mb": peak_rss_mb(),
        **plan.get("extra", {}),
    }


def peak_rss_mb(status: str = "/proc/self/status") -> float | None:
    """This process's own peak resident memory in MB (10^6 bytes, as the builds' `peak_rss_mb`); None if unknown.

    VmHWM, which a new program starts afresh. Not `ru_maxrss`: Linux carries that over `exec` from the memory
    the process had as a fork of its parent, so every row reported at least run.py's own peak (4.27 GB at size l,
    canonstore's and memcpy's rows included); and its unit differs by platform (kB here, bytes on macOS). The rows
    in the committed bench/peers-cpu.json predate this: kB / 1000, 2.4% below MB.
    """
    try:
        with open(status) as lines:
            for line in lines:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e6, 1)  # /proc counts in kB (1024 bytes)
    except OSError:  # no /proc
        pass
    return None


def main() -> None:
    plan_path, row, mode = sys.argv[1:4]
    plan = json.loads(Path(plan_path).read_text())
    out = Path(plan_path).parent
    print(json.dumps(measure(plan, row, mode, out, sys.argv[4] if len(sys.argv) > 4 else None)))


if __name__ == "__main__":
    main()
