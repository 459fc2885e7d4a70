"""The peers benchmark's inputs: raw ERA5-like NetCDF at three sample sizes, and one recipe per tool.

    python bench/peers/data.py data/peers --sizes s m l

Each size gets `<out>/<size>/raw/*.nc` (one file per variable, as ERA5 downloads come; `msl` packed as
int16) and one recipe per build: `canonstore.yaml` (the default layout: uncompressed, shards of up to
1 GiB), `canonstore-shards.yaml` (shards of SHARD_MB), `canonstore-zstd.yaml` and `canonstore-blosc.yaml`
(compressed inner chunks: zstd, and blosc's zstd with bit shuffling), `anemoi.yaml` and `mllam.yaml`
(mllam-data-prep): the same files, variables, dates, and statistics period (the train split). No static
fields: anemoi's netcdf source skips a file without a time axis, and the samples must be the same in every
row. Written once per size; a size is complete when `.complete` exists.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from canonstore.preprocess.demo import _field, _write_var  # the demo's fields and file layout

# size: channels x lat x lon, time steps (fewer at larger sizes: each store stays a few GB), batch size
SIZES = {
    "s": {
        "levels": (250, 500, 850),
        "pressure": ("z", "t", "u", "v"),
        "surface": ("t2m", "msl"),
        "grid": (64, 128),
        "steps": 1464,
        "batch": 32,
    },
    "m": {
        "levels": (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000),
        "pressure": ("z", "t", "u", "v", "q"),
        "surface": ("t2m", "msl", "u10", "v10", "sp"),
        "grid": (121, 240),
        "steps": 240,
        "batch": 8,
    },
    "l": {
        "levels": (),
        "pressure": (),
        "surface": ("t2m", "msl", "u10", "v10", "sp", "tcwv", "skt", "d2m"),
        "grid": (721, 1440),
        "steps": 120,
        "batch": 2,
    },
}
TRAIN_FRACTION, EMBARGO = 0.8, 4
MARKER = ".canonstore-bench"  # a size folder this benchmark wrote: the only kind it removes
SHARD_MB = 64  # the many-shard store: every size's store is 10+ shards of this size
# name: (units, value, wave amplitude); pressure variables scale with the level
UNITS = {
    "z": ("m**2 s**-2", 55000.0, 900.0),
    "t": ("K", 250.0, 4.0),
    "u": ("m s**-1", 10.0, 8.0),
    "v": ("m s**-1", 0.0, 6.0),
    "q": ("kg kg**-1", 2e-3, 1e-3),
    "t2m": ("K", 285.0, 3.0),
    "msl": ("Pa", 101325.0, 900.0),
    "u10": ("m s**-1", 2.0, 4.0),
    "v10": ("m s**-1", 0.0, 4.0),
    "sp": ("Pa", 98000.0, 1500.0),
    "tcwv": ("kg m**-2", 25.0, 10.0),
    "skt": ("K", 286.0, 5.0),
    "d2m": ("K", 280.0, 3.0),
}


def layout(size: str) -> dict:
    """The size's shape, dates and splits: what every tool is given."""
    spec = SIZES[size]
    steps = spec["steps"]
    train_end = int(steps * TRAIN_FRACTION) - 1
    dates = pd.date_range("2000-01-01", periods=steps, freq="6h")
    channels = len(spec["pressure"]) * len(spec["levels"]) + len(spec["surface"])
    return {
        **spec,
        "channels": channels,
        "dates": dates,
        "train": (0, train_end),
        "val": (train_end + 1 + EMBARGO, steps - 1),
    }


def write_size(out: Path, size: str) -> Path:
    """Write one size's raw files and recipes into out/size (skipped when complete)."""
    where = out / size
    if (where / ".complete").exists():
        write_recipes(where, size)  # cheap, and new builds may have been added since
        return where
    if where.exists() and any(where.iterdir()) and not (where / MARKER).exists():
        raise SystemExit(f"{where} exists and was not written by this benchmark: choose another --data folder")
    shutil.rmtree(where, ignore_errors=True)  # an unfinished size of ours (its marker) or an empty folder
    (where / "raw").mkdir(parents=True)
    (where / MARKER).write_text("written by canonstore's bench/peers; removed and rewritten when incomplete\n")
    spec = layout(size)
    nlat, nlon = spec["grid"]
    lat = np.linspace(90, -90, nlat) if nlat % 2 else 90 - (np.arange(nlat) + 0.5) * 180 / nlat
    lon = np.arange(nlon) * 360 / nlon
    time = spec["dates"]
    hours = ((time - time[0]) / pd.Timedelta("1h")).to_numpy()
    rng = np.random.default_rng(0)
    for name in spec["pressure"] + spec["surface"]:
        units, value, amp = UNITS[name]
        phase = rng.uniform(0, 2 * np.pi, 3)
        if name in spec["pressure"]:
            values = np.stack(
                [
                    _field(hours, lat, lon, value * (1 + j / 10), amp, phase, rng, 0.0)
                    for j, _ in enumerate(spec["levels"])
                ],
                axis=1,
            ).astype(np.float32)
            _write_var(where / "raw" / f"{name}.nc", name, name, units, values, time, lat, lon, levels=spec["levels"])
        else:
            values = _field(hours, lat, lon, value, amp, phase, rng, 1.0).astype(np.float32)
            _write_var(where / "raw" / f"{name}.nc", name, name, units, values, time, lat, lon, packed=name == "msl")
        del values
    write_recipes(where, size)
    (where / ".complete").write_text(json.dumps({"size": size}) + "\n")
    return where


def write_recipes(where: Path, size: str) -> None:
    """The recipes for the raw files in `where`: same variables, dates and statistics period (the train split)."""
    spec = layout(size)
    raw = (where / "raw").resolve()
    names = list(spec["pressure"] + spec["surface"])
    storage = {
        "canonstore": "{dtype: float32, compression: none}",
        "canonstore-shards": f"{{dtype: float32, compression: none, shard_mb: {SHARD_MB}}}",
        "canonstore-zstd": "{dtype: float32, compression: zstd}",
        "canonstore-blosc": "{dtype: float32, compression: blosc}",
    }
    for name, options in storage.items():
        (where / f"{name}.yaml").write_text(
            f"name: peers-{size}\nsources: [{raw}/*.nc]\nvariables: {json.dumps(names)}\nstatic: []\n"
            f"splits: {{by: index, train: {list(spec['train'])}, val: {list(spec['val'])}}}\n"
            f"storage: {options}\n"
        )
    first, last = spec["dates"][0], spec["dates"][-1]
    stats_end = spec["dates"][spec["train"][1]]
    (where / "anemoi.yaml").write_text(
        f"dates: {{start: {first:%Y-%m-%dT%H:%M:%S}, end: {last:%Y-%m-%dT%H:%M:%S}, frequency: 6h}}\n"
        f"input:\n  netcdf:\n    path: {raw}/*.nc\n"
        f"statistics: {{start: {first:%Y-%m-%dT%H:%M:%S}, end: {stats_end:%Y-%m-%dT%H:%M:%S}}}\n"
    )
    (where / "mllam.yaml").write_text(mllam_recipe(spec, raw))


def mllam_recipe(spec: dict, raw: Path) -> str:
    """mllam-data-prep's config: one input per raw file, all stacked into `state` (time, grid_index,
    state_feature), mean and std over the train split. Level selections need `units: millibars`, the
    raw files' level units (mllam-data-prep checks them)."""
    fmt = "%Y-%m-%dT%H:%M"
    dates, (_, train_end), (val_start, val_end) = spec["dates"], spec["train"], spec["val"]
    lines = [
        "schema_version: v0.6.0",
        "dataset_version: v0.1.0",
        "output:",
        "  variables: {state: [time, grid_index, state_feature]}",
        f"  coord_ranges: {{time: {{start: '{dates[0]:{fmt}}', end: '{dates[-1]:{fmt}}', step: PT6H}}}}",
        "  chunking: {time: 1}",
        "  splitting:",
        "    dim: time",
        "    splits:",
        f"      train: {{start: '{dates[0]:{fmt}}', end: '{dates[train_end]:{fmt}}', "
        "compute_statistics: {ops: [mean, std], dims: [grid_index, time]}}",
        f"      val: {{start: '{dates[val_start]:{fmt}}', end: '{dates[val_end]:{fmt}}'}}",
        "inputs:",
    ]
    for name in spec["pressure"] + spec["surface"]:
        pressure = name in spec["pressure"]
        dims = "[time, level, latitude, longitude]" if pressure else "[time, latitude, longitude]"
        variables = (
            f"{{{name}: {{level: {{values: {list(spec['levels'])}, units: millibars}}}}}}" if pressure else f"[{name}]"
        )
        feature = (
            "{method: stack_variables_by_var_name, dims: [level], name_format: '{var_name}{level}'}"
            if pressure
            else "{method: stack_variables_by_var_name, name_format: '{var_name}'}"
        )
        lines += [
            f"  {name}:",
            f"    path: {raw}/{name}.nc",
            f"    dims: {dims}",
            f"    variables: {variables}",
            "    dim_mapping:",
            "      time: {method: rename, dim: time}",
            "      grid_index: {method: stack, dims: [latitude, longitude]}",
            f"      state_feature: {feature}",
            "    target_output_variable: state",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = parser.parse_args()
    for size in args.sizes:
        print(f"raw NetCDF for size {size}: {write_size(args.out, size)}", flush=True)


if __name__ == "__main__":
    main()
