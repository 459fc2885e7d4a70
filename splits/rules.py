"""Turn a recipe's split rule into per-step labels (train / val / test / excluded).

Rule forms (inclusive ranges; `val` and `test` are optional):

    {train: [1991, 2004], val: [2005, 2007], test: [2008, 2010], embargo: 1}           # years
    {by: index, train: [0, 99], test: [100, 119], embargo: 0}                          # positions

`embargo` is a number of time steps: the first `embargo` steps of every split that
directly follows another one are labelled `excluded`, so that a lead time or history
window of up to `embargo` steps never reaches across a boundary.
"""

from __future__ import annotations

import numpy as np

from canonstore.errors import RecipeError

SPLIT_NAMES = ("train", "val", "test", "excluded")
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}
_RULE_KEYS = {"train", "val", "test", "embargo", "by"}


def parse_split_rule(rule: object, where: str = "recipe") -> dict:
    """Check a split rule's shape and ordering before any data is read; return it normalised."""
    if not isinstance(rule, dict):
        raise RecipeError(f"{where}: 'splits' must be a mapping, got {type(rule).__name__}")
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) in 'splits': {sorted(unknown)}; expected {sorted(_RULE_KEYS)}")
    by = rule.get("by", "year")
    if by not in ("year", "index"):
        raise RecipeError(f"{where}: splits.by must be 'year' or 'index', got {by!r}")
    if "train" not in rule:
        raise RecipeError(f"{where}: 'splits' needs a 'train' range")
    embargo = rule.get("embargo", 0)
    if not isinstance(embargo, int) or isinstance(embargo, bool) or embargo < 0:
        raise RecipeError(f"{where}: splits.embargo must be a whole number of steps >= 0, got {embargo!r}")
    out: dict = {"by": by, "embargo": embargo}
    previous = None
    for name in ("train", "val", "test"):
        if name not in rule:
            continue
        bounds = rule[name]
        if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)):
            raise RecipeError(f"{where}: splits.{name} must be [first, last] (two whole numbers), got {bounds!r}")
        first, last = bounds
        if first > last:
            raise RecipeError(f"{where}: splits.{name} starts after it ends: {bounds!r}")
        if previous is not None and first <= previous[2]:
            raise RecipeError(
                f"{where}: splits.{name} {list(bounds)} overlaps or precedes splits.{previous[0]} "
                f"{list(previous[1:])}; splits must be disjoint and in order train < val < test")
        previous = (name, first, last)
        out[name] = [first, last]
    return out


def split_labels(keys: np.ndarray, rule: dict) -> np.ndarray:
    """Label each step (int8 codes of SPLIT_NAMES) from its year or position in `keys`.

    `keys` are the years of the time steps (rule by year) or their positions (by index).
    Steps outside every range, and embargoed steps, get `excluded`. A named split that
    ends up with no step is an error: it is almost always a typo in the years.
    """
    keys = np.asarray(keys)
    labels = np.full(keys.shape, SPLIT_CODES["excluded"], dtype=np.int8)
    for name in ("train", "val", "test"):
        if name in rule:
            first, last = rule[name]
            labels[(keys >= first) & (keys <= last)] = SPLIT_CODES[name]
    embargo = rule.get("embargo", 0)
    if embargo:
        # A boundary is where one named split is directly followed by another one.
        change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
        for start in change:
            if labels[start - 1] != SPLIT_CODES["excluded"] and labels[start] != SPLIT_CODES["excluded"]:
                labels[start:start + embargo][labels[start:start + embargo] == labels[start]] = SPLIT_CODES["excluded"]
    for name in ("train", "val", "test"):
        if name in rule and not np.any(labels == SPLIT_CODES[name]):
            unit = "years" if rule["by"] == "year" else "positions"
            span = f"{keys.min()}..{keys.max()}" if keys.size else "nothing"
            raise RecipeError(
                f"splits.{name} {rule[name]} selects no time step after the embargo of "
                f"{embargo} step(s) (the data covers {unit} {span})")
    return labels
