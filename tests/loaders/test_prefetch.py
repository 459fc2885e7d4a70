"""BatchLoader: the batch path yields exactly the dataset's samples, reproducibly, on CPU and CUDA."""

import mmap

import numpy as np
import pytest
import torch

from canonstore import open_dataset
from canonstore.loaders import BatchLoader
from canonstore.preprocess import build
from tests.helpers import demo_recipe


def _run(loader):
    positions = list(loader.sampler)  # epoch 0's batches ...
    loader.set_epoch(0)
    return positions, list(loader)  # ... and what the loader yields for epoch 0


@pytest.mark.parametrize("workers", [1, 3])
def test_batches_are_the_sampled_samples(tiny_store, workers):
    ds = open_dataset(tiny_store, "val", history=1, channels=["z500", "t2m"])
    loader = BatchLoader(ds, batch_size=64, seed=5, device="cpu", workers=workers)
    positions, batches = _run(loader)
    assert len(batches) == len(loader) == -(-len(ds) // 64)
    for p, (x, y) in zip(positions, batches):
        ex, ey = (np.stack(v) for v in zip(*(ds[i] for i in p)))
        assert x.dtype == torch.float32 and x.shape == (len(p), 6) + ds.sample_space
        np.testing.assert_array_equal(x.numpy(), ex)
        np.testing.assert_array_equal(y.numpy(), ey)
    assert sorted(i for p in positions for i in p) == list(range(len(ds)))


def test_same_seed_same_batches_for_any_number_of_workers(tiny_store):
    ds = open_dataset(tiny_store, "train")
    runs = [list(BatchLoader(ds, 32, seed=9, device="cpu", workers=w, patch_size=(4, 8))) for w in (1, 2, 1)]
    for other in runs[1:]:
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(runs[0], other))
    assert runs[0][0][0].shape == (32, 17 + 2, 4, 8)  # channels and the two static fields
    loader = BatchLoader(ds, 32, seed=9, device="cpu")
    first, second = next(iter(loader)), next(iter(loader))  # the epoch advances
    assert not torch.equal(first[0], second[0])


@pytest.mark.parametrize("workers", [1, 3])  # 3 threads fill batches at once from one ring
def test_cpu_buffers_are_reused_across_epochs_but_never_under_a_held_batch(tiny_store, monkeypatch, workers):
    ds = open_dataset(tiny_store, "train")
    allocations = []
    host_buffers = BatchLoader._host_buffers
    monkeypatch.setattr(
        BatchLoader, "_host_buffers", lambda self, pin: allocations.append(pin) or host_buffers(self, pin)
    )
    loader = BatchLoader(ds, 16, device="cpu", workers=workers, shuffle=False)
    for _ in loader:  # one epoch fills the ring ...
        pass
    first_epoch = len(allocations)
    for _ in range(2):  # ... later epochs take their buffers from it
        for _ in loader:
            pass
    ring_size = workers * (-(-loader.prefetch // workers) + 1) + 3  # queued and filling, pending, following, caller's
    assert len(allocations) <= ring_size < 3 * first_epoch  # the ring's size, not per epoch
    held = list(loader)  # every batch of an epoch kept ...
    list(loader)  # ... while the next epoch runs
    for k, (x, y) in enumerate(held):
        ex, ey = (np.stack(v) for v in zip(*(ds[i] for i in range(16 * k, min(16 * k + 16, len(ds))))))
        np.testing.assert_array_equal(x.numpy(), ex)
        np.testing.assert_array_equal(y.numpy(), ey)


def test_breaking_out_early_and_errors_do_not_hang(tiny_store):
    ds = open_dataset(tiny_store, "train")
    loader = BatchLoader(ds, 16, device="cpu", prefetch=1)
    for k, _ in enumerate(loader):
        if k == 2:
            break

    def broken(*args):
        raise OSError("disk went away")  # raised in the filler thread

    ds.gather = broken
    with pytest.raises(OSError, match="disk went away"):
        list(loader)


def test_an_error_in_one_gather_thread_arrives_in_its_batch_turn(tiny_store):
    ds = open_dataset(tiny_store, "train")
    gather = ds.gather

    def broken_at_batch_4(positions, *args):
        if positions[0] == 4 * 8:
            raise OSError("disk went away at batch 4")
        return gather(positions, *args)

    ds.gather = broken_at_batch_4
    loader = BatchLoader(ds, 8, device="cpu", workers=3, shuffle=False)
    delivered = []
    with pytest.raises(OSError, match="batch 4"):
        for x, _ in loader:
            delivered.append(x.clone())
    assert len(delivered) == 4  # batches 0-3, from all three threads, in order
    for k, x in enumerate(delivered):
        np.testing.assert_array_equal(x.numpy(), np.stack([ds[i][0] for i in range(8 * k, 8 * k + 8)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_match_the_cpu_ones(tiny_store):
    ds = open_dataset(tiny_store, "train", history=1)
    gpu = list(BatchLoader(ds, 32, seed=2, device="cuda", workers=2, prefetch=2))
    cpu = list(BatchLoader(ds, 32, seed=2, device="cpu"))
    assert len(gpu) == len(cpu) and gpu[0][0].device.type == "cuda"
    for (gx, gy), (cx, cy) in zip(gpu, cpu):
        assert torch.equal(gx.cpu(), cx) and torch.equal(gy.cpu(), cy)
    patches = list(BatchLoader(ds, 32, seed=2, device="cuda", patch_size=(4, 8)))
    patches_cpu = list(BatchLoader(ds, 32, seed=2, device="cpu", patch_size=(4, 8)))
    assert all(torch.equal(a[0].cpu(), b[0]) for a, b in zip(patches, patches_cpu))


def test_a_batch_changed_in_place_by_the_caller_never_changes_a_later_batch(tiny_store):
    """CPU batches are views of reused buffers: every byte of one, static fields included, is written again."""
    ds = open_dataset(tiny_store, "train")
    loader = BatchLoader(ds, 16, device="cpu", workers=2, shuffle=False)
    for x, y in loader:  # e.g. a training loop that normalises in place
        x.fill_(float("nan"))
        y.fill_(float("nan"))
    for k, (x, y) in enumerate(loader):
        ex, ey = (np.stack(v) for v in zip(*(ds[i] for i in range(16 * k, min(16 * k + 16, len(ds))))))
        np.testing.assert_array_equal(x.numpy(), ex)
        np.testing.assert_array_equal(y.numpy(), ey)


@pytest.fixture(scope="module")
def half_store(tiny_raw, tmp_path_factory):
    folder = tmp_path_factory.mktemp("half")
    recipe = demo_recipe(folder, tiny_raw, storage={"dtype": "float16", "shard_mb": 0.2})
    return build(recipe, folder / "half.zarr", progress=False).path


@pytest.mark.parametrize(
    "workers, options",
    [
        (1, {}),
        (3, {}),
        (2, {"static": False}),  # no static fields to append
        (2, {"static": ["orography"], "channels": ["t2m", "z500"], "history": 1}),  # a subset, after a window
        (2, {"encodings": ["latlon", "doy", "hod"]}),  # encodings come after the appended static fields
    ],
)
def test_a_float16_store_gives_the_samples_static_fields_unrounded(half_store, workers, options):
    """Static fields are float32; gathered into a float16 batch buffer they were rounded by up to 1.2e-3. Appended
    after the gather, they must keep x's channel order (dynamic, static, encodings) for any choice of them."""
    ds = open_dataset(half_store, "val", **options)
    positions, batches = _run(BatchLoader(ds, batch_size=16, seed=1, device="cpu", workers=workers))
    for p, (x, y) in zip(positions, batches):
        ex, ey = (np.stack(v) for v in zip(*(ds[i] for i in p)))
        assert x.dtype == torch.float32 and x.shape == ex.shape
        np.testing.assert_array_equal(x.numpy(), ex)
        np.testing.assert_array_equal(y.numpy(), ey)


def test_cpu_batches_and_gathers_start_on_a_page_boundary(tiny_store):
    # A memmap's steps are page-aligned; a destination 16 bytes past a page (where glibc puts a large
    # np.empty) made every copy 2-7x slower (4K aliasing, canonstore.buffers).
    page = mmap.PAGESIZE
    ds = open_dataset(tiny_store, "train")
    loader = BatchLoader(ds, 16, device="cpu", workers=3)
    addresses = [t.data_ptr() for _ in range(2) for batch in loader for t in batch]
    assert len(addresses) > 8 and all(a % page == 0 for a in addresses)
    x, y = ds.gather([0, 3, 5])
    assert x.ctypes.data % page == 0 and y.ctypes.data % page == 0
