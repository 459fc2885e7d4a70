"""What the sources say about themselves, kept in the store: each channel's CF names and the files' global attributes.

    long_names, standard_names = channel_names(sources, channels)   # per channel, "" where a source says nothing
    source_attributes(sources)   # -> {"license": "CC BY 4.0 ...", "tracking_id": ["hdl:...", "hdl:..."], ...}

A global attribute every input that holds it agrees on is kept as its value; one that differs between inputs
(a CMIP6 file's `tracking_id`, `creation_date`) as the list of its distinct values, in input order, so that
nothing a source says is dropped or picked at random (FORMAT.md, "Root attributes").
"""

from __future__ import annotations

import numpy as np

from canonstore.formats.spec import mask_channel_of

NAMES = ("long_name", "standard_name")


def channel_names(sources, channels) -> tuple[list[str], list[str]]:
    """(long_name, standard_name) of each channel: its source variable's attributes, "" where it has none; a
    `<channel>_valid` channel says what it is, a derived channel is described by its formula's name."""
    attrs = {}
    for _, ds in sources.parts:
        for name, var in ds.data_vars.items():
            attrs.setdefault(str(name), var.attrs)
    masked = {valid: channel for channel, valid in mask_channel_of([c.name for c in channels]).items()}
    derived = {d.name: d for d in getattr(sources, "derived", [])}
    long_names, standard_names = [], []
    for c in channels:
        if c.name in masked:
            long_names.append(f"1 where {masked[c.name]} was observed, 0 where it was filled")
            standard_names.append("")
        elif c.name in derived and c.variable not in attrs:
            long_names.append(f"{derived[c.name].kind} (derived by canonstore)")
            standard_names.append("")
        else:
            own = attrs.get(c.variable, {})
            long_names.append(_text(own.get("long_name")))
            standard_names.append(_text(own.get("standard_name")))
    return long_names, standard_names


def source_attributes(sources) -> dict:
    """The inputs' global attributes as JSON: agreed values as they are, differing ones as lists of distinct values."""
    seen: dict[str, list] = {}
    for _, ds in sources.parts:
        for key, value in ds.attrs.items():
            if str(key).startswith("canonstore_"):  # what a source module added (an NWB session), not the file's
                continue
            value = _json(value)
            values = seen.setdefault(str(key), [])
            if value not in values:
                values.append(value)
    return {key: values[0] if len(values) == 1 else values for key, values in seen.items()}


def as_root_attributes(attributes: dict) -> dict:
    """`source_attributes` as plain root attributes xarray shows: lists joined with '; ', `canonstore` left out."""
    return {
        key: "; ".join(map(str, value)) if isinstance(value, list) else value
        for key, value in attributes.items()
        if key != "canonstore"
    }


def _text(value) -> str:
    return "" if value is None else str(value)


def _json(value):
    """A netCDF attribute (numpy scalar or array, bytes) as JSON."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_json(v) for v in value.tolist()] if value.ndim else _json(value.item())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
