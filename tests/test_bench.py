"""`bench/loader.py` runs end to end on a tiny store and writes the rows `make bench` promises."""

import json
import re
import subprocess
import sys
from pathlib import Path

from canonstore.preprocess import build
from tests.conftest import demo_recipe

BENCH = Path(__file__).resolve().parents[1] / "bench" / "loader.py"


def test_loader_bench_writes_every_row(tiny_store, tiny_raw, tmp_path):
    one = build(demo_recipe(tmp_path, tiny_raw, storage={"shard_mb": 1024}), tmp_path / "one.zarr", progress=False,
                log=lambda *_: None).path
    done = subprocess.run([sys.executable, str(BENCH), str(tiny_store), "--one-shard", str(one), "--seconds", "0.3",
                           "--workers", "1", "--batch-size", "8", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "loader.json").read_text())
    assert [r["loader"] for r in rows] == ["netcdf", "store-dataloader", "store-batch", "store-batch-1shard",
                                           "zarr-python", "memcpy"]
    shards = re.search(r"store-batch over (\d+) shards / over one shard:", done.stdout)
    assert shards and int(shards.group(1)) == len(list((tiny_store / "data" / "c").iterdir())) > 1
    for row in rows:
        assert row["samples_per_s"] > 0 and row["mb_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["workers"] == 1
    assert rows[0]["x_netcdf"] == 1.0 and rows[-1]["of_memcpy"] == 1.0
    assert (tmp_path / "loader.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "of memcpy" in done.stdout
