import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from canonstore.errors import RecipeError
from canonstore.splits import (
    SPLIT_CODES,
    SPLIT_NAMES,
    SPLITS,
    check_split,
    find_gaps,
    parse_split_rule,
    split_keys,
    split_labels,
)

TRAIN, VAL, TEST, EXCL = (SPLIT_CODES[n] for n in ("train", "val", "test", "excluded"))


def test_the_split_names_are_one_constant_and_a_wrong_one_is_told_the_valid_ones():
    assert SPLITS == ("train", "val", "test") and (*SPLITS, "excluded") == SPLIT_NAMES
    assert [SPLIT_CODES[n] for n in SPLIT_NAMES] == [0, 1, 2, 3]  # the int8 codes stores hold
    assert check_split("val") == "val"
    for wrong in ("validation", "excluded", "Train", None):
        with pytest.raises(ValueError, match=r"unknown split .*; valid names are \['train', 'val', 'test'\]$"):
            check_split(wrong)


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


def labels_of(rule, time, sessions=None):
    rule = parse_split_rule(rule)
    return split_labels(split_keys(rule, time, sessions), rule)


def test_by_dates_bounds_cover_everything_they_name():
    time = pd.date_range("2004-06-29", "2004-07-02T18:00", freq="6h").values
    labels = labels_of(
        {
            "by": "dates",
            "train": ["2004-06-29", "2004-06-30"],
            "val": ["2004-07", "2004-07-01T12"],
            "test": [dt.date(2004, 7, 2), "2004-07-02"],
        },
        time,
    )
    days = pd.DatetimeIndex(time)
    assert (labels[days < "2004-07-01"] == TRAIN).all()
    assert (labels[(days >= "2004-07-01") & (days <= "2004-07-01T12:00")] == VAL).all()
    assert labels[days == "2004-07-01T18:00"].tolist() == [EXCL]  # after val's end, before test's start
    assert (labels[days >= "2004-07-02"] == TEST).all()


def test_by_dates_on_a_noleap_calendar():
    cftime = pytest.importorskip("cftime")
    time = np.array([cftime.DatetimeNoLeap(2001, 2, 28) + dt.timedelta(days=i) for i in range(4)])  # no Feb 29
    labels = labels_of({"by": "dates", "train": ["2001-02-28", "2001-02-28"], "test": ["2001-03", "2001-03"]}, time)
    assert labels.tolist() == [TRAIN, TEST, TEST, TEST]


def test_overlapping_date_ranges_are_refused_before_any_read():
    with pytest.raises(RecipeError, match="overlaps or precedes"):
        parse_split_rule({"by": "dates", "train": ["2000", "2005"], "val": ["2005-06", "2006"]})


def test_by_sessions_names_whole_sessions_and_the_rest_is_excluded():
    sessions = np.repeat(np.array(["a", "b", "c", "d"], dtype=object), 3)
    labels = labels_of({"by": "sessions", "train": ["a", "c"], "test": ["d"]}, np.arange(12), sessions)
    assert labels.tolist() == [TRAIN] * 3 + [EXCL] * 3 + [TRAIN] * 3 + [TEST] * 3
    with pytest.raises(RecipeError, match="both splits.train and splits.test"):
        parse_split_rule({"by": "sessions", "train": ["a"], "test": ["a"]})
    with pytest.raises(RecipeError, match="needs sources with sessions"):
        labels_of({"by": "sessions", "train": ["a"]}, np.arange(3))


def test_blocks_go_whole_to_one_split_with_the_embargo_at_every_change():
    time = pd.date_range("2000-01-01", periods=400, freq="D").values
    rule = {"by": "blocks", "block": "30D", "fractions": [0.6, 0.2, 0.2], "seed": 3, "embargo": 2}
    labels = labels_of(rule, time)
    block = np.arange(400) // 30
    for b in np.unique(block):
        named = set(labels[block == b].tolist()) - {EXCL}
        assert len(named) == 1, f"block {b} is split between {named}"
    for b in range(1, block.max() + 1):  # at an edge where the split changes, the first 2 steps are embargoed
        first = np.flatnonzero(block == b)[0]
        before, after = set(labels[block == b - 1].tolist()) - {EXCL}, set(labels[block == b].tolist()) - {EXCL}
        assert (labels[first : first + 2] == EXCL).all() == (before != after)
    counts = [len(set(block[labels == c].tolist())) for c in (TRAIN, VAL, TEST)]
    assert counts == [8, 3, 3]  # 14 blocks: 8.4, 2.8, 2.8 by largest remainder
    assert not np.array_equal(labels, labels_of({**rule, "seed": 4}, time))


def test_blocks_of_steps_need_no_dates():
    labels = labels_of({"by": "blocks", "block": 10, "fractions": [0.5, 0.5]}, np.arange(100))
    assert set(labels.tolist()) == {TRAIN, VAL} and (labels.reshape(10, 10) == labels[::10, None]).all()


def test_the_same_rule_gives_the_same_labels_in_another_process():
    rule = {"by": "blocks", "block": "7D", "fractions": [0.8, 0.1, 0.1], "seed": 11, "embargo": 1}
    code = (
        "import json, sys, numpy as np, pandas as pd; from canonstore.splits import parse_split_rule, split_keys, "
        "split_labels; r = parse_split_rule(json.loads(sys.argv[1])); t = pd.date_range('2000-01-01', "
        "periods=3000, freq='D').values; print(split_labels(split_keys(r, t), r).tobytes().hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(rule)], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    here = labels_of(rule, pd.date_range("2000-01-01", periods=3000, freq="D").values)
    assert bytes.fromhex(out) == here.tobytes()


def test_a_blocks_rule_is_stored_with_its_seed(tmp_path, tiny_raw):
    from canonstore import open_store
    from canonstore.preprocess import build
    from tests.helpers import demo_recipe

    rule = {"by": "blocks", "block": "60D", "fractions": [0.7, 0.3], "embargo": 2}
    out = tmp_path / "blocks.zarr"
    build(demo_recipe(tmp_path, tiny_raw, splits=rule), out, progress=False)
    store = open_store(out)
    stored = json.loads(store._ds["split"].attrs["rule"])
    assert stored == {**rule, "seed": 0, "fractions": [0.7, 0.3]} == store.attrs["split_rule"]
    assert np.array_equal(store.splits, labels_of(stored, store.time))


def _closest_cross_split_distance(labels: np.ndarray) -> float:
    """The smallest |i - j| over steps i, j of two different named splits (inf when there is one split)."""
    named = np.flatnonzero(labels != EXCL)
    far = np.abs(named[:, None] - named[None, :]).astype(float)
    return far[labels[named][:, None] != labels[named][None, :]].min(initial=np.inf)


def test_the_embargo_keeps_every_pair_of_steps_of_two_splits_more_than_embargo_apart():
    """Brute force over seeds, block sizes and embargoes: a block the embargo removes completely must not hide
    the next boundary (before: train and val 2 steps apart with embargo 2 or 3)."""
    checked = 0
    for seed in range(40):
        for block in (1, 2, 3, 5):
            for embargo in (1, 2, 3, 4, 6):
                rule = parse_split_rule(
                    {"by": "blocks", "block": block, "fractions": [0.5, 0.3, 0.2], "seed": seed, "embargo": embargo}
                )
                try:
                    labels = labels_of(rule, np.arange(60))
                except RecipeError:  # a split emptied by the embargo: refused, fine
                    continue
                checked += 1
                unembargoed = split_labels(split_keys(rule, np.arange(60)), {**rule, "embargo": 0})
                assert _closest_cross_split_distance(labels) > embargo, (seed, block, embargo, labels.tolist())
                # nothing is excluded without a reason: each embargoed step is within `embargo` steps after a
                # kept step of another split
                for i in np.flatnonzero(labels == EXCL):
                    before = labels[max(0, i - embargo) : i]
                    kept = before[before != EXCL]
                    assert kept.size, (seed, block, embargo, i)
                    assert (kept != unembargoed[i]).any(), (seed, block, embargo, i)
    assert checked > 300


def test_the_embargo_also_holds_across_a_short_unlabelled_stretch():
    # train 2000 (4 steps), one step of 2001 labelled nowhere, test 2002: the two are 2 steps apart
    years = np.array([2000] * 4 + [2001] + [2002] * 4)
    labels = split_labels(years, parse_split_rule({"train": [2000, 2000], "test": [2002, 2002], "embargo": 3}))
    assert labels.tolist() == [TRAIN] * 4 + [EXCL] * 3 + [TEST] * 2


@pytest.mark.parametrize(
    "kind",
    ["monthly standard", "monthly noleap", "pentads", "dekads", "yearly", "6-hourly jittered 1%", "daily"],
)
def test_an_axis_that_steps_by_the_calendar_or_a_jittered_clock_has_no_gaps(kind):
    """The 10% rule for steps under 5 days must not turn a calendar's uneven steps into gaps: months of 28-31
    days (31/28 is 1.107), dekads of 8-11, years of 365-366; nor a clock jittered by 1%."""
    import cftime

    if kind.startswith("monthly"):
        calendar = kind.split()[1]
        times = np.array([cftime.datetime(2000 + m // 12, m % 12 + 1, 1, calendar=calendar) for m in range(48)])
    elif kind == "pentads":
        times = np.array([np.datetime64("2001-01-01") + np.timedelta64(5 * i, "D") for i in range(73)])
    elif kind == "dekads":  # 1st, 11th, 21st of each month: steps of 10 and 8-11 days
        times = np.array([np.datetime64(f"2001-{m:02d}-{d:02d}") for m in range(1, 13) for d in (1, 11, 21)])
    elif kind == "yearly":
        times = np.array([np.datetime64(f"{y}-01-01") for y in range(1990, 2030)])
    elif kind == "daily":
        times = np.arange(np.datetime64("2000-01-01"), np.datetime64("2004-01-01"))
    else:
        jitter = np.random.default_rng(0).uniform(-0.01, 0.01, 200) * 6 * 3600
        seconds = np.arange(200) * 6 * 3600 + jitter
        times = np.datetime64("2000-01-01T00:00") + seconds.astype("timedelta64[s]")
    assert find_gaps(times)[0] == []


@pytest.mark.parametrize("hours, gap", [(6.7, True), (6.5, False), (12, True)])
def test_a_sub_daily_axis_gaps_at_a_step_over_one_tenth_longer(hours, gap):
    """6-hourly with one step of `hours`: 6.7 h and 12 h end windows (a lead-1 pair across would not span 6 h),
    6.5 h (within 10%) does not."""
    steps = np.full(30, 6 * 3600.0)
    steps[14] = hours * 3600
    times = np.datetime64("2000-01-01T00:00") + np.concatenate([[0], np.cumsum(steps)]).astype("timedelta64[s]")
    assert find_gaps(times)[0] == ([14] if gap else [])
