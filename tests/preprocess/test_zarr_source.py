"""Zarr sources, local (v2, v3) and on a real S3 server: the same store as from NetCDF, chunks read once."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from canonstore import open_store
from canonstore.cli import main
from canonstore.errors import RecipeError, SourceError
from canonstore.preprocess import build, load_recipe
from canonstore.preprocess.zarr_source import READS
from canonstore.remote import listing, zarr_identity
from tests.helpers import write_recipe
from tests.wb2 import CREDENTIALS, LEVELS, as_netcdf, upload, wb2_dataset, write_zarr

SPLITS = {
    "by": "dates",
    "train": ["2000-01-01", "2000-01-06"],
    "val": ["2000-01-07", "2000-01-09"],
    "test": ["2000-01-10", "2000-01-12"],
}
WB2 = ["2m_temperature", "geopotential"]


def _build(folder, source, name="z", **keys):
    keys.setdefault("variables", WB2)
    recipe = write_recipe(folder, name=name, sources=[str(source)], splits=SPLITS, **keys)
    return build(recipe, folder / f"{name}.zarr", progress=False)


def _same_store(a, b) -> None:
    a, b = open_store(a), open_store(b)
    assert a.channels == b.channels == ["t2m"] + [f"z{lev}" for lev in LEVELS]
    assert a.dims == b.dims and np.array_equal(a.time, b.time)
    assert np.array_equal(a.array, b.array)
    for k in a.stats:
        assert np.array_equal(a.stats[k], b.stats[k]), k
    ds_a, ds_b = a.to_xarray(), b.to_xarray()
    for coord in ("latitude", "longitude"):
        assert np.array_equal(ds_a[coord].values, ds_b[coord].values)


@pytest.fixture(scope="module")
def wb2(tmp_path_factory):
    """The WB2-layout data as Zarr v3, Zarr v2 and NetCDF, and the store built from the NetCDF."""
    folder = tmp_path_factory.mktemp("wb2")
    write_zarr(wb2_dataset(), folder / "v3.zarr", 3)
    write_zarr(wb2_dataset(), folder / "v2.zarr", 2)
    as_netcdf(wb2_dataset(), folder / "era5.nc")
    _build(folder, folder / "era5.nc", name="from-nc", variables=["t2m", "z"])
    return folder


@pytest.mark.parametrize("version", ["v3", "v2"])
def test_zarr_source_builds_the_netcdf_store(wb2, tmp_path, version):
    result = _build(tmp_path, wb2 / f"{version}.zarr")
    _same_store(result.path, wb2 / "from-nc.zarr")
    store = open_store(result.path)
    labels = store._group["data"].attrs["labels"]
    assert labels["channel_variable"] == ["2m_temperature"] + ["geopotential"] * len(LEVELS)  # the source's spelling
    (record,) = store.attrs["inputs"]
    assert record["path"] == str((wb2 / f"{version}.zarr").resolve()) and record["objects"] > 10
    assert record["size"] == sum(size for _, size in listing(wb2 / f"{version}.zarr"))


def test_subset_reads_each_selected_chunk_once(wb2, tmp_path):
    """3 of 5 levels and 5 of 12 days, in blocks of 3 steps across chunks of 4: only the selected chunks."""
    store = wb2 / "v3.zarr"
    recipe = write_recipe(
        tmp_path,
        name="sub",
        sources=[str(store)],
        variables=WB2,
        levels={"geopotential": [250, 500, 850]},
        time={"start": "2000-01-03", "end": "2000-01-07"},
        splits={"by": "dates", "train": ["2000-01-03", "2000-01-05"], "test": ["2000-01-06", "2000-01-07"]},
    )
    READS.reset()
    build(recipe, tmp_path / "sub.zarr", progress=False, block_mb=3 * 4 * 32 * 4 / 2**20)
    steps = np.arange(8, 28)  # 2000-01-03T00 .. 2000-01-07T18 at 6 h
    time_chunks = sorted(set(steps // 4))
    level_chunks = [LEVELS.index(v) for v in (250, 500, 850)]
    data = {f"2m_temperature/c/{t}/0/0" for t in time_chunks}
    data |= {f"geopotential/c/{t}/{lev}/0/0" for t in time_chunks for lev in level_chunks}
    coords = {name for name, _ in listing(store) if name.split("/")[0] in ("time", "level", "latitude", "longitude")}
    read = set(READS.per_key)
    chunks_read = {k for k in read if re.search(r"/c/", k) and k.split("/")[0] in WB2}
    assert chunks_read == data  # nothing outside the selection, nothing of the selection missed
    assert all(READS.per_key[k] == 1 for k in data)  # each chunk once, though blocks of 3 cut chunks of 4
    sizes = dict(listing(store))
    metadata = sum(size for name, size in sizes.items() if name.rsplit("/", 1)[-1] in ("zarr.json",))
    assert READS.bytes <= sum(sizes[k] for k in data | coords) + metadata
    assert READS.bytes >= sum(sizes[k] for k in data)
    assert open_store(tmp_path / "sub.zarr").channels == ["t2m", "z250", "z500", "z850"]


def test_changed_listing_rebuilds(wb2, tmp_path):
    source = shutil.copytree(wb2 / "v3.zarr", tmp_path / "src.zarr")
    first = _build(tmp_path, source)
    assert first.built and not _build(tmp_path, source).built  # same metadata and listing: up to date
    later = wb2_dataset(steps=8, start="2000-01-13", seed=1)
    later.to_zarr(source, append_dim="time", consolidated=True)
    again = _build(tmp_path, source)
    assert again.built and open_store(again.path).shape[0] == 56


def test_recipe_rename(wb2, tmp_path):
    result = _build(tmp_path, wb2 / "v3.zarr", rename={"2m_temperature": "tas", "geopotential": "zg"})
    assert open_store(result.path).channels == ["tas"] + [f"zg{lev}" for lev in LEVELS]
    bad = write_recipe(tmp_path, name="bad", sources=[str(wb2 / "v3.zarr")], splits=SPLITS, rename={"x": "1a"})
    with pytest.raises(RecipeError, match=r"bad\.yaml: 'rename' 'x': expected a channel name"):
        load_recipe(bad)
    with pytest.raises(SourceError, match="'rename' names 'msl', which is not a selected variable"):
        _build(tmp_path, wb2 / "v3.zarr", name="other", rename={"msl": "p"})


def test_folder_without_zarr_metadata_is_named(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    recipe = write_recipe(tmp_path, sources=["empty.zarr"], splits=SPLITS)
    with pytest.raises(RecipeError, match="empty.zarr is a folder without Zarr metadata"):
        load_recipe(recipe)


def test_demo_channels_unchanged(tiny_store):
    """Short names apply only to names in canonstore.names' table: the demo's channels are as before."""
    levels = [250, 500, 850]
    expected = ["msl"] + [f"{v}{lev}" for v in "qt" for lev in levels] + ["t2m"]
    expected += [f"{v}{lev}" for v in "uvz" for lev in levels]
    assert open_store(tiny_store).channels == expected  # as built before canonstore.names named channels


# --- object storage: moto's S3 server on 127.0.0.1


def test_s3_source_builds_the_local_store(wb2, tmp_path, s3):
    url = upload(wb2 / "v3.zarr", f"s3://{s3}/wb2/era5.zarr")
    result = _build(tmp_path, url)
    _same_store(result.path, wb2 / "from-nc.zarr")
    (record,) = open_store(result.path).attrs["inputs"]
    local = json.loads(json.dumps(open_store(_build(tmp_path, wb2 / "v3.zarr", name="local").path).attrs["inputs"]))
    assert record["path"] == url  # the same store's objects (the identity's stamps differ: ETags, mtimes)
    assert (record["size"], record["objects"]) == (local[0]["size"], local[0]["objects"])
    assert not _build(tmp_path, url).built  # up to date, by listing the bucket again


def _one_line(tmp_path, source, *extra) -> str:
    recipe = write_recipe(tmp_path, name="r", sources=[source], variables=WB2, splits=SPLITS)
    result = CliRunner().invoke(main, ["build", str(recipe), "--out", str(tmp_path / "r.zarr"), "--quiet", *extra])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_missing_bucket_is_one_line(tmp_path, s3):
    line = _one_line(tmp_path, "s3://no-such-bucket/wb2/era5.zarr")
    assert "s3://no-such-bucket/wb2/era5.zarr" in line and "does not exist" in line


def test_empty_prefix_is_one_line(tmp_path, s3):
    line = _one_line(tmp_path, f"s3://{s3}/nothing.zarr")
    assert f"s3://{s3}/nothing.zarr" in line and "not a Zarr store" in line


def test_wrong_credentials_are_one_line(wb2, tmp_path, s3, monkeypatch):
    import moto.settings

    url = upload(wb2 / "v3.zarr", f"s3://{s3}/era5.zarr")
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server checks keys from now on
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["AWS_SECRET_ACCESS_KEY"] + "-wrong")
    line = _one_line(tmp_path, url)
    assert url in line and "access denied" in line


def test_files_on_object_storage_are_refused(tmp_path):
    for source in ("s3://some-bucket/era5/*.nc", "s3://some-bucket/era5/2020.grib"):
        line = _one_line(tmp_path, source)
        assert f"'{source}'" in line and "use a Zarr source" in line and "copy the files locally" in line


def test_verify_inputs_sees_a_changed_zarr_source(wb2, tmp_path):
    from canonstore.formats.verify import verify_inputs

    source = shutil.copytree(wb2 / "v3.zarr", tmp_path / "src.zarr")
    store = _build(tmp_path, source).path
    assert verify_inputs(store) == []
    shutil.rmtree(source / "geopotential" / "c" / "0" / "4")  # the chunks of one level at the first steps
    (problem,) = verify_inputs(store)
    assert str(source.resolve()) in problem and "chunk listing" in problem


def test_missing_chunk_is_refused_not_read_as_fill_value(tmp_path):
    """A v3 source whose float fill value is 0.0 (zarr's default) with one chunk deleted: the build names the
    variable and the chunk instead of storing 0 K."""
    source = tmp_path / "fill0.zarr"
    ds = wb2_dataset()[["2m_temperature"]]
    ds.to_zarr(source, zarr_format=3, encoding={"2m_temperature": {"chunks": (4, 4, 8), "fill_value": 0.0}})
    assert json.loads((source / "2m_temperature" / "zarr.json").read_text())["fill_value"] == 0.0
    (source / "2m_temperature" / "c" / "3" / "0" / "0").unlink()
    with pytest.raises(SourceError) as raised:
        _build(tmp_path, source, variables=["2m_temperature"])
    message = str(raised.value)
    assert "\n" not in message and str(source) in message and "2m_temperature/c/3/0/0" in message
    assert "write_empty_chunks" in message  # zarr skips chunks equal to the fill value unless told


def test_chunk_rewritten_in_place_changes_the_identity(tmp_path):
    """An uncompressed chunk rewritten with other values, same size: `verify --inputs` says the input changed and
    the next build is not up to date."""
    from canonstore.formats.verify import verify_inputs

    source = tmp_path / "raw.zarr"
    ds = wb2_dataset()[["2m_temperature"]]
    ds.to_zarr(source, zarr_format=3, encoding={"2m_temperature": {"chunks": (4, 4, 8), "compressors": None}})
    store = _build(tmp_path, source, variables=["2m_temperature"]).path
    assert verify_inputs(store) == []
    chunk = source / "2m_temperature" / "c" / "0" / "0" / "0"
    before = chunk.read_bytes()
    chunk.write_bytes(before[4:] + before[:4])  # other values, the same size
    assert chunk.stat().st_size == len(before)
    (problem,) = verify_inputs(store)
    assert str(source.resolve()) in problem and "changed since the build" in problem
    assert _build(tmp_path, source, variables=["2m_temperature"]).built


def test_a_longitude_first_global_grid_is_said_out_loud(tmp_path, said):
    """Every variable longitude-first (WB2's low-resolution layout): the grid is stored as the sources give it, so
    longitude is not last and the store cannot wrap around it (longitude_periodic false); the build says so."""
    ds = wb2_dataset()
    ds["2m_temperature"] = ds["2m_temperature"].transpose("time", "longitude", "latitude")
    encoding = {
        "2m_temperature": {"chunks": (4, ds.sizes["longitude"], ds.sizes["latitude"])},
        "geopotential": {"chunks": (4, 1, ds.sizes["longitude"], ds.sizes["latitude"])},
    }
    ds.to_zarr(tmp_path / "lonfirst.zarr", zarr_format=3, consolidated=True, encoding=encoding)
    store = open_store(_build(tmp_path, tmp_path / "lonfirst.zarr").path)
    assert store.dims[-2:] == ("longitude", "latitude") and not store.longitude_periodic
    assert any("goes round the globe but is not the grid's last dimension" in line for line in said())


def test_a_server_that_is_down_is_one_line(tmp_path, monkeypatch):
    """obstore's errors run to ~40 lines of debug detail; the message keeps their first line."""
    from tests.wb2 import free_port

    for key, value in {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ALLOW_HTTP": "true",
    }.items():
        monkeypatch.setenv(key, value)
    line = _one_line(tmp_path, "s3://bucket/era5.zarr")
    assert "s3://bucket/era5.zarr" in line
    from canonstore.errors import CanonstoreError
    from canonstore.formats import open_store

    with pytest.raises(CanonstoreError) as caught:
        open_store("s3://bucket/era5.zarr")
    assert "\n" not in str(caught.value) and "s3://bucket/era5.zarr" in str(caught.value)


def test_bulk_transfers_retry_where_the_first_contact_fails_fast(monkeypatch):
    """Every S3 call gave up after 2 retries within 20 s: one 503 SlowDown ended an hours-long build."""
    from canonstore.objects import Objects
    from canonstore.remote import RETRY

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    objects = Objects("s3://bucket/prefix")
    assert objects.store.retry_config["max_retries"] == RETRY["max_retries"]  # a wrong endpoint: seconds
    assert objects.bulk.retry_config is None  # object_store's own retries


@pytest.mark.parametrize("version", [2, 3])
def test_stale_consolidated_metadata_is_refused(tmp_path, version):
    """8 steps appended to a store whose consolidated metadata (`.zmetadata`, the root zarr.json's copy) was then
    put back as it was: xarray reads the consolidated copy, and the build stored 48 of the 56 steps without a
    word. The arrays' own metadata says otherwise: the build names the store, the array and the document."""
    source = write_zarr(wb2_dataset(), tmp_path / "src.zarr", version)
    consolidated = source / (".zmetadata" if version == 2 else "zarr.json")
    before = consolidated.read_bytes()
    wb2_dataset(steps=8, start="2000-01-13", seed=1).to_zarr(source, append_dim="time", consolidated=True)
    consolidated.write_bytes(before)  # as a writer that appended without consolidating again leaves it
    with pytest.raises(SourceError) as raised:
        _build(tmp_path, source)
    message = str(raised.value)
    assert "\n" not in message and str(source) in message and "consolidated metadata" in message
    assert re.search(r"'(time|2m_temperature|geopotential)'", message) and "consolidate" in message


def test_a_store_another_writer_made_and_zarr_consolidated_is_not_refused_as_stale(tmp_path):
    """tensorstore leaves an empty `attributes` out and zarr's consolidated copy spells it {} (and fills in the
    chunk key separator and an empty storage_transformers): the same metadata, so the store reads; a changed
    shape in the array's own document is still refused."""
    import tensorstore as ts
    import zarr

    root = tmp_path / "ts.zarr"
    root.mkdir()
    (root / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    values = np.arange(8 * 4 * 6, dtype="float32").reshape(8, 4, 6)
    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(root / "t2m")},
        "metadata": {
            "shape": list(values.shape),
            "data_type": "float32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 4, 6]}},
            "dimension_names": ["time", "latitude", "longitude"],
        },
        "create": True,
    }
    ts.open(spec).result().write(values).result()
    with pytest.warns(UserWarning, match="onsolidated"):
        zarr.consolidate_metadata(str(root))
    assert "attributes" not in json.loads((root / "t2m" / "zarr.json").read_text())
    assert zarr_identity(root)["objects"] == 4  # two documents, two chunks: read, not refused
    own = json.loads((root / "t2m" / "zarr.json").read_text())
    (root / "t2m" / "zarr.json").write_text(json.dumps({**own, "shape": [12, 4, 6]}))  # resized, not consolidated
    with pytest.raises(SourceError, match=r"'shape' is \[12, 4, 6\] in t2m/zarr.json but \[8, 4, 6\]"):
        zarr_identity(root)


@pytest.mark.parametrize("version", [3, 2])
def test_a_chunk_left_out_of_a_nan_filled_array_reads_as_nan_as_from_netcdf(tmp_path, version):
    """zarr does not write a chunk equal to the fill value (write_empty_chunks=False): an all-NaN chunk of a
    NaN-filled array is absent, and was refused as missing. It is NaN: refused by `nan_policy: error` as NaN,
    and under `nan_policy: fill` the store equals the same data's from NetCDF."""
    ds = wb2_dataset()
    ds["2m_temperature"][12:16] = np.nan  # one whole chunk of 4 steps
    source = write_zarr(ds, tmp_path / "gappy.zarr", version)
    chunk = "2m_temperature/c/3/0/0" if version == 3 else "2m_temperature/3.0.0"
    assert not (source / chunk).exists() and (source / chunk.replace("3", "2", 1)).exists()
    with pytest.raises(SourceError, match="NaN"):
        _build(tmp_path, source)
    from_zarr = open_store(_build(tmp_path, source, name="zf", nan_policy="fill").path)
    from_nc = open_store(
        _build(tmp_path, as_netcdf(ds, tmp_path / "g.nc"), name="nf", variables=["t2m", "z"], nan_policy="fill").path
    )
    assert from_zarr.channels == from_nc.channels and "t2m_valid" in from_zarr.channels
    assert np.array_equal(from_zarr.array, from_nc.array)
    for k in from_nc.stats:
        assert np.array_equal(from_zarr.stats[k], from_nc.stats[k]), k


@pytest.mark.parametrize("version", [2, 3])
def test_consolidated_metadata_older_than_an_arrays_attributes_is_refused(tmp_path, version):
    """A `scale_factor` written into the array's own attributes after consolidating: xarray reads the stale copy
    and would store unscaled values, so the build refuses, naming the array and the attribute."""
    source = write_zarr(wb2_dataset(), tmp_path / "src.zarr", version)
    own = source / "2m_temperature" / (".zattrs" if version == 2 else "zarr.json")
    doc = json.loads(own.read_text())
    if version == 2:
        own.write_text(json.dumps({**doc, "scale_factor": 0.5}))
    else:
        own.write_text(json.dumps({**doc, "attributes": {**doc["attributes"], "scale_factor": 0.5}}))
    with pytest.raises(SourceError, match=r"'2m_temperature'.*'(scale_factor|attributes)' is .*0\.5"):
        _build(tmp_path, source)
