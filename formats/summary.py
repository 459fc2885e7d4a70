"""`canonstore inspect`: a readable summary of a store."""

from __future__ import annotations

import numpy as np

from canonstore._time import span
from canonstore.formats.store import Store
from canonstore.splits import SPLIT_CODES, SPLIT_NAMES


def describe(store: Store) -> str:
    """Channels with units and stats, split sizes and date ranges, layout and provenance."""
    a, ds = store.attrs, store._ds
    lines = [
        f"{store.path}  (canonstore format {a['format_version']}, '{a['name']}')",
        f"data    {ds['data'].dims} {store.shape} {store.dtype}, "
        f"{np.prod(store.shape) * store.dtype.itemsize / 1e6:.1f} MB",
        f"time    {len(store.time)} steps, {span(store.time, empty='-')}, "
        f"calendar {a.get('calendar') or 'standard (the sources state none)'}, "
        f"{len(store.gaps)} gap(s) (windows end at each)",
        f"grid    {store.dims[2:]}, latitude: {store.latitude}, longitude: {store.longitude}",
        *(
            [
                f"sessions {len(store.sessions)}: {', '.join(store.sessions[:6])}"
                f"{' ...' if len(store.sessions) > 6 else ''}"
            ]
            if store.sessions
            else []
        ),
        "",
        "splits  (rule: " + ", ".join(f"{k}={v}" for k, v in a["split_rule"].items()) + ")",
    ]
    for name in SPLIT_NAMES:
        idx = np.flatnonzero(store.splits == SPLIT_CODES[name])
        lines.append(f"  {name:<9}{idx.size:>8} steps  {span(store.time[idx], empty='-')}")
    s = store.stats
    units = [str(u) for u in ds["channel_units"].values]
    # columns as wide as their longest entry plus two spaces: long names never run into their units
    wn, wu = (max([14, *(len(x) + 2 for x in col)]) for col in (store.channels, units))
    lines += [
        "",
        f"channels ({len(store.channels)}), train statistics in physical units:",
        f"  {'name':<{wn}}{'units':<{wu}}{'mean':>12}{'std':>12}{'min':>12}{'max':>12}{'nan':>8}",
    ]
    for i, name in enumerate(store.channels):
        lines.append(
            f"  {name:<{wn}}{units[i]:<{wu}}{s['mean'][i]:>12.4g}{s['std'][i]:>12.4g}"
            f"{s['min'][i]:>12.4g}{s['max'][i]:>12.4g}{int(s['nan_count'][i]):>8}"
        )
    if store.static:
        lines += ["", "static  " + ", ".join(store.static)]
    if store.mask is not None:
        lines += [f"mask    NaNs filled with the train mean; {int((~store.mask).sum())} masked grid values"]
    layout = a["layout"]
    steps = layout.get("shard_steps", layout.get("block_steps"))  # version 1 stores: one shard of all steps
    shards = layout.get("shards", 1) if a["format_version"] > 1 else 1
    lines += [
        "",
        f"layout  {layout['compression']} compression, inner chunk = 1 sample, {shards} shard file(s) of "
        f"{steps if a['format_version'] > 1 else store.shape[0]} steps"
        + (" (each memory-mappable)" if layout["compression"] == "none" else ""),
    ]
    history = a.get("history", [])
    if len(history) > 1:
        lines += [f"history {h['created']} {h['kind']} steps {h['steps'][0]}..{h['steps'][1] - 1}" for h in history]
    lines += [
        f"built   {a['created']} by canonstore {a['canonstore_version']} (git {str(a.get('git_commit'))[:12]})",
        f"recipe  {a['recipe_path']} (sha256 {a['recipe_sha256'][:12]})",
        f"inputs  {len(a['inputs'])} files, {sum(i['size'] for i in a['inputs']) / 1e6:.1f} MB",
    ]
    lines += [
        f"unused  {u['path']} (holds {', '.join(u['variables']) or 'nothing'})" for u in a.get("unused_inputs", [])
    ]
    return "\n".join(lines)
