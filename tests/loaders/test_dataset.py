"""StoreDataset: windows inside one split, channel selection, static fields, batch gather, pickling."""

import os
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch

from canonstore import open_dataset, open_store
from canonstore.errors import StoreError
from canonstore.formats import readahead
from canonstore.formats.readahead import ReadAhead
from canonstore.loaders import StoreDataset, sample_times, seeded_generator, worker_init_fn
from canonstore.preprocess import build
from canonstore.splits import SPLIT_CODES
from tests.helpers import demo_recipe


def test_windows_never_leave_their_split():
    labels = np.array([0, 0, 0, 0, 3, 1, 1, 1, 0, 0], dtype=np.int8)
    assert sample_times(labels, "train", history=0, lead=1).tolist() == [0, 1, 2, 8]
    assert sample_times(labels, "train", history=1, lead=1).tolist() == [1, 2]
    assert sample_times(labels, "val", history=1, lead=1).tolist() == [6]
    assert sample_times(labels, "val", history=2, lead=1).tolist() == []
    with pytest.raises(ValueError, match="lead"):
        sample_times(labels, "train", history=0, lead=-1)


def test_sample_is_the_window_from_the_store(tiny_store):
    store = open_store(tiny_store)
    ds = open_dataset(store, "val", lead=2, history=1, channels=["z500", "t2m"], targets=["t2m"])
    assert ds.input_channels == ["z500@t-1", "t2m@t-1", "z500", "t2m", "lsm", "orography"]
    assert ds.target_channels == ["t2m"]
    val = store.split_indices("val")
    assert ds.times[0] == val[0] + 1 and ds.times[-1] == val[-1] - 2 and len(ds) == val.size - 3
    c = [store.channels.index("z500"), store.channels.index("t2m")]
    for i in (0, 17, len(ds) - 1):
        x, y = ds[i]
        t = int(ds.times[i])
        assert x.dtype == torch.float32 and x.shape == (6,) + store.shape[2:]
        np.testing.assert_array_equal(x[:2], store.array[t - 1, c])
        np.testing.assert_array_equal(x[2:4], store.array[t, c])
        np.testing.assert_array_equal(x[4], store.static["lsm"])
        np.testing.assert_array_equal(y[0], store.array[t + 2, c[1]])
        assert (store.splits[t - 1 : t + 3] == SPLIT_CODES["val"]).all()


def test_defaults_all_channels_and_bad_arguments(tiny_store):
    store = open_store(tiny_store)
    ds = open_dataset(store, "train", static=False)
    x, y = ds[0]
    assert x.shape == y.shape == store.shape[1:]
    with pytest.raises(ValueError, match=r"unknown channel\(s\) \['z501'\]"):
        open_dataset(store, "train", channels=["z500", "z501"])
    with pytest.raises(ValueError, match="unknown static"):
        open_dataset(store, "train", static=["sea_ice"])
    with pytest.raises(ValueError, match="unknown split"):
        open_dataset(store, "training")
    with pytest.raises(StoreError, match="split 'val' has no window"):
        open_dataset(store, "val", lead=5000)


@pytest.mark.parametrize("kwargs", [{}, {"history": 2, "lead": 3}, {"channels": ["t2m", "z500"], "targets": ["msl"]}])
def test_gather_equals_samples_stacked(tiny_store, kwargs):
    ds = open_dataset(tiny_store, "train", **kwargs)
    positions = [0, 5, 6, 400, len(ds) - 1]
    x, y = ds.gather(positions)
    assert x.dtype == np.float32 and x.flags.c_contiguous
    for k, i in enumerate(positions):
        xi, yi = ds[i]
        np.testing.assert_array_equal(x[k], xi.numpy())
        np.testing.assert_array_equal(y[k], yi.numpy())
    out_x, out_y = np.full_like(x, np.nan), np.full_like(y, np.nan)
    ds.gather(positions, out_x, out_y)  # in place, every element written
    np.testing.assert_array_equal(out_x, x)
    np.testing.assert_array_equal(out_y, y)


def test_gather_of_windows_across_shard_boundaries(tiny_store):
    """Windows of whole steps are copied as slices: those that straddle two shards too."""
    store = open_store(tiny_store)
    ds = open_dataset(store, "train", history=2)
    assert store.array.shards > 1
    whole = np.asarray(store.array[:])  # every step, joined once
    positions = np.arange(len(ds))
    x, y = ds.gather(positions)
    dynamic = 3 * len(store.channels)
    for k in positions:
        t = int(ds.times[k])
        np.testing.assert_array_equal(x[k, :dynamic], whole[t - 2 : t + 1].reshape(dynamic, *whole.shape[2:]))
        np.testing.assert_array_equal(y[k], whole[t + 1])


def test_compressed_and_float16_stores_give_the_same_samples(tiny_raw, tiny_store, tmp_path):
    plain = open_dataset(tiny_store, "test", history=1, channels=["u850", "msl"])
    for storage, atol in (({"compression": "zstd", "shard_mb": 1}, 0), ({"dtype": "float16"}, 2e-3)):
        recipe = demo_recipe(tmp_path, tiny_raw, name=f"demo-{len(storage)}-{atol}", storage=storage)
        other = open_store(build(recipe, tmp_path / f"{recipe.stem}.zarr", progress=False).path)
        ds = open_dataset(other, "test", history=1, channels=["u850", "msl"])
        x, y = ds.gather([3, 1, 200])
        px, py = plain.gather([3, 1, 200])
        np.testing.assert_allclose(x.astype(np.float32), px, atol=atol * 8, rtol=atol)
        np.testing.assert_allclose(ds[200][1].numpy(), py[2], atol=atol * 8, rtol=atol)
        assert x.dtype == other.dtype
        whole = open_dataset(other, "test", history=1, lead=[1, 2])  # all channels: windows of whole steps
        wx, wy = whole.gather([3, 1, 200])
        for k, i in enumerate([3, 1, 200]):  # decoded steps, then one copy per window and per lead
            np.testing.assert_array_equal(wx[k], whole[i][0].numpy().astype(other.dtype))
            np.testing.assert_array_equal(wy[k], whole[i][1].numpy().astype(other.dtype))


def test_gather_refuses_outputs_it_could_not_fill_in_place(tiny_store):
    ds = open_dataset(tiny_store, "train")
    x, y = ds.gather([0, 1])
    wide = np.empty((x.shape[0], x.shape[1] + 1) + x.shape[2:], x.dtype)[:, 1:]  # the right shape, not contiguous
    with pytest.raises(ValueError, match="C-contiguous"):
        ds.gather([0, 1], wide, y)


def test_pickles_without_the_data_and_reopens_lazily(tiny_store):
    ds = open_dataset(tiny_store, "train")
    ds[0]  # maps the array in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000 < open_store(tiny_store).array.nbytes
    again = pickle.loads(blob)
    assert again._array is None and again._read_ahead is None  # its cold/warm state is per mapping too
    np.testing.assert_array_equal(again[3][0], ds[3][0])


def _epoch(ds, workers, seed, context=None):
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=16,
        shuffle=True,
        num_workers=workers,
        generator=seeded_generator(seed),
        worker_init_fn=worker_init_fn,
        multiprocessing_context=context if workers else None,
    )
    return [(x, y) for _, (x, y) in zip(range(6), loader)]


def test_dataloader_is_reproducible_with_0_and_2_workers(tiny_store):
    ds = open_dataset(tiny_store, "train", history=1, channels=["z500", "t850"])
    serial = _epoch(ds, 0, seed=7)
    for workers, context in ((2, "fork"), (2, "spawn")):
        parallel = _epoch(ds, workers, seed=7, context=context)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(serial, parallel))
    other = _epoch(ds, 0, seed=8)
    assert not torch.equal(serial[0][0], other[0][0])


def test_gather_without_static_is_the_dynamic_part(tiny_store):
    ds = open_dataset(tiny_store, "train", history=1, channels=["z500", "t2m"])
    with_static, y = ds.gather([1, 50, 51])
    without, y2 = ds.gather([1, 50, 51], static=False)
    assert without.shape[1] == with_static.shape[1] - 2 == 4
    np.testing.assert_array_equal(without, with_static[:, :4])
    np.testing.assert_array_equal(y2, y)


def test_transform_hook_on_samples_and_batches(tiny_store):
    from canonstore.loaders import BatchLoader

    def scale(x, y):
        return x * 2, y - 1

    plain, scaled = open_dataset(tiny_store, "val"), open_dataset(tiny_store, "val", transform=scale)
    torch.testing.assert_close(scaled[4][0], plain[4][0] * 2)
    torch.testing.assert_close(scaled[4][1], plain[4][1] - 1)
    batches = BatchLoader(plain, 8, shuffle=False, device="cpu", transform=scale)
    x, y = next(iter(batches))
    torch.testing.assert_close(x, torch.stack([plain[i][0] for i in range(8)]) * 2)


def test_gaps_end_windows_as_split_boundaries_do():
    labels = np.zeros(10, dtype=np.int8)
    assert sample_times(labels, "train", history=0, lead=1, gaps=[3]).tolist() == [0, 1, 2, 4, 5, 6, 7, 8]
    assert sample_times(labels, "train", history=1, lead=2, gaps=[3]).tolist() == [1, 5, 6, 7]
    assert sample_times(labels, "train", history=1, lead=2, gaps=[3, 6]).tolist() == [1]
    assert sample_times(labels, "train", history=0, lead=0, gaps=[3]).tolist() == list(range(10))


def test_no_window_spans_a_time_gap_in_the_store_or_the_netcdf_baseline(gappy_store):
    from canonstore.loaders import RawSourceDataset

    store = open_store(gappy_store)
    assert store.gaps.tolist() == [181]  # 2000-06-30 -> 2000-08-01
    for lead, history in ((1, 0), (4, 2)):
        ds = open_dataset(store, "train", lead=lead, history=history)
        span = (store.time[ds.times + lead] - store.time[ds.times - history]) / np.timedelta64(1, "D")
        assert np.all(span == lead + history) and ds.times.size == 366 - 31 - 2 * (lead + history)
        raw = RawSourceDataset(store, "train", lead=lead, history=history, target_masks=True)
        assert np.array_equal(raw.times, ds.times)
    mapped = open_dataset(store, "train", lead=4, history=2, target_masks=True)
    for i in (0, 150, len(mapped) - 1):  # the same windows, masks included
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(raw[i], mapped[i]))


def test_valid_channels_are_inputs_only_unless_named_as_targets(gappy_store):
    store = open_store(gappy_store)
    assert store.channels == ["x", "y", "x_valid"]
    ds = open_dataset(store, "train")
    assert ds.input_channels == ["x", "y", "x_valid"] and ds.target_channels == ["x", "y"]
    assert open_dataset(store, "train", targets=["x", "x_valid"]).target_channels == ["x", "x_valid"]


def test_target_masks_travel_with_the_targets_in_one_gather(gappy_store):
    store = open_store(gappy_store)
    ds = open_dataset(store, "test", lead=1, target_masks=True)
    assert ds.masked_targets == ["x"] and ds.y_channels.tolist() == [0, 1, 2]
    x, y = ds.gather(np.arange(5))
    assert y.shape == (5, 3, 2, 3)
    np.testing.assert_array_equal(y[:, 2], store.array[ds.times[:5] + 1, 2])
    assert torch.equal(ds[3][1], torch.from_numpy(y[3]))


def test_several_leads_stack_the_targets_nearest_first(tiny_store):
    store = open_store(tiny_store)
    ds = open_dataset(store, "val", lead=[1, 2, 4], history=1, targets=["t2m", "z500"])
    assert ds.leads == (1, 2, 4) and ds.target_channels == ["t2m", "z500"]
    assert ds.lead_channels == ["t2m@t+1", "z500@t+1", "t2m@t+2", "z500@t+2", "t2m@t+4", "z500@t+4"]
    assert np.array_equal(ds.times, open_dataset(store, "val", lead=4, history=1).times)  # the window reaches lead 4
    c = [store.channels.index("t2m"), store.channels.index("z500")]
    positions = [0, 9, len(ds) - 1]
    x, y = ds.gather(positions)
    assert y.shape == (3, 6) + store.shape[2:]
    for k, i in enumerate(positions):
        t = int(ds.times[i])
        for j, lead in enumerate((1, 2, 4)):
            np.testing.assert_array_equal(y[k, 2 * j : 2 * j + 2], store.array[t + lead, c])
        np.testing.assert_array_equal(ds[i][1].numpy(), y[k])  # the per-sample path agrees
    with pytest.raises(ValueError, match="distinct ascending"):
        open_dataset(store, "val", lead=[2, 1])


def test_target_masks_travel_with_each_lead(gappy_store):
    from canonstore.training.metrics import TargetMasks

    store = open_store(gappy_store)
    ds = open_dataset(store, "test", lead=[1, 3], target_masks=True)
    x, y = ds.gather(np.arange(6))
    assert y.shape == (6, 6, 2, 3)  # per lead: x, y, x_valid
    targets, valid = TargetMasks(store, ds).split(torch.from_numpy(y))
    assert targets.shape == valid.shape == (6, 4, 2, 3)  # x@t+1, y@t+1, x@t+3, y@t+3
    for j, lead in enumerate((1, 3)):
        truth = store.array[ds.times[:6] + lead]
        np.testing.assert_array_equal(targets[:, 2 * j : 2 * j + 2].numpy(), truth[:, :2])
        observed = store.denormalise(truth.astype(np.float64))[:, 2] > 0.5
        assert torch.equal(valid[:, 2 * j], torch.from_numpy(observed).float())
        assert bool((valid[:, 2 * j + 1] == 1).all())  # y was never filled
    assert not bool(valid.all())


def test_rollout_windows_never_cross_splits_or_gaps(gappy_store):
    """rollout K at lead L: every target t + L .. t + K L lies in the split and run of steps of t - history
    (a rollout's leads, `lead_times`; a training config refuses history with L > 1, the windows are the same)."""
    from canonstore.splits import segment_ids
    from canonstore.training.config import lead_times

    store = open_store(gappy_store)
    segment = segment_ids(store.time.size, store.gaps)
    for split in ("train", "val", "test"):
        dataset = open_dataset(store, split, lead=lead_times({"rollout": 4, "lead": 2}), history=1)
        times = dataset.times
        assert dataset.leads == (2, 4, 6, 8)
        window = times[:, None] + np.arange(-1, 9)[None, :]
        assert (store.splits[window] == SPLIT_CODES[split]).all()
        assert (segment[window] == segment[window[:, :1]]).all()
        # and no window that fits is left out: brute force over every step
        fits = [
            t
            for t in range(1, store.time.size - 8)
            if (store.splits[t - 1 : t + 9] == SPLIT_CODES[split]).all() and len(set(segment[t - 1 : t + 9])) == 1
        ]
        assert times.tolist() == fits


def test_a_dataset_made_from_a_store_opened_before_a_rebuild_never_reads_the_new_build(tiny_raw, tmp_path):
    silent = {"progress": False}
    out = build(demo_recipe(tmp_path, tiny_raw), tmp_path / "demo.zarr", **silent).path
    store = open_store(out)
    _ = store.splits, store.gaps, store.channels, store.static, store.shape  # the windows come from the old build
    build(demo_recipe(tmp_path, tiny_raw, time={"start": "2000-03-01", "end": "2002-12-31"}), out, **silent)
    with pytest.raises(StoreError, match="rebuilt"):
        open_dataset(store, "train")[0]  # its data must not come from the new build


@pytest.mark.parametrize("channels", [None, ["t850"]])
def test_gather_asks_for_exactly_the_rows_it_copies_and_copies_the_same(tiny_store, monkeypatch, channels):
    dataset = StoreDataset(tiny_store, "train", lead=[1, 3], history=1, channels=channels)
    positions = [0, 5, 6, len(dataset) - 1]
    asked = []

    def recorded(self, array, per_step, *rows):
        asked.append((array, per_step, np.unique(np.concatenate([r.ravel() for r in rows]))))
        return 0

    x, y = dataset.gather(positions)  # read ahead where the batch is not cached
    with monkeypatch.context() as patched:
        patched.setattr(ReadAhead, "__call__", recorded)
        dataset.gather(positions)
    steps_in, steps_out = dataset.windows.steps(positions)
    rows_in, rows_out, per_step = dataset.windows.rows(steps_in, steps_out)
    assert len(asked) == 1 and asked[0][0] is dataset.array and asked[0][1] == per_step
    assert asked[0][2].tolist() == sorted(set(rows_in.ravel().tolist()) | set(rows_out.tolist()))
    if channels is None:  # whole steps: the rows are the steps
        assert per_step == 1 and set(asked[0][2].tolist()) == set(steps_in.ravel()) | set(steps_out.ravel())
    else:  # one channel of each step
        assert per_step == dataset.array.shape[1] and len(asked[0][2]) == len(
            set(steps_in.ravel()) | set(steps_out.ravel())
        )
    monkeypatch.setattr(readahead, "_CALLS", None)  # no way to ask (Windows): the same batch
    x_without, y_without = dataset.gather(positions)
    assert np.array_equal(x, x_without) and np.array_equal(y, y_without)


def test_a_cold_store_is_read_ahead_by_a_real_gather_and_gives_the_same_batch(tiny_store, tmp_path, monkeypatch):
    if readahead._CALLS is None or not hasattr(os, "posix_fadvise"):
        pytest.skip("no mincore/madvise/fadvise here")
    cold = shutil.copytree(tiny_store, tmp_path / "cold.zarr")  # files no other test has mapped
    os.sync()
    for f in cold.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    shard = np.memmap(next(f for f in sorted((cold / "data" / "c").rglob("*")) if f.is_file()), np.uint8, "r")
    if not readahead._missing(*readahead.pages(shard.ctypes.data, shard.nbytes)):
        pytest.skip("this filesystem keeps the store's pages in memory")
    del shard
    advised = []
    call = ReadAhead.__call__
    monkeypatch.setattr(ReadAhead, "__call__", lambda self, *args: advised.append(call(self, *args)) or advised[-1])
    positions = [0, 5, 6, 40]
    expected = StoreDataset(tiny_store, "train", lead=1).gather(positions)
    dataset = StoreDataset(cold, "train", lead=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no call failed
        got = [dataset.gather(positions) for _ in range(3)]
    assert advised[1] > 0  # the first cold gather asked for pages (advised[0]: the warm store's)
    assert advised[-1] == 0 and not dataset._read_ahead.cold  # cached after it
    for x, y in got:
        assert np.array_equal(x, expected[0]) and np.array_equal(y, expected[1])
