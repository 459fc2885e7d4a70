import numpy as np
import pytest

from canonstore.errors import RecipeError
from canonstore.splits import SPLIT_CODES, parse_split_rule, split_labels

TRAIN, VAL, TEST, EXCL = (SPLIT_CODES[n] for n in ("train", "val", "test", "excluded"))


def test_year_ranges_with_embargo_exclude_the_first_steps_after_each_boundary():
    years = np.repeat([2000, 2001, 2002, 2003], 4)
    rule = parse_split_rule({"train": [2000, 2001], "val": [2002, 2002], "test": [2003, 2003], "embargo": 2})
    labels = split_labels(years, rule)
    assert labels.tolist() == [TRAIN] * 8 + [EXCL] * 2 + [VAL] * 2 + [EXCL] * 2 + [TEST] * 2


def test_steps_outside_every_range_are_excluded_not_dropped():
    labels = split_labels(np.array([1999, 2000, 2001, 2005]), parse_split_rule({"train": [2000, 2001]}))
    assert labels.tolist() == [EXCL, TRAIN, TRAIN, EXCL]


def test_no_embargo_across_a_gap():
    # train then an unlabelled year then test: nothing adjacent, so nothing more is excluded
    years = np.repeat([2000, 2001, 2002], 2)
    labels = split_labels(years, parse_split_rule({"train": [2000, 2000], "test": [2002, 2002], "embargo": 1}))
    assert labels.tolist() == [TRAIN, TRAIN, EXCL, EXCL, TEST, TEST]


def test_by_index():
    rule = parse_split_rule({"by": "index", "train": [0, 5], "test": [6, 9], "embargo": 1})
    labels = split_labels(np.arange(10), rule)
    assert labels.tolist() == [TRAIN] * 6 + [EXCL] + [TEST] * 3


def test_a_split_emptied_by_the_embargo_is_an_error():
    rule = parse_split_rule({"train": [2000, 2000], "val": [2001, 2001], "embargo": 3})
    with pytest.raises(RecipeError, match=r"splits.val \[2001, 2001\] selects no time step"):
        split_labels(np.repeat([2000, 2001], 2), rule)


def test_a_split_outside_the_data_is_an_error():
    with pytest.raises(RecipeError, match="covers years 2000..2001"):
        split_labels(np.array([2000, 2001]), parse_split_rule({"train": [2000, 2000], "test": [2010, 2011]}))
