"""Turn a recipe's split rule into per-step labels (train / val / test / excluded).

Rule forms (`val` and `test` are optional; ranges are inclusive):

    {train: [1991, 2004], val: [2005, 2007], test: [2008, 2010], embargo: 1}          # years (by: year)
    {by: index, train: [0, 99], test: [100, 119]}                                     # positions
    {by: dates, train: [1991-01-01, 2004-06-30], val: [2004-07, 2005]}                # dates, any calendar
    {by: sessions, train: [s1, s2], val: [s3], test: [s4]}                            # NWB sessions
    {by: blocks, block: 30D, fractions: [0.8, 0.1, 0.1], seed: 0, embargo: 2}         # seeded blocked-random

A date bound covers everything it names: `end: 2005` is up to the last step of 2005, `2005-06`
the last of June. `block` is a duration (`30D`, `6h`, `10s`, counted from the first step) or a
number of steps; whole blocks go to one split, chosen by a permutation drawn from `seed` alone.
`embargo` is a number of time steps: steps of a split that lie `embargo` steps or fewer after a step
of another split are labelled `excluded` (the first `embargo` steps after every change of split), so
that any two steps of different splits are more than `embargo` steps apart and a lead time or history
window of up to `embargo` steps never reaches across a boundary.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np

from canonstore._time import is_dates
from canonstore.errors import RecipeError
from canonstore.splits.names import SPLIT_CODES, SPLIT_NAMES, SPLITS

RULES = ("year", "index", "dates", "sessions", "blocks")
_RULE_KEYS = {
    "year": {*SPLITS, "embargo", "by"},
    "blocks": {"by", "block", "fractions", "seed", "embargo"},
}
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2}([T ]\d{2}(:\d{2}(:\d{2})?)?)?)?)?")


def parse_split_rule(rule: object, where: str = "recipe") -> dict:
    """Check a split rule's shape and ordering before any data is read; return it normalised."""
    if not isinstance(rule, dict):
        raise RecipeError(f"{where}: 'splits' must be a mapping, got {type(rule).__name__}")
    by = rule.get("by", "year")
    if by not in RULES:
        raise RecipeError(f"{where}: splits.by must be one of {list(RULES)}, got {by!r}")
    allowed = _RULE_KEYS.get(by, _RULE_KEYS["year"])
    unknown = set(rule) - allowed
    if unknown:
        raise RecipeError(
            f"{where}: unknown key(s) in 'splits' (by: {by}): {sorted(unknown)}; expected {sorted(allowed)}"
        )
    embargo = rule.get("embargo", 0)
    if not isinstance(embargo, int) or isinstance(embargo, bool) or embargo < 0:
        raise RecipeError(f"{where}: splits.embargo must be a whole number of steps >= 0, got {embargo!r}")
    out: dict = {"by": by, "embargo": embargo}
    if by == "blocks":
        return {**out, **_parse_blocks(rule, where)}
    if "train" not in rule:
        raise RecipeError(f"{where}: 'splits' needs a 'train' {'list' if by == 'sessions' else 'range'}")
    if by == "sessions":
        seen: dict[str, str] = {}
        for name in (n for n in SPLITS if n in rule):
            ids = rule[name]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, (str, int)) for i in ids):
                raise RecipeError(f"{where}: splits.{name} must be a list of session ids, got {ids!r}")
            for i in map(str, ids):
                if i in seen:
                    raise RecipeError(f"{where}: session '{i}' is in both splits.{seen[i]} and splits.{name}")
                seen[i] = name
            out[name] = [str(i) for i in ids]
        return out
    previous = None
    for name in (n for n in SPLITS if n in rule):
        first, last = _bounds(rule[name], by, f"{where}: splits.{name}")
        if (first > last) if by != "dates" else (first[: len(last)] > last):
            raise RecipeError(f"{where}: splits.{name} starts after it ends: {rule[name]!r}")
        if previous is not None and (
            (first <= previous[2]) if by != "dates" else (first[: len(previous[2])] <= previous[2])
        ):
            raise RecipeError(
                f"{where}: splits.{name} {[first, last]} overlaps or precedes splits.{previous[0]} "
                f"{list(previous[1:])}; splits must be disjoint and in order train < val < test"
            )
        previous = (name, first, last)
        out[name] = [first, last]
    return out


def _bounds(bounds: object, by: str, where: str) -> tuple:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise RecipeError(f"{where} must be [first, last], got {bounds!r}")
    if by == "dates":
        return tuple(_date_text(b, where) for b in bounds)
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        raise RecipeError(f"{where} must be [first, last] (two whole numbers), got {bounds!r}")
    return tuple(bounds)


def _date_text(value: object, where: str) -> str:
    """A date bound as ISO text (YAML reads 2005-06-30 as a date, 2005 as a number)."""
    if isinstance(value, dt.datetime):
        return without_utc(value.isoformat(), where)[:19]  # no fraction of a second, as a step's date text
    if isinstance(value, dt.date):
        return value.isoformat()
    text = without_utc(str(value), where).replace(" ", "T")
    if isinstance(value, bool) or not _DATE.fullmatch(text):
        raise RecipeError(f"{where} must be dates like 2005, 2005-06 or 2005-06-30T12:00, got {value!r}")
    return text


_OFFSET = re.compile(r"(\d{4}-\d{2}-\d{2}[T ]\d{2}(?::\d{2}){0,2}(?:\.\d+)?) ?(Z|[+-]\d{2}(?::?\d{2})?)", re.IGNORECASE)


def without_utc(text: str, where: str) -> str:
    """A date-time `text` without its UTC mark (`Z`, `+00:00`): the sources' times are UTC and carry none.
    Another offset is refused rather than converted: its hours would shift every bound, silently if dropped."""
    marked = _OFFSET.fullmatch(text)
    if marked is None:
        return text
    if marked[2].upper() != "Z" and int(marked[2][1:].replace(":", "") or 0):
        raise RecipeError(
            f"{where}: {text!r} is not in UTC (offset {marked[2]}); write the time in UTC, as the "
            "sources' times are, e.g. 2005-06-30T12:00 or 2005-06-30T12:00Z"
        )
    return marked[1]


def _parse_blocks(rule: dict, where: str) -> dict:
    block = rule.get("block")
    if isinstance(block, bool) or not (isinstance(block, int) and block > 0 or isinstance(block, str)):
        raise RecipeError(
            f"{where}: splits.block must be a duration like '30D', '6h', '10s' or a number of steps, got {block!r}"
        )
    if isinstance(block, str):
        block_seconds(block, where)
    fractions = rule.get("fractions")
    if (
        not isinstance(fractions, list)
        or len(fractions) not in (2, 3)
        or not all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-9
        or fractions[0] <= 0
    ):
        raise RecipeError(
            f"{where}: splits.fractions must be [train, val] or [train, val, test], >= 0, "
            f"summing to 1, train > 0; got {fractions!r}"
        )
    seed = rule.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise RecipeError(f"{where}: splits.seed must be a whole number >= 0, got {seed!r}")
    return {"block": block, "fractions": [float(f) for f in fractions], "seed": seed}


def block_seconds(block: str, where: str = "recipe") -> float:
    """'30D' / '6h' / '15min' / '10s' (pandas offsets) as seconds."""
    import pandas as pd

    try:
        seconds = pd.Timedelta(block).total_seconds()
    except ValueError:
        seconds = 0
    if not seconds > 0:
        raise RecipeError(f"{where}: splits.block {block!r} is not a positive duration like '30D', '6h' or '10s'")
    return seconds


def split_keys(rule: dict, time: np.ndarray, sessions: np.ndarray | None = None) -> np.ndarray:
    """What the rule compares for each step: its year, position, date text, session id or block number.

    `sessions` are the session ids per step (NWB), or None when the sources have no sessions.
    """
    by = rule["by"]
    if by == "index":
        return np.arange(len(time))
    if by == "sessions":
        if sessions is None:
            raise RecipeError("splits.by: sessions needs sources with sessions (NWB files, one session each)")
        return np.asarray(sessions, dtype=object)
    if by == "blocks" and isinstance(rule["block"], int):
        return np.arange(len(time)) // rule["block"]
    if not is_dates(time):
        raise RecipeError(
            f"splits.by: {by} needs a time axis of dates, but it holds {np.asarray(time).dtype} "
            "values; use `by: index` or `by: blocks` with a number of steps"
        )
    if by == "year":
        return np.array([t.year for t in _as_cftime_or_datetime(time)])
    if by == "dates":
        return np.array(
            [
                f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
                for t in _as_cftime_or_datetime(time)
            ],
            dtype=object,
        )
    seconds = _seconds_since_first(time)
    return np.floor(seconds / block_seconds(rule["block"])).astype(np.int64)


def split_labels(keys: np.ndarray, rule: dict) -> np.ndarray:
    """Label each step (int8 codes of SPLIT_NAMES) from its key (see `split_keys`).

    Steps outside every range, and embargoed steps, get `excluded`. A named split that
    ends up with no step is an error: it is almost always a typo in the bounds.
    """
    keys = np.asarray(keys)
    labels = np.full(keys.shape, SPLIT_CODES["excluded"], dtype=np.int8)
    by = rule.get("by", "year")
    if by == "blocks":
        labels = _block_labels(keys, rule)
    for name in (n for n in SPLITS if n in rule):
        if by == "sessions":
            labels[np.isin(keys, rule[name])] = SPLIT_CODES[name]
        elif by == "dates":
            first, last = rule[name]
            inside = [k[: len(first)] >= first and k[: len(last)] <= last for k in keys]
            labels[np.array(inside, dtype=bool)] = SPLIT_CODES[name]
        else:
            first, last = rule[name]
            labels[(keys >= first) & (keys <= last)] = SPLIT_CODES[name]
    embargo = rule.get("embargo", 0)
    if embargo:
        _apply_embargo(labels, embargo)
    for name in (n for n in SPLITS if n in rule):
        if not np.any(labels == SPLIT_CODES[name]):
            unit = {"year": "years", "index": "positions", "dates": "dates", "sessions": "sessions"}[by]
            span = f"{keys.min()}..{keys.max()}" if keys.size and by != "sessions" else sorted(set(keys.tolist()))
            raise RecipeError(
                f"splits.{name} {rule[name]} selects no time step after the embargo of "
                f"{embargo} step(s) (the data covers {unit} {span})"
            )
    if by == "blocks":
        for code, fraction in zip(range(3), rule["fractions"]):
            if fraction > 0 and not np.any(labels == code):
                raise RecipeError(
                    f"splits.fractions gives {SPLIT_NAMES[code]} {fraction:g}, but no step of it is "
                    f"left after the embargo of {embargo} step(s); use smaller blocks or a smaller embargo"
                )
    return labels


def _apply_embargo(labels: np.ndarray, embargo: int) -> None:
    """Exclude, in place, the first steps of each named split that lie `embargo` steps or fewer after a
    kept step of another named split: afterwards every two steps of different splits are more than
    `embargo` apart. Measured from the last step *kept*, so a stretch the embargo removed completely
    (a block no longer than the embargo) or an unlabelled stretch shorter than it hides no boundary."""
    excluded = SPLIT_CODES["excluded"]
    edges = np.concatenate([[0], np.flatnonzero(labels[1:] != labels[:-1]) + 1, [labels.size]])
    last_step, last_split = None, None  # the last kept named step, and its split
    for start, stop in zip(edges[:-1], edges[1:]):  # runs of one label, in time order
        code = labels[start]
        if code == excluded:
            continue
        if last_split is not None and code != last_split:
            first_kept = max(start, last_step + embargo + 1)
            labels[start : min(first_kept, stop)] = excluded
            if first_kept >= stop:
                continue
        last_step, last_split = stop - 1, code


def _block_labels(blocks: np.ndarray, rule: dict) -> np.ndarray:
    """Whole blocks to splits: a permutation drawn from `seed` alone (NumPy's PCG64, the same in any
    process and on any machine), then the first share of blocks to train, the next to val, the rest to test."""
    ids, which = np.unique(blocks, return_inverse=True)
    fractions = np.asarray(rule["fractions"], dtype=np.float64)
    want = fractions * ids.size
    counts = np.floor(want).astype(np.int64)
    counts[np.argsort(-(want - counts), kind="stable")[: ids.size - counts.sum()]] += 1  # largest remainders
    if np.any((fractions > 0) & (counts == 0)):
        raise RecipeError(
            f"splits: {ids.size} block(s) of {rule['block']} cannot be shared as {rule['fractions']}; "
            "use smaller blocks"
        )
    order = np.random.default_rng(rule["seed"]).permutation(ids.size)
    code_of_block = np.empty(ids.size, dtype=np.int8)
    code_of_block[order] = np.repeat(np.arange(counts.size, dtype=np.int8), counts)
    return code_of_block[which]


def _as_cftime_or_datetime(time: np.ndarray):
    """Objects with .year .. .second: cftime dates as they are, datetime64 through pandas."""
    time = np.asarray(time)
    if time.dtype.kind == "M":
        import pandas as pd

        return pd.DatetimeIndex(time)
    return time


def _seconds_since_first(time: np.ndarray) -> np.ndarray:
    time = np.asarray(time)
    if time.dtype.kind == "M":
        return (time - time[0]) / np.timedelta64(1, "s")
    return np.array([(t - time[0]).total_seconds() for t in time])
