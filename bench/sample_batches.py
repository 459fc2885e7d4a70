"""The least a batch loader can do, shared by bench/loader.py (memcpy-samples), bench/compressed_layout.py and
bench/loader_gap.py:
each batch's samples, at the sampler's positions, put into reused buffers by threads that fill whole batches in
turn (no split, no join, no buffer bookkeeping). What puts a sample there (a memmap copy, a read, a decode) is a
`fill`: called once per thread, it returns that thread's `read(out, step)`."""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading

import numpy as np

from canonstore.buffers import page_aligned_empty


def sampler_batches(store, batch_size: int) -> list[np.ndarray]:
    """Epoch 0's batches of x steps, as BatchLoader's first epoch (train split, lead 1, shuffled, seed 0)."""
    from canonstore.loaders import BatchSampler
    from canonstore.loaders.windows import Windows

    windows = Windows.of(store, "train", 1, 0, None, None, True, False, ())
    return [windows.times[np.asarray(p)] for p in BatchSampler(len(windows.times), batch_size, True, 0, True)]


def put_samples(read, x: np.ndarray, y: np.ndarray, times) -> None:
    """Put each batch sample's x and y steps with `read(out, step)`: steps t and t + 1."""
    for k, t in enumerate(times):
        read(x[k], t)
        read(y[k], t + 1)


def batches_of(fill, batches, workers: int, batch_size: int, sample: tuple, dtype, epochs, buffers=None, put=None):
    """(x, y) batches in order, thread w filling batches w, w + workers, ... into its own reused buffers.

    `buffers[w]`, where given: thread w's buffer pairs, used in turn and kept across calls (default: one new pair,
    refilled as soon as it is handed over). A thread may have one batch in its queue and fill the next while the
    caller holds one: the caller can keep its latest batch unchanged only with 3 pairs or more a thread. Two calls
    at once must not share them. `put(read, x, y, batch)` puts a batch into a pair (default `put_samples`)."""
    done, stop = object(), threading.Event()
    if len(batches) < workers:  # a thread without batches would never hand anything over
        raise SystemExit(f"{len(batches)} batches for {workers} threads: a smaller --batch-size or fewer --workers")

    shape, put = (batch_size, *sample), put or put_samples

    def work(w: int, handed: queue.Queue) -> None:
        try:
            pairs = buffers[w] if buffers is not None else [tuple(page_aligned_empty(shape, dtype) for _ in "xy")]
            read, turn = fill(), itertools.cycle(pairs)  # fill: per-thread state (a read buffer)
            for _ in itertools.count() if epochs is None else range(epochs):
                for times in batches[w::workers]:
                    if stop.is_set():
                        return
                    x, y = next(turn)
                    put(read, x, y, times)
                    handed.put((x, y))
            handed.put(done)
        except BaseException as exc:  # raised in the consumer, not a thread that dies and leaves it waiting
            handed.put(exc)

    handed = [queue.Queue(maxsize=1) for _ in range(workers)]
    threads = [threading.Thread(target=work, args=(w, handed[w]), daemon=True) for w in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for i in itertools.count():
            item = handed[i % workers].get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # closed early (warm rows): stop the threads, each maybe waiting on its full queue
        stop.set()
        for thread, own in zip(threads, handed):
            while thread.is_alive():
                with contextlib.suppress(queue.Empty):
                    own.get(timeout=0.05)


def uncompressed(store):
    """The fill that copies each step from the store's memmap (bench/loader.py's memcpy-samples)."""
    steps = [store.array[t] for t in range(store.shape[0])]  # views: the shard of a step is looked up once

    def fill():
        return lambda out, t: np.copyto(out, steps[t])

    return fill
