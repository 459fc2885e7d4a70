"""Windows: which store steps and channels each sample reads, as index arithmetic without torch."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from canonstore import open_store
from canonstore.errors import SourceError
from canonstore.loaders.windows import Windows
from canonstore.preprocess import build
from canonstore.splits import find_gaps
from tests.helpers import t2m_file, write_recipe


def test_the_index_arithmetic_loads_no_torch():
    """The training config checks its keys with it (lead, encodings) in processes that need no torch."""
    script = "import sys, canonstore.loaders.windows; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_rows_are_the_fields_each_sample_reads(tiny_store):
    store = open_store(tiny_store)
    n, z, t2m = len(store.channels), store.channels.index("z500"), store.channels.index("t2m")
    some = Windows.of(store, "val", lead=[1, 3], history=1, channels=["z500", "t2m"], targets=["t2m"])
    t = some.times[[0, 4]]
    rows_in, rows_out, per_step = some.rows(*some.steps([0, 4]))
    assert per_step == n  # a row is one (step, channel) field
    assert rows_in.tolist() == [[(s - 1) * n + z, (s - 1) * n + t2m, s * n + z, s * n + t2m] for s in t]
    assert rows_out.tolist() == [r for s in t for r in ((s + 1) * n + t2m, (s + 3) * n + t2m)]
    assert some.lead_channels == ["t2m@t+1", "t2m@t+3"]
    every = Windows.of(store, "val", lead=2, targets=store.channels, static=False)
    rows_in, rows_out, per_step = every.rows(*every.steps([0, 4]))
    assert every.whole_steps and per_step == 1  # a row is a whole step
    assert rows_in.tolist() == [[s] for s in every.times[[0, 4]]] and rows_out.tolist() == list(every.times[[0, 4]] + 2)
    assert every.batch_shapes(2, store.shape[2:]) == ((2, n) + store.shape[2:], (2, n) + store.shape[2:])


def test_a_clock_that_shifts_ends_windows(tmp_path):
    """6-hourly to 18:00, then 02:00 (8 hours on) and 6-hourly again: a lead-1 pair across the shift would
    span 8 hours, so the shift ends windows as a gap does; a 4-hour step is refused as a finer one."""
    times = pd.date_range("2000-01-01", periods=40, freq="6h")
    shifted = times[:20].append(times[20:] + pd.Timedelta("2h"))
    assert find_gaps(shifted.to_numpy())[0] == [19]  # what stores built before `gap_after` was recorded use
    t2m_file(tmp_path / "shifted.nc", shifted)
    recipe = write_recipe(
        tmp_path, sources=[str(tmp_path / "shifted.nc")], time_gaps="allow", splits={"by": "index", "train": [0, 39]}
    )
    store = open_store(build(recipe, tmp_path / "shifted.zarr", progress=False).path)
    assert store.gaps.tolist() == [19]
    windows = Windows.of(store, "train", lead=[1, 2], history=1)
    steps_in, steps_out = windows.steps(np.arange(windows.times.size))
    spans = store.time[steps_out[:, -1]] - store.time[steps_in[:, 0]]
    assert windows.times.size == 2 * (20 - 3) and (spans == np.timedelta64(18, "h")).all()
    old = tmp_path / "old.zarr"  # as built before the shift counted as a gap: none recorded
    shutil.copytree(store.path, old)
    meta = old / "zarr.json"
    meta.write_text(re.sub(r'"gap_after": \[[^\]]*\]', '"gap_after": []', meta.read_text()))
    assert open_store(old).attrs["gap_after"] == [] and open_store(old).gaps.tolist() == [19]
    early = times[:20].append(times[20:] - pd.Timedelta("2h"))  # 18:00 then 22:00
    (tmp_path / "shifted.nc").unlink()
    t2m_file(tmp_path / "shifted.nc", early)
    with pytest.raises(SourceError, match="time step of 4 hours between 2000-01-05T18:00 and 2000-01-05T22:00"):
        build(recipe, tmp_path / "early.zarr", progress=False)


def test_whole_steps_is_kept_per_windows_and_false_for_any_other_choice_of_channels(tiny_store):
    """`whole_steps` is computed once per Windows (it is asked twice a batch); the gather then copies whole steps.
    Another Windows of the same store (some channels, the channels reordered, fewer targets) must not share it:
    whole steps there would copy other channels than those named, without an error."""
    import pickle

    store = open_store(tiny_store)
    names = list(store.channels)
    every = Windows.of(store, "train", targets=names, static=False)
    assert every.whole_steps  # asked first: a cache shared by all Windows would answer True below
    assert not Windows.of(store, "train", channels=names[1:], targets=names[1:]).whole_steps
    assert not Windows.of(store, "train", channels=names[::-1], targets=names[::-1]).whole_steps  # another order
    assert not Windows.of(store, "train", targets=names[:1]).whole_steps  # y holds fewer channels than x
    assert pickle.loads(pickle.dumps(every)).whole_steps  # as a DataLoader worker receives it
