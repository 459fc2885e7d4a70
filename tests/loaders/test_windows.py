"""Windows: which store steps and channels each sample reads, as index arithmetic without torch."""

import subprocess
import sys

from canonstore import open_store
from canonstore.loaders.windows import Windows


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
