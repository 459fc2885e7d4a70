"""The split names, once: SPLITS is the only spelling of ("train", "val", "test"); stores label each step with
the int8 code of its name in SPLIT_NAMES (a step in no split is "excluded")."""

from __future__ import annotations

SPLITS = ("train", "val", "test")
SPLIT_NAMES = (*SPLITS, "excluded")
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}


def check_split(name: object) -> str:
    """`name` if it is one of SPLITS, else the ValueError that lists the valid names."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid names are {list(SPLITS)}")
    return name
