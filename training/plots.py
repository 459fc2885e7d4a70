"""Pictures to look at before and after training: a store's fields, value ranges and splits; a forecast's errors.

    plot_store("data/intermediate/demo.zarr", "plots")     # -> plots/demo-maps.png, -histograms.png, -timeline.png
    plot_forecast("forecasts/unet-demo-7a080bb3/test.zarr", store, "plots")  # -> ...-errors.png, -rmse-by-lead.png

Everything in physical units (the store's `x * std + mean`), on the store's latitude and longitude. PNG files,
through matplotlib (`pip install matplotlib`; in canonstore's dev extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from canonstore._time import span, time_label
from canonstore.errors import RunError, StoreError
from canonstore.formats import open_store
from canonstore.formats.spec import denormalise
from canonstore.splits.names import SPLIT_NAMES
from canonstore.training.alignment import align_forecast
from canonstore.training.evaluate import score_forecast

MAPS = 4  # channels mapped when none are named
HISTOGRAM_STEPS = 200  # train steps sampled, evenly, for the histograms (enough for a distribution's shape)
BLOCK_BYTES = 256 * 2**20  # the forecast's target channels read at a time for its error maps (float64)
SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green", "excluded": "lightgrey"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed (a cluster node, CI)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RunError("plots need matplotlib: pip install matplotlib") from exc
    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _step(store, when: str | int | None) -> int:
    """The store step `when` names: the first time whose label starts with it ('2001', '2001-03-01T06', also
    for cftime dates), else, if it is a whole number, that step's index."""
    if when is None:
        test = store.split_indices("test")
        return int(test[0]) if test.size else 0
    wanted = str(when).replace(" ", "T")
    for step, t in enumerate(store.time):
        if time_label(t).replace(" ", "T").startswith(wanted):
            return step
    if wanted.lstrip("-").isdigit() and -len(store.time) <= int(wanted) < len(store.time):
        return int(wanted) % len(store.time)
    raise StoreError(f"{store.path}: no time or step {when!r} ({len(store.time)} steps, {span(store.time)})")


def _grid(store) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """The store's longitudes and latitudes for maps, and whether its fields are (longitude, latitude) ordered
    (then drawn transposed); None for a store without a (latitude, longitude) grid (NWB, stations)."""
    if len(store.dims) != 4 or store.latitude is None or store.longitude is None:
        return None
    ds = store.to_xarray()
    lat, lon = ds[store.latitude], ds[store.longitude]
    if lat.ndim == 1 and lon.ndim == 1:
        return lon.values, lat.values, lat.dims[0] == store.dims[3]
    space = store.dims[2:]  # 2-D coordinates: in the fields' own dim order
    return lon.transpose(*space).values, lat.transpose(*space).values, False


def _panels(plt, n: int, width: float = 5, height: float = 3.6):
    """A figure of n panels, 4 to a row; the unused ones hidden."""
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, axes.flat[:n]


def _map(ax, fig, grid, field, title, cmap="viridis"):
    lon, lat, transposed = grid
    mesh = ax.pcolormesh(lon, lat, field.T if transposed else field, shading="auto", cmap=cmap)
    fig.colorbar(mesh, ax=ax, shrink=0.8)
    ax.set(title=title, xlabel="longitude", ylabel="latitude")


def plot_store(store, out: str | Path, channels: list[str] | None = None, when: str | int | None = None) -> list[Path]:
    """Maps of `channels` (default: the first few) at step `when` (default: the first test step), histograms
    of every channel over the train split, and a timeline of the splits and gaps. Returns the PNG paths."""
    store = open_store(store) if isinstance(store, (str, Path)) else store
    plt, out, name = _pyplot(), Path(out), store.attrs["name"]
    units = [str(u) for u in store.to_xarray()["channel_units"].values]
    unknown = [c for c in channels or [] if c not in store.channels]
    if unknown:
        raise StoreError(f"{store.path}: no channel(s) {unknown}; it has {store.channels}")
    picked = [store.channels.index(c) for c in channels] if channels else list(range(min(MAPS, len(store.channels))))
    written, grid = [], _grid(store)
    if grid is None and (channels or when is not None):
        raise StoreError(f"{store.path}: maps need a (latitude, longitude) grid; it has dims {store.dims[2:]}")
    if grid is not None:
        step = _step(store, when)
        values = store.denormalise(np.asarray(store.array[step : step + 1], dtype=np.float64))[0]
        fig, axes = _panels(plt, len(picked))
        for ax, c in zip(axes, picked):
            _map(ax, fig, grid, values[c], f"{store.channels[c]} [{units[c]}]")
        fig.suptitle(f"{name} at {time_label(store.time[step])} (step {step})")
        written.append(_save(fig, out / f"{name}-maps.png"))
    train = store.split_indices("train")
    if train.size:
        written.append(_histograms(plt, store, train, units, out / f"{name}-histograms.png"))
    fig, ax = plt.subplots(figsize=(10, 1.8))
    for code, label in enumerate(SPLIT_NAMES):
        steps = np.flatnonzero(store.splits == code)
        ax.scatter(steps, np.zeros(steps.size), marker="|", s=400, color=SPLIT_COLOURS[label], label=label)
    for gap in store.gaps:
        ax.axvline(gap + 0.5, color="red", linewidth=1)
    ax.set(yticks=[], xlabel=f"step ({span(store.time)})", title=f"{name}: splits and gaps ({len(store.gaps)})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=4, frameon=False)
    written.append(_save(fig, out / f"{name}-timeline.png"))
    return written


def _histograms(plt, store, train: np.ndarray, units: list[str], path: Path) -> Path:
    """Each channel's histogram over evenly spaced train steps, counted one step at a time into 50 bins between
    the channel's train min and max (memory: one step, whatever the store's size)."""
    sample = train[np.linspace(0, train.size - 1, min(HISTOGRAM_STEPS, train.size)).astype(int)]
    low, high = store.stats["min"], store.stats["max"]
    edges = [np.linspace(lo, hi if hi > lo else lo + 1, 51) for lo, hi in zip(low, high)]
    counts = np.zeros((len(store.channels), 50))
    for s in sample:
        values = store.denormalise(np.asarray(store.array[int(s) : int(s) + 1], dtype=np.float64))[0]
        for c in range(len(store.channels)):
            counts[c] += np.histogram(values[c][np.isfinite(values[c])], bins=edges[c])[0]
    fig, axes = _panels(plt, len(store.channels), width=3, height=2.4)
    for c, ax in enumerate(axes):
        ax.stairs(counts[c], edges[c], fill=True, color="tab:blue")
        ax.set_title(f"{store.channels[c]} [{units[c]}]", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{store.attrs['name']}: train split, {sample.size} of {train.size} steps")
    return _save(fig, path)


def rmse_maps(aligned, store) -> np.ndarray:
    """(channel, *space) RMSE of the first lead over every init time, in the store's units, for an
    `alignment.align_forecast` file (so on the store's grid order, in its units, at the right valid times)."""
    steps = aligned.truth[:, 0]
    mean, std = store.stats["mean"][aligned.targets], store.stats["std"][aligned.targets]
    squared = np.zeros((len(aligned.names), *store.shape[2:]))
    block = int(np.clip(BLOCK_BYTES // squared.nbytes, 1, 64))  # steps at a time, within BLOCK_BYTES
    for a in range(0, steps.size, block):
        stored = np.stack([np.asarray(store.array[int(s)])[aligned.targets] for s in steps[a : a + block]])
        truth = denormalise(stored.astype(np.float64), mean, std)
        squared += ((aligned.physical(0, slice(a, a + block)) - truth) ** 2).sum(axis=0)
    return np.sqrt(squared / max(1, steps.size))


def plot_forecast(path: str | Path, store, out: str | Path) -> list[Path]:
    """RMSE maps per channel at the first lead (over every init time), and RMSE by lead per channel, in the
    store's units; the file is matched to the store by values as `canonstore score` does. Returns the PNGs."""
    store = open_store(store) if isinstance(store, (str, Path)) else store
    plt, out = _pyplot(), Path(out)
    aligned = align_forecast(path, store)
    stem = f"{aligned.path.parent.name}-{aligned.path.stem}"
    grid, steps, written = _grid(store), aligned.truth[:, 0], []
    if grid is not None:  # maps of the first lead's RMSE; a store without a grid gets RMSE by lead only
        rmse = rmse_maps(aligned, store)
        fig, axes = _panels(plt, len(aligned.names))
        for c, (ax, channel) in enumerate(zip(axes, aligned.names)):
            _map(ax, fig, grid, rmse[c], f"{channel} RMSE [{aligned.units[c]}]", cmap="magma")
        fig.suptitle(f"{stem}: lead {int(aligned.steps_ahead[0])} step(s), {steps.size} init times")
        written.append(_save(fig, out / f"{stem}-errors.png"))
    leads = score_forecast(aligned.path, store)["leads"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for c, channel in enumerate(aligned.names):
        by_lead = [leads[lead]["channels"][channel]["rmse"] for lead in sorted(leads)]
        ax.plot(sorted(leads), np.asarray(by_lead) / store.stats["std"][aligned.targets[c]], marker="o", label=channel)
    ax.set(xlabel="lead (store steps)", ylabel="RMSE / train std", title=f"{stem}: RMSE by lead")
    ax.legend(fontsize=7, ncol=2)
    written.append(_save(fig, out / f"{stem}-rmse-by-lead.png"))
    return written
