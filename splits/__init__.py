"""Split rules: one label per time step, decided once at build time and stored as data.

>>> labels = split_labels(years, {"train": [1991, 2004], "test": [2005, 2010], "embargo": 1})

The names load their modules on first use: `canonstore.splits.names` (SPLITS) needs no numpy.
"""

from canonstore._lazy import lazy_names

_NAMES = {
    **dict.fromkeys(["SPLITS", "SPLIT_CODES", "SPLIT_NAMES", "check_split"], "canonstore.splits.names"),
    **dict.fromkeys(["find_gaps", "segment_ids"], "canonstore.splits.gaps"),
    **dict.fromkeys(["parse_split_rule", "split_keys", "split_labels"], "canonstore.splits.rules"),
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy_names(__name__, _NAMES)
