"""Where the batch path's gap to memcpy-samples goes: five steps from the ceiling to BatchLoader, in one process.

    python bench/loader_gap.py STORE [--batch-size 32] [--workers 2] [--ring 3] [--rounds 30] [--json FILE]

Each round runs one train pass (epoch 0's batches, in the loader's order) of every step below, in turn, the
order reversed every other round; a step's ratio to the one before is the median of the rounds' MB/s ratios,
quartiles beside it. Runs in one process, the steps differ only by what each adds:

  stream           memcpy-samples as bench/loader.py's row runs it: one stream that never restarts, a pass as many
                   of its batches (after the ones it made while the other steps ran, untimed; and every pass, of
                   any step, starts once its threads idle again)
  memcpy-samples   the same ceiling restarted every pass, as every step after it (and the loader) is: each thread
                   copies its batches' steps with np.copyto into ONE reused buffer pair, handed over while it
                   refills it (which no loader may do)
  ring             the same copies into RING pairs a thread, in turn: the caller keeps its batch while the next are
                   filled (3 a thread at least; 2 threads x 3 is the 6 pairs the loader's ring grows to here)
  gather           the same threads and ring, each batch put by StoreDataset.gather (the loader's own copies:
                   windows, static fields, shard runs, the read-ahead's look)
  loader           BatchLoader itself: its buffer ring and the check that no batch still uses a pair, torch tensors,
                   the consumer's `_finish`, its generator (which takes the next batch before it yields one: a
                   batch more in hand than the steps before)

The bytes per pass differ (gather's x holds the static fields): ratios are of MB/s, as bench/loader.py's. float32
stores only: the loader would convert another dtype (a copy more) and leave the static fields out of its buffers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np
from sample_batches import batches_of, put_samples, sampler_batches, uncompressed  # this script's neighbour

from canonstore import open_store
from canonstore.buffers import page_aligned_empty
from canonstore.loaders import BatchLoader, BatchSampler, StoreDataset

STEPS = ("stream", "memcpy-samples", "ring", "gather", "loader")


def passes(store, batch_size: int, workers: int, ring: int) -> dict:
    """Each step's pass: a function that starts one and returns its (x, y) batches."""
    if np.dtype(store.dtype) != np.float32:
        raise SystemExit(f"{store.path}: a {store.dtype} store; loader_gap compares float32 stores' steps only")
    dataset = StoreDataset(store, "train", lead=1)
    times = sampler_batches(store, batch_size)
    positions = [np.asarray(p) for p in BatchSampler(len(dataset), batch_size, True, 0, True)]
    sample, dtype = store.shape[1:], store.dtype

    def pairs(shapes, count):
        return [[tuple(page_aligned_empty(s, dtype) for s in shapes) for _ in range(count)] for _ in range(workers)]

    one, rotated = pairs([(batch_size, *sample)] * 2, 1), pairs([(batch_size, *sample)] * 2, ring)
    gathered = pairs(dataset.batch_shapes(batch_size, static=True), ring)
    loader = BatchLoader(dataset, batch_size, seed=0, device="cpu", workers=workers, drop_last=True)

    def gather(_read, x, y, batch):  # the loader's own copies: no per-sample `read`
        dataset.gather(batch, x, y, True)

    def loader_pass():
        loader.set_epoch(0)  # each pass epoch 0's batches, as the other steps' (a pass moves the sampler on)
        return iter(loader)

    fill = uncompressed(store)
    stream = Stream(fill, times, workers, batch_size, sample, dtype, pairs([(batch_size, *sample)] * 2, 1))

    def after_settling(make):
        def start():
            stream.settle()  # untimed: no pass shares the cores with the stream's leftover copies
            return make()

        return start

    steps = {
        "stream": stream,
        "memcpy-samples": lambda: batches_of(fill, times, workers, batch_size, sample, dtype, 1, buffers=one),
        "ring": lambda: batches_of(fill, times, workers, batch_size, sample, dtype, 1, buffers=rotated),
        "gather": lambda: batches_of(fill, positions, workers, batch_size, (), dtype, 1, buffers=gathered, put=gather),
        "loader": loader_pass,
    }
    return {name: after_settling(make) for name, make in steps.items()}


class Stream:
    """memcpy-samples as bench/loader.py's row runs it: one stream of batches that never restarts. A pass is as many
    of its batches, after those its threads made while other steps ran (one queued and one filled a thread);
    `settle` waits until they have made those again and idle, so that the next pass, of any step, is timed alone."""

    def __init__(self, fill, times, workers: int, batch_size: int, sample: tuple, dtype, buffers):
        self.workers, self.length, self.made, self.taken = workers, len(times), [], 0
        self.batches = batches_of(fill, times, workers, batch_size, sample, dtype, None, buffers=buffers, put=self._put)

    def _put(self, read, x, y, times) -> None:
        put_samples(read, x, y, times)
        self.made.append(None)  # one append a batch its threads filled (atomic under the GIL)

    def settle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.taken and len(self.made) < self.taken + 2 * self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the stream's threads made {len(self.made)} batches in {timeout} s, not the "
                    f"{self.taken + 2 * self.workers} they idle at"
                )
            time.sleep(0.0005)

    def __call__(self):
        for _ in range(2 * self.workers):  # made while other steps ran: not timed
            next(self.batches)
        self.taken += 2 * self.workers + self.length  # a pass is read to its end
        return itertools.islice(self.batches, self.length)


def measure(runs: dict, rounds: int, warm_passes: int = 3) -> dict:
    """MB/s of every pass of every step, steps alternated round by round."""
    for _ in range(warm_passes):  # every buffer touched, the loader's ring grown
        for run in runs.values():
            for _batch in run():
                pass
    mb_per_s: dict = {name: [] for name in runs}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            batches = runs[name]()  # a pass's threads start at its first batch, timed
            start = time.perf_counter()
            nbytes = sum(x.nbytes + y.nbytes for x, y in batches)
            mb_per_s[name].append(nbytes / (time.perf_counter() - start) / 1e6)
    return mb_per_s


def ratio(after: list, before: list) -> dict:
    """The median and quartiles of the round-by-round ratios."""
    ratios = [a / b for a, b in zip(after, before, strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return {"median": round(statistics.median(ratios), 3), "quartiles": [round(low, 3), round(high, 3)]}


def summary(mb_per_s: dict) -> list[dict]:
    """A row per step: its median MB/s, its ratio to the step before and to the ceiling."""
    rows = []
    for before, name in zip((None, *STEPS), STEPS):
        row = {"step": name, "mb_per_s": round(statistics.median(mb_per_s[name]), 1), "rounds": len(mb_per_s[name])}
        if before is not None:
            row["of_step_before"] = ratio(mb_per_s[name], mb_per_s[before])
            row["of_memcpy_samples"] = ratio(mb_per_s[name], mb_per_s["memcpy-samples"])
            row["of_stream"] = ratio(mb_per_s[name], mb_per_s["stream"])
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ring", type=int, default=3, help="buffer pairs a thread in the ring and gather steps")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    rows = summary(measure(passes(open_store(args.store), args.batch_size, args.workers, args.ring), args.rounds))
    print(f"{args.store}, batch {args.batch_size}, {args.workers} threads, {args.rounds} rounds (MB/s ratios)")
    print(f"{'step':<16}{'MB/s':>9}{'of step before':>24}{'of memcpy-samples':>24}{'of stream':>24}")
    for row in rows:
        cells = [row.get(k) for k in ("of_step_before", "of_memcpy_samples", "of_stream")]
        text = [f"x{c['median']:.3f} ({c['quartiles'][0]:.3f}-{c['quartiles'][1]:.3f})" if c else "" for c in cells]
        print(f"{row['step']:<16}{row['mb_per_s']:>9.0f}" + "".join(f"{t:>24}" for t in text))
    if args.json:
        settings = {k: getattr(args, k) for k in ("batch_size", "workers", "ring", "rounds")}
        args.json.write_text(json.dumps({"store": str(args.store), **settings, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
