"""The batch path: whole-batch gathers into pinned buffers, copied to the GPU ahead of use.

`workers` background threads fill host buffers, each gathering whole batches in turn (batch k by
thread k % workers; numpy releases the GIL while copying), and hand them over in order; the main
thread issues the host-to-device copy of batch k+1 on a side CUDA stream while batch k trains. There
are no DataLoader worker processes and no extra copies: memmap -> pinned buffer -> GPU. Static fields
and encodings are appended, the dtype converted and random patches cropped on the device; on the CPU
the batch is assembled in place instead.
"""

from __future__ import annotations

import contextlib
import queue
import threading

import numpy as np
import torch

from canonstore.buffers import page_aligned_empty
from canonstore.loaders.dataset import StoreDataset
from canonstore.loaders.patches import crop, epoch_patches, patch_indices
from canonstore.loaders.sampler import BatchSampler, epoch_seed

_DONE = object()


def _storage_users(tensor: torch.Tensor) -> int:
    """How many tensors share `tensor`'s memory (-1 when this torch cannot tell)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return -1 if count is None else count(tensor.untyped_storage()._cdata)


class BatchLoader:
    """Iterate `(x, y)` batches of a StoreDataset on `device`, prefetched; one pass = one epoch.

    Parameters
    ----------
    dataset : the StoreDataset to read.
    batch_size, shuffle, seed, drop_last, rank, world_size, even : see `BatchSampler`.
    device : where batches go ("cuda", "cpu", a torch.device); default cuda when available.
    workers : gather threads, each filling whole batches (no per-batch split and join: measured in
        bench/loader.py, splitting each batch over the threads cost 0.1-0.7 ms a batch). Keep it small on a GPU: every
        thread competes with the training loop for the GIL (on an H100, a UNet trained at 97% of its
        model-alone speed with 2 threads and at 79% with 8; bench/loader.py measures it).
    prefetch : batches gathered ahead of the one being used.
    patch_size : (lat, lon) size of random patches to crop per sample (`loaders.patches`), or None for whole
        fields; they wrap around in longitude only where the store's longitude is periodic
        (`Store.longitude_periodic`).
    patches_per_epoch : 0 (default): one random patch per sample, drawn per batch. s > 0: s patch
        centres drawn per epoch from (seed, epoch), and every sample of the epoch is cut at all s of
        them, so a batch of B samples yields B x s patches (sample-major). `last_patches` holds the
        (samples, rows, cols) of the batch just yielded, to cut loss weights the same way.
        `last_steps` holds the store step t of each of its samples (what a rollout needs for its encodings).
    dtype : dtype of the yielded tensors (a float16 store is sent as float16, converted on device).
    transform : called as `transform(x, y)` on each batch on the device, on whole fields (before random
        patches are cut from its result); returns (x, y). With patches, a transform that has a method
        `cut(x, y, rows, cols, samples)` returning those patches of its result (`CoarseUp` has) is called
        that way instead. The dataset's own per-sample `transform` is not used on this path.
    """

    def __init__(
        self,
        dataset: StoreDataset,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device=None,
        workers: int = 2,
        prefetch: int = 2,
        patch_size: tuple[int, int] | None = None,
        dtype: torch.dtype = torch.float32,
        rank: int | None = None,
        world_size: int | None = None,
        transform=None,
        even: bool | None = None,
        patches_per_epoch: int = 0,
    ):
        self.dataset = dataset
        self.sampler = BatchSampler(len(dataset), batch_size, shuffle, seed, drop_last, rank, world_size, even)
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.workers, self.prefetch, self.patch_size, self.dtype = max(1, workers), max(1, prefetch), patch_size, dtype
        self.seed, self.transform, self.patches_per_epoch = seed, transform, patches_per_epoch
        self.last_patches = self.last_steps = None
        if patch_size is not None and len(dataset.sample_space) != 2:
            raise ValueError(f"random patches need (lat, lon) samples; this store's samples are {dataset.sample_space}")
        self._static = None
        # Static fields are float32. Gathered into a buffer of a narrower store dtype they would be rounded
        # (float16: by up to 1.2e-3), so those buffers, and pinned ones, leave them out; `_finish` appends them.
        self._static_in_buffer = self.device.type != "cuda" and np.dtype(dataset.store_dtype) == np.float32
        self._cpu_ring: list = []  # (buffer pair, idle storage-user counts), see _unused_cpu_buffers

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def batch_sampler(self) -> BatchSampler:
        """The sampler, under the name a torch DataLoader gives its batch sampler (Lightning looks it up)."""
        return self.sampler

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass is epoch `epoch`, from its batch `start` on (resuming mid-epoch)."""
        self.sampler.set_epoch(epoch, start)

    def __iter__(self):
        epoch, skipped = self.sampler.epoch, self.sampler.start
        batches = list(self.sampler)
        cuda = self.device.type == "cuda"
        # Thread w gathers batches w, w + workers, ... into its own queue; the consumer takes them in turn, so
        # order is kept with no reordering. A thread holds at most `queued` ready batches and one in progress,
        # so workers * (queued + 1) buffers always leave the thread whose batch is next one to fill.
        workers = max(1, min(self.workers, len(batches)))
        queued = -(-self.prefetch // workers)
        free: queue.Queue = queue.Queue()  # free pinned buffers and the event marking the end of their last copy
        if cuda:
            for _ in range(workers * (queued + 1)):
                free.put((self._host_buffers(pin=True), None))
        ready = [queue.Queue(maxsize=queued) for _ in range(workers)]
        stop = threading.Event()
        # CPU buffers outlive the epoch: fresh ones cost page faults (measured: 4 new pairs an epoch took a
        # 23-batch epoch of 8 MB samples from 9.3 to 5.3 GB/s). Each pass takes the ring while it runs, so two
        # passes at once never share a buffer.
        ring, self._cpu_ring = self._cpu_ring, []
        ring_lock = threading.Lock()
        self._ring_size = workers * (queued + 1) + 3  # queued and filling, + pending, following and the caller's
        fillers = [
            threading.Thread(
                target=self._fill,
                args=(batches[w::workers], free, ready[w], stop, cuda, ring, ring_lock),
                daemon=True,
            )
            for w in range(workers)
        ]
        for filler in fillers:
            filler.start()
        patches_rng = torch.Generator().manual_seed(epoch_seed(self.seed, epoch, "patches"))
        self._epoch_patches = None
        if self.patch_size is not None and self.patches_per_epoch:  # one draw per epoch: resuming redraws the same
            self._epoch_patches = patch_indices(
                self.patches_per_epoch,
                self.dataset.sample_space,
                self.patch_size,
                patches_rng,
                periodic=self.dataset.longitude_periodic,
            )
        elif self.patch_size is not None:  # the skipped batches' draws, so later batches get the same patches
            for _ in range(skipped):
                patch_indices(
                    self.sampler.batch_size,
                    self.dataset.sample_space,
                    self.patch_size,
                    patches_rng,
                    periodic=self.dataset.longitude_periodic,
                )
        stream = torch.cuda.Stream(self.device) if cuda else None
        turns = (ready[i % workers] for i in range(len(batches)))
        try:
            pending = self._to_device(next(turns, None), free, stream)
            while pending is not _DONE:
                if isinstance(pending, BaseException):  # raised in its own turn, after the batches before it
                    raise pending
                following = self._to_device(next(turns, None), free, stream)
                x, y, event, positions = pending
                if event is not None:
                    torch.cuda.current_stream(self.device).wait_event(event)
                    x.record_stream(torch.cuda.current_stream(self.device))
                    y.record_stream(torch.cuda.current_stream(self.device))
                yield self._finish(x, y, patches_rng, positions)
                pending = following
        finally:
            stop.set()
            for filler, own in zip(fillers, ready):
                while filler.is_alive():  # unblock a filler that waits on its full queue
                    with contextlib.suppress(queue.Empty):
                        own.get(timeout=0.05)
                filler.join()
            self._cpu_ring = ring

    # -- host side (filler thread) ---------------------------------------------------------
    def _host_buffers(self, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch buffers, with room for the static fields where they are gathered into them."""
        x_shape, y_shape = self.dataset.batch_shapes(self.sampler.batch_size, static=self._static_in_buffer)
        if not pin:  # numpy's: it asks for transparent huge pages, torch's allocator does not (copies of 8 MB
            # samples into torch's buffers ran at 0.73-0.79 of the same copies into numpy's, bench/loader.py);
            # page-aligned, as the memmap's steps are (`canonstore.buffers`: 4K aliasing made copies 2-7x slower)
            dtype = self.dataset.store_dtype
            return torch.from_numpy(page_aligned_empty(x_shape, dtype)), torch.from_numpy(
                page_aligned_empty(y_shape, dtype)
            )
        dtype = torch.from_numpy(np.empty(0, self.dataset.store_dtype)).dtype
        return torch.empty(x_shape, dtype=dtype, pin_memory=True), torch.empty(y_shape, dtype=dtype, pin_memory=True)

    def _unused_cpu_buffers(self, ring: list) -> tuple[torch.Tensor, torch.Tensor]:
        """A buffer pair from `ring` that no batch refers to any more, else a new pair.

        Batches on the CPU are views of these buffers. Reusing one only once every tensor made from
        it is gone keeps batches valid for as long as the caller holds them, and saves the page
        faults of fresh memory, which cost more than the gather itself.
        """
        for pair, idle in ring:
            if idle[0] >= 0 and [_storage_users(t) for t in pair] == idle:
                return pair
        pair = self._host_buffers(pin=False)
        if len(ring) < self._ring_size:
            ring.append((pair, [_storage_users(t) for t in pair]))
        return pair

    def _fill(self, batches, free, ready, stop, cuda, ring, ring_lock) -> None:
        """Gather `batches` in order into free buffers, each handed to `ready`; an error is handed over too."""
        try:
            for positions in batches:
                if stop.is_set():
                    return
                if cuda:
                    full = self._next_free(free, stop)
                    if full is None:
                        return
                    x_buf, y_buf = full[0][: len(positions)], full[1][: len(positions)]
                else:
                    with ring_lock:  # the views mark the pair as in use before another thread looks
                        full = self._unused_cpu_buffers(ring)
                        x_buf, y_buf = full[0][: len(positions)], full[1][: len(positions)]
                self.dataset.gather(positions, x_buf.numpy(), y_buf.numpy(), self._static_in_buffer)
                ready.put((x_buf, y_buf, full if cuda else None, positions))
                del x_buf, y_buf, full  # hold no reference to a CPU batch once it is handed over
        except BaseException as exc:  # re-raised in the consumer, in this batch's turn
            ready.put(exc)

    @staticmethod
    def _next_free(free, stop):
        """A free pinned buffer pair, once its last copy to the GPU has finished (None when stopping)."""
        while not stop.is_set():
            try:
                buffers, event = free.get(timeout=0.1)
            except queue.Empty:
                continue
            if event is not None:
                event.synchronize()
            return buffers
        return None

    # -- device side (caller's thread) -----------------------------------------------------
    def _to_device(self, turn, free, stream):
        if turn is None:  # every batch was handed over
            return _DONE
        item = turn.get()
        if isinstance(item, BaseException):
            return item
        x_buf, y_buf, full, positions = item
        if stream is None:
            return x_buf, y_buf, None, positions
        with torch.cuda.stream(stream):
            x = x_buf.to(self.device, non_blocking=True)
            y = y_buf.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        free.put((full, event))  # reusable once `event` has passed
        return x, y, event, positions

    def _finish(self, x: torch.Tensor, y: torch.Tensor, patches_rng: torch.Generator, positions):
        x, y = x.to(self.dtype), y.to(self.dtype)
        steps = self.last_steps = self.dataset.times[np.asarray(positions, dtype=np.int64)]
        if not self._static_in_buffer and self.dataset.static.shape[0]:  # sent to the device once
            if self._static is None:
                self._static = torch.from_numpy(self.dataset.static).to(x.device, self.dtype)
            x = torch.cat([x, self._static.expand(x.shape[0], *self._static.shape)], dim=1)
        if self.dataset.encodings is not None:  # computed here, on the batch's device
            x = torch.cat([x, self.dataset.encodings.fields(steps, x.device).to(self.dtype)], dim=1)
        # A transform runs on whole fields: a patch is then cut from what validation sees. One that can cut
        # patches itself (`CoarseUp.cut`: the same numbers) is spared the work on the whole fields.
        cut = getattr(self.transform, "cut", None) if self.patch_size is not None else None
        if self.transform is not None and cut is None:
            x, y = self.transform(x, y)
        if self.patch_size is not None:
            if self._epoch_patches is not None:
                samples, rows, cols = epoch_patches(x.shape[0], *self._epoch_patches)
            else:
                rows, cols = patch_indices(
                    x.shape[0],
                    tuple(x.shape[-2:]),
                    tuple(self.patch_size),
                    patches_rng,
                    periodic=self.dataset.longitude_periodic,
                )
                samples = None
            self.last_patches = (samples, rows, cols)
            x, y = (cut or _crop_both)(x, y, rows, cols, samples)
        return x, y


def _crop_both(x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, samples):
    return crop(x, rows, cols, samples), crop(y, rows, cols, samples)
