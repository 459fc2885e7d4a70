"""Threads that overlap a build's steps: reading, statistics, checksums, writing and syncing to disk.

A build's work per block is mostly in calls that release the GIL (netCDF4/HDF5 reads, numpy, `os.pwrite`,
`os.fsync`, hashlib on large buffers, `zlib.crc32`), so two threads on two cores do nearly twice the work of
one. Two tools, both ordered, both bounded:

- `ordered_map(fn, items, threads)`: whole shard tasks side by side (the in-process executor), results in
  item order, so that the statistics merge and the progress are those of one task after another.
- `Stage(fn)`: one step of a task on a thread of its own (e.g. writing and hashing the blocks a task
  normalises), fed in order through a short queue.

An error in any thread is raised in the caller as it was raised there (same type, same message), and only
after every thread has stopped: the caller's cleanup (removing a staging store) never races a write. An error
of another thread at the same time is added to it as a note.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

_DONE = object()


def ordered_map(fn: Callable, items: Iterable, threads: int = 2) -> Iterator[tuple]:
    """Yield (item, fn(item)) for each item in order, running up to `threads` calls at once (none begins
    more than `threads` items ahead of the one yielded). An error is raised at its item, once the calls
    running beside it have returned; the calls not begun are dropped."""
    items = list(items)
    if threads <= 1:
        for item in items:
            yield item, fn(item)
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="canonstore-task")
    futures = []
    try:
        futures += [pool.submit(fn, item) for item in items[:threads]]
        for i, item in enumerate(items):
            result = futures[i].result()
            if i + threads < len(items):
                futures.append(pool.submit(fn, items[i + threads]))
            yield item, result
    except BaseException as exc:
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:  # a call beside the failed one that failed too: said, not dropped
            other = None if future.cancelled() else future.exception()
            if other is not None and other is not exc:
                exc.add_note(f"also, in another task: {type(other).__name__}: {other}")
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Stage:
    """Run `fn(item)` on a thread of its own for each item `put`, in order; at most `depth` items wait.

        with Stage(write_block) as writer:
            for block in blocks:
                writer.put(normalised(block))
        # here every block is written, or the first error of write_block was raised

    Leaving the `with` block waits for the items put; leaving it by an error drops the items still
    waiting and waits for the one being run. An error of `fn` is raised by the next `put` or at the end.
    """

    def __init__(self, fn: Callable, depth: int = 1, name: str = "canonstore-stage"):
        self._fn = fn
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Stage:
        self._thread.start()
        return self

    def put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        self._raise()

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            self._stop.set()
        if kind is None:
            self._queue.put(_DONE)
        else:
            self._drain_and_end()
        self._thread.join()
        if kind is None:
            self._raise()
        elif self._error is not None and self._error is not value:  # this thread failed too: said, not dropped
            value.add_note(f"also, in {self._thread.name}: {type(self._error).__name__}: {self._error}")

    def _drain_and_end(self) -> None:
        """Drop what waits (the caller failed) and tell the thread to end."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(_DONE)

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if self._stop.is_set():
                continue  # an error here or in the caller: drop the rest
            try:
                self._fn(item)
            except BaseException as exc:  # raised in the caller (put or exit)
                self._error = exc
                self._stop.set()


def prefetched(produce: Callable[[], Iterable], depth: int = 1, name: str = "canonstore-read") -> Iterator:
    """The items of `produce()`, made on a thread of its own at most `depth` ahead of the caller (e.g. the
    next block read from the sources while this one's statistics are taken). Its error is raised at the
    item where it happened; a caller that stops early (an error, `break`) stops the thread first."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in produce():
                while not stop.is_set():
                    try:
                        items.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((True, _DONE))
        except BaseException as exc:
            items.put((False, exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            ok, item = items.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # let a producer blocked on a full queue see `stop`
            with contextlib.suppress(queue.Empty):
                items.get(timeout=0.05)
        thread.join()
