"""The store's metadata besides `data`'s values: coordinates, statistics, splits, static fields, provenance, labels.

The small arrays are written through xarray after pass 1; `data`'s own metadata before pass 2; the root
attributes (what made the store, from what, how it is laid out), the labels copied as plain JSON and the
consolidated metadata once every shard is written. What the provenance records of the sources (variables
left out, unused files, sessions, gaps) is also said out loud as the build starts (`report_sources`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
from pathlib import Path

import numpy as np
import xarray as xr
import zarr

from canonstore._warnings import zarr_notes_silenced
from canonstore.errors import RecipeError, SourceError
from canonstore.formats.coords import longitude_is_periodic
from canonstore.formats.spec import FORMAT_VERSION, STAT_NAMES, normalise
from canonstore.formats.zarr_ import create_data_array
from canonstore.preprocess.attributes import as_root_attributes, channel_names, source_attributes
from canonstore.preprocess.plan import Plan
from canonstore.preprocess.recipe import Recipe
from canonstore.preprocess.shard_jobs import ShardJob
from canonstore.preprocess.sources import Sources
from canonstore.provenance import git_commit, package_version
from canonstore.splits import SPLIT_NAMES, split_keys, split_labels

logger = logging.getLogger(__name__)

TOOLS = ("numpy", "xarray", "zarr", "numcodecs", "dask", "netCDF4", "cftime")


def store_labels(recipe: Recipe, sources: Sources) -> np.ndarray:
    """Split code per step from the recipe's rule (outside every range: excluded)."""
    sessions = None if sources.session is None else np.array(sources.sessions, dtype=object)[sources.session]
    try:
        return split_labels(split_keys(recipe.splits, sources.time, sessions), recipe.splits)
    except RecipeError as exc:  # e.g. an empty split: say where the data's time range comes from
        raise RecipeError(f"{exc}; {sources.coverage()}") from None


def report_sources(sources: Sources) -> None:
    """Say out loud what the recipe leaves out and which gaps it allows (never dropped silently)."""
    lon = sources.coords.get(sources.longitude) if sources.longitude else None
    if lon is not None and lon.ndim == 1 and sources.space_dims and lon.dims[0] != sources.space_dims[-1]:
        moved = tuple(d for d in sources.space_dims if d != lon.dims[0]) + lon.dims
        if longitude_is_periodic(lon, moved):  # the grids are stored as the sources give them (FORMAT.md)
            logger.warning(
                f"{sources.longitude} goes round the globe but is not the grid's last dimension "
                f"{sources.space_dims}: the store is treated as regional (no wrap-around in the UNet's padding, "
                f"patches and coarse-up); transpose the sources to (..., {', '.join(moved)}) for a periodic store"
            )
    if sources.ignored:
        logger.info(f"not stored (not in 'variables' or 'static' of the recipe): {', '.join(sources.ignored)}")
    for unused in sources.unused_files:
        logger.info(
            f"not used: {unused['path']} (matched by 'sources', but holds none of the recipe's variables; "
            f"it has {', '.join(unused['variables']) or 'no data variables'})"
        )
    ends = set() if sources.session is None else set(np.flatnonzero(np.diff(sources.session)).tolist())
    gaps = [g for g in sources.gaps if g not in ends]
    if ends:
        logger.info(
            f"{len(sources.sessions)} sessions ({', '.join(sources.sessions[:4])}"
            f"{' ...' if len(sources.sessions) > 4 else ''}): windows end at each session's last step"
        )
    if gaps:  # allowed by the recipe, still said out loud and kept in the provenance
        first = sources.time_label(gaps[0])
        logger.info(f"time axis has {len(gaps)} gap(s) (recipe time_gaps: allow), first after {first}")


_SOURCE_STORAGE = ("chunks", "preferred_chunks", "compressor", "compressors", "filters", "serializer", "shards")


def store_metadata(recipe: Recipe, sources: Sources, labels: np.ndarray, plan: Plan) -> xr.Dataset:
    """Everything but `data`: coordinates, channel labels, train statistics, split labels, masks, static fields."""
    channels = plan.channels
    long_names, standard_names = channel_names(sources, channels)
    coords = {
        "time": ("time", sources.time),
        "channel": ("channel", np.array([c.name for c in channels], dtype=object)),
        "channel_variable": ("channel", np.array([c.variable for c in channels], dtype=object)),
        "channel_level": ("channel", np.array([np.nan if c.level is None else c.level for c in channels])),
        "channel_units": ("channel", np.array([c.units for c in channels], dtype=object)),
        "channel_long_name": ("channel", np.array(long_names, dtype=object)),
        "channel_standard_name": ("channel", np.array(standard_names, dtype=object)),
    }
    for name, coord in sources.coords.items():
        # Variable-length strings: zarr v3 has no stable spec for numpy's fixed-width '<U'.
        variable = coord.variable.astype(object) if coord.dtype.kind == "U" else coord.variable.copy(deep=False)
        # A Zarr source's chunking and codecs (a v2 store's numcodecs compressor) are not the store's
        variable.encoding = {k: v for k, v in variable.encoding.items() if k not in _SOURCE_STORAGE}
        coords[name] = variable
    ds = xr.Dataset(coords=coords)
    for name in STAT_NAMES:
        ds[f"stats_{name}"] = (
            "channel",
            plan.stats[name],
            {"long_name": f"train-split {name} per channel, in physical units"},
        )
    ds["split"] = (
        "time",
        labels,
        {
            "flag_values": list(range(len(SPLIT_NAMES))),
            "flag_meanings": " ".join(SPLIT_NAMES),
            "rule": json.dumps(recipe.splits),
        },
    )
    if sources.session is not None:
        ds["session"] = ("time", sources.session.astype(np.int32), {"session_ids": list(sources.sessions)})
    if plan.static_mask is not None:
        ds["mask"] = (
            ("channel",) + sources.space_dims,
            plan.padded_mask().astype(np.uint8),
            {"long_name": "1 where the raw value was observed, 0 where it was filled"},
        )
    return _with_static_fields(ds, recipe, sources) if sources.static else ds


def _with_static_fields(ds: xr.Dataset, recipe: Recipe, sources: Sources) -> xr.Dataset:
    """`ds` with the static fields, normalised by their own spatial mean and std."""
    names = list(sources.static)
    raw = np.stack([sources.static[n][0] for n in names])
    if np.isinf(raw).any():
        bad = names[int(np.flatnonzero(np.isinf(raw).reshape(len(names), -1).any(axis=1))[0])]
        raise SourceError(f"{sources.static[bad][2]}: static variable '{bad}' holds infinite values")
    if np.isnan(raw).any() and recipe.nan_policy == "error":
        bad = names[int(np.flatnonzero(np.isnan(raw).reshape(len(names), -1).any(axis=1))[0])]
        raise SourceError(
            f"{sources.static[bad][2]}: static variable '{bad}' has NaN or fill values (recipe nan_policy: error)"
        )
    flat = raw.reshape(len(names), -1)
    mean, std = np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)
    normalised = normalise(raw, mean, std, channel_axis=0)
    ds = ds.assign_coords(
        static_channel=("static_channel", np.array(names, dtype=object)),
        static_units=("static_channel", np.array([sources.static[n][1] for n in names], dtype=object)),
    )
    ds["static"] = (("static_channel",) + sources.space_dims, normalised.astype(np.float32))
    ds["static_mean"] = ("static_channel", mean)
    ds["static_std"] = ("static_channel", std)
    return ds


def write_metadata(staging: Path, meta: xr.Dataset) -> None:
    """Everything but `data` (coordinates, stats, splits, static, mask) through xarray."""
    with zarr_notes_silenced():  # our progress files beside the arrays are not Zarr nodes, on purpose
        # "a": the staging already holds progress files (and raw shards); again on a resume
        meta.to_zarr(staging, mode="a", zarr_format=3, consolidated=False)


def create_data(staging: Path, job: ShardJob, dims: tuple[str, ...]) -> None:
    """Create `data`'s metadata for the write pass's `job` (its shard files are written by its tasks)."""
    if (staging / "data" / "zarr.json").is_file():  # a resumed build's
        return
    create_data_array(
        zarr.open_group(staging, mode="r+"),
        job.shape,
        job.dtype,
        ("time", "channel") + dims,
        job.compression,
        job.blocks.shard_steps,
        attributes={
            "long_name": "normalised data: (x - stats_mean) / scale",
            "coordinates": "channel_variable channel_level channel_units channel_long_name channel_standard_name",
        },
    )


def provenance(recipe: Recipe, sources: Sources, inputs: list[dict], job: ShardJob, history: list | None) -> dict:
    """The root attributes: what made the store, from what (recipe, inputs, `history` of builds and appends),
    and how `job`, the write pass's, laid it out."""
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    shape = job.shape
    first = history[-1]["steps"][1] if history else 0
    this = {
        "kind": "append" if history else "build",
        "created": created,
        "steps": [first, shape[0]],
        "inputs": [i["path"] for i in inputs],
    }
    return {
        "format_version": FORMAT_VERSION,
        "name": recipe.name,
        "created": created,
        "canonstore_version": package_version("canonstore"),
        "git_commit": git_commit(),
        "tools": {"python": platform.python_version(), **{t: package_version(t) for t in TOOLS}},
        "recipe": recipe.text,
        "recipe_path": str(recipe.path.resolve()),
        "recipe_sha256": recipe.sha256,
        "inputs": inputs,
        "history": (history or []) + [this],
        "source_time_dim": sources.time_dim,
        "calendar": sources.calendar,
        "split_rule": recipe.splits,
        "nan_policy": recipe.nan_policy,
        "ignored_variables": sources.ignored,
        "unused_inputs": sources.unused_files,
        "time_gaps": [[sources.time_label(i), sources.time_label(i + 1)] for i in sources.gaps],
        "gap_after": list(sources.gaps),
        "latitude": sources.latitude,
        "longitude": sources.longitude,
        "longitude_periodic": longitude_is_periodic(sources.coords.get(sources.longitude), sources.space_dims),
        "normalisation": "data = (x - stats_mean) / (stats_std if stats_std > 0 else 1), train split only",
        "source_attributes": source_attributes(sources),
        "layout": {
            "dtype": recipe.dtype,
            "compression": recipe.compression,
            "shape": list(shape),
            **job.blocks.as_json(),
            "shards": job.shard_layout.count,
            "data_files": "data/c/{k}/" + "/".join(["0"] * (len(shape) - 1)),
        },
    }


def finish_metadata(staging: Path, attrs: dict) -> None:
    """Set the root attributes, copy the labels into `data`'s attributes and consolidate the metadata."""
    # the sources' own attributes also as plain root attributes, which xarray shows on the Dataset
    zarr.open_group(staging, mode="r+").attrs.update(
        {**as_root_attributes(attrs.get("source_attributes", {})), "canonstore": attrs}
    )
    _set_data_labels(staging)
    # Consolidated metadata lets readers open the store without listing it (one read, no warning about
    # our manifest.json); zarr-python supports it for v3 though the spec does not yet.
    with zarr_notes_silenced():
        zarr.consolidate_metadata(staging)


def _set_data_labels(staging: Path) -> None:
    """Copy the labels into `data`'s attributes as plain JSON (FORMAT.md, "Labels").

    The label arrays (`channel`, `channel_units`, ...) use zarr-python's variable-length string
    type, which other Zarr v3 readers (tensorstore, zarrs) refuse; JSON attributes every reader has.
    """
    group = zarr.open_group(staging, mode="r+")
    info = group.attrs["canonstore"]

    def strings(name: str) -> list[str]:
        return [str(v) for v in group[name][...]] if name in group else []

    time = group["time"].attrs.asdict()
    group["data"].attrs["labels"] = {
        "dims": list(group["data"].metadata.dimension_names),
        "channel": strings("channel"),
        "channel_units": strings("channel_units"),
        "channel_variable": strings("channel_variable"),
        "channel_level": [None if np.isnan(v) else float(v) for v in group["channel_level"][...]],
        "channel_long_name": strings("channel_long_name"),
        "channel_standard_name": strings("channel_standard_name"),
        "static_channel": strings("static_channel"),
        "static_units": strings("static_units"),
        "latitude": info.get("latitude"),
        "longitude": info.get("longitude"),
        "longitude_periodic": info.get("longitude_periodic"),
        "time": {
            "array": "time",
            "units": time.get("units"),
            "calendar": time.get("calendar"),
            "dtype": str(group["time"].dtype),
        },
    }
