"""Variable names across conventions: WeatherBench 2's long names and the short names of ECMWF/cfgrib.

WeatherBench 2 (and ARCO-ERA5) name variables in words (`2m_temperature`, `geopotential`); ERA5 NetCDF and
GRIB files opened by cfgrib use short names (`t2m`, `z`). A store's channel is named from the short name
(`z500`, `t2m`) whatever the source's spelling, so the same data gives the same channels from either; the
source's own spelling is kept in `channel_variable`. Names not in the table are used as they are.

    short_name("2m_temperature")          # -> 't2m'
    long_name("z")                        # -> 'geopotential'
    same_variable("2m_temperature", "t2m")   # -> True
"""

from __future__ import annotations

# WeatherBench 2's ERA5 names -> ECMWF short names as cfgrib and ERA5 NetCDF give them. Only names whose short
# name is unambiguous: `geopotential_at_surface` (also `z` in ECMWF's tables) keeps its long name.
SHORT_NAMES = {
    "2m_temperature": "t2m",
    "2m_dewpoint_temperature": "d2m",
    "10m_u_component_of_wind": "u10",
    "10m_v_component_of_wind": "v10",
    "10m_wind_speed": "si10",
    "mean_sea_level_pressure": "msl",
    "surface_pressure": "sp",
    "sea_surface_temperature": "sst",
    "total_column_water_vapour": "tcwv",
    "total_cloud_cover": "tcc",
    "toa_incident_solar_radiation": "tisr",
    "total_precipitation": "tp",
    "land_sea_mask": "lsm",
    "geopotential": "z",
    "temperature": "t",
    "u_component_of_wind": "u",
    "v_component_of_wind": "v",
    "vertical_velocity": "w",
    "specific_humidity": "q",
    "relative_humidity": "r",
    "wind_speed": "ws",
}
LONG_NAMES = {short: long for long, short in SHORT_NAMES.items()}


def short_name(name: str, rename: dict[str, str] | None = None) -> str:
    """The short name of variable `name`: the recipe's `rename` first, then the table, else `name` itself."""
    if rename and name in rename:
        return rename[name]
    return SHORT_NAMES.get(name, name)


def long_name(name: str) -> str:
    """WeatherBench 2's name of variable `name` (a short name or already a long one), else `name` itself."""
    return LONG_NAMES.get(name, name)


def same_variable(a: str, b: str, rename: dict[str, str] | None = None) -> bool:
    """Whether `a` and `b` name the same variable in either convention (`2m_temperature` and `t2m`)."""
    return short_name(a, rename) == short_name(b, rename)
