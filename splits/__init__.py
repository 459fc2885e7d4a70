"""Split rules: one label per time step, decided once at build time and stored as data.

>>> labels = split_labels(years, {"train": [1991, 2004], "test": [2005, 2010], "embargo": 1})
"""

from canonstore.splits.gaps import find_gaps, segment_ids
from canonstore.splits.rules import SPLIT_CODES, SPLIT_NAMES, parse_split_rule, split_keys, split_labels

__all__ = ["SPLIT_CODES", "SPLIT_NAMES", "find_gaps", "parse_split_rule", "segment_ids", "split_keys", "split_labels"]
