"""Variable names across conventions: WeatherBench 2's long names and ECMWF/cfgrib short names."""

from canonstore.names import LONG_NAMES, SHORT_NAMES, long_name, same_variable, short_name


def test_the_table_is_one_to_one():
    assert len(LONG_NAMES) == len(SHORT_NAMES)


def test_long_and_short_names_map_both_ways():
    assert short_name("2m_temperature") == "t2m"
    assert short_name("geopotential") == "z"
    assert long_name("t2m") == "2m_temperature"
    assert long_name("2m_temperature") == "2m_temperature"
    assert same_variable("2m_temperature", "t2m")
    assert not same_variable("temperature", "t2m")


def test_unknown_names_and_the_recipes_rename():
    assert short_name("growing_season_length") == "growing_season_length"
    assert short_name("geopotential_at_surface") == "geopotential_at_surface"  # z too in ECMWF's tables: ambiguous
    assert short_name("tas", {"tas": "t2m"}) == "t2m"
    assert same_variable("tas", "2m_temperature", {"tas": "t2m"})
