"""Training configs: defaults <- file <- overrides, checked with errors that name the key; run names."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from canonstore.errors import ConfigError, StoreError
from canonstore.formats import open_store
from canonstore.formats.manifest import store_identity
from canonstore.training.config import DEFAULTS, lead_times, load_config, parse_overrides
from canonstore.training.runs import config_hash, resolve, run_name
from tests.helpers import ROOT, linked_copy, replace_build

ROOT_CONFIG = "configs/default.yaml"


def test_file_then_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: mlp\nepochs: 9\nlr: 1e-3\nunet: {width: 8}\n")
    config = load_config(path, parse_overrides(["epochs=2", "unet.depth=2", "channels=[t2m, msl]"]))
    assert config["model"] == "mlp" and config["epochs"] == 2
    assert config["lr"] == 1e-3 and isinstance(config["lr"], float)  # YAML reads 1e-3 as text
    assert config["unet"] == {"width": 8, "depth": 2}  # sections merge key by key
    assert config["channels"] == ["t2m", "msl"]
    assert config["batch_size"] == DEFAULTS["batch_size"]


def test_repository_config_loads():

    config = load_config(ROOT / ROOT_CONFIG)
    assert config["model"] == "unet" and config["epochs"] >= 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("lrr: 1\n", "unknown key 'lrr'"),
        ("epochs: many\n", "key 'epochs': expected a whole number"),
        ("epochs: -1\n", "key 'epochs': expected a whole number"),
        ("lr: true\n", "key 'lr': expected a number"),
        ("model: resnet\n", "key 'model': expected one of"),
        ("unet: {widht: 3}\n", "unknown key(s) ['widht'] in 'unet'"),
        ("static: maybe\n", "key 'static': expected true, false or a list"),
        ("lead: [2, 1]\n", "key 'lead': expected a step count >= 0, or a list of distinct ascending"),
        ("lead: [1, 1]\n", "key 'lead': expected a step count >= 0, or a list of distinct ascending"),
        ("rollout: 0\n", "key 'rollout': expected a whole number >= 1"),
        ("- a list\n", "expected a mapping"),
        ("epochs: [1\n", "not valid YAML"),
    ],
)
def test_bad_config_is_a_clear_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="bad.yaml") as info:
        load_config(path)
    assert message in str(info.value)


def test_bad_override():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match="command line: key 'lead'"):
        load_config(None, parse_overrides(["lead=soon"]))


def test_run_name_follows_what_decides_the_result(tiny_store):
    store = open_store(tiny_store)
    base = resolve(load_config(), store, "cpu")
    assert run_name(base).startswith("unet-demo-") and run_name(base) == run_name(resolve(load_config(), store, "cpu"))

    def name(device="cpu", **overrides):
        return run_name(resolve(load_config(None, overrides), store, device))

    assert name(lr=0.5) != run_name(base)
    assert name(loader="netcdf") != run_name(base)  # the speed comparison never overwrites a run
    assert name(device="cuda") != run_name(base)
    assert name(workers=7) == run_name(base)  # speed only: resuming with other workers is fine
    assert name(mlp={"width": 3}) == run_name(base)  # another model's section is not part of the run
    # the baselines do not train: optimisation keys do not make new runs of them
    assert name(model="persistence", epochs=3) == name(model="persistence", epochs=4)
    assert name(model="persistence") != name(model="climatology")


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({}, "unet-demo-5b637536"),
        ({"blocks": {"size": [4, 8], "per_epoch": 2}, "lead": [1, 2]}, "unet-demo-986ccf05"),
    ],
)
def test_run_names_never_change_between_versions(overrides, name):
    """A run's folder is found again by its name: code that moves or renames (the config's `blocks` are
    patches in the code) must hash the same keys and values. The names are those 0.1 gave."""
    store = SimpleNamespace(
        attrs={"name": "demo"},
        path=Path("data/intermediate/demo.zarr"),
        build_id="0" * 64,
        latitude=None,
        shape=(100, 4, 8, 16),
        dims=("time", "channel", "lat", "lon"),
    )
    assert run_name(resolve(load_config(ROOT_CONFIG, {"model": "unet", **overrides}), store, "cpu")) == name


def test_hash_depends_on_the_store_build_not_its_path(tiny_store):
    store = open_store(tiny_store)
    run = resolve(load_config(), store, "cpu")
    moved = {**run, "store": {**run["store"], "path": "/elsewhere/demo.zarr"}}
    rebuilt = {**run, "store": {**run["store"], "build": "0" * 64}}
    assert config_hash(moved) == config_hash(run)
    assert config_hash(rebuilt) != config_hash(run)


def test_a_run_records_the_build_it_opened_never_the_one_its_path_holds_after_a_rebuild(tiny_store, tmp_path):
    """A rebuild landing between opening the store and resolving the config: the run trains on the
    opened build, so that is the one recorded (or the rebuild is an error), never the new one."""
    config = load_config(None, {"lat_weighted": False})  # nothing else in resolve reads the store again
    path = linked_copy(tiny_store, tmp_path / "a.zarr")
    opened = open_store(path)
    build = opened.build_id  # read already (a dataset made first reads it)
    replace_build(path)
    assert store_identity(path) != build
    assert resolve(config, opened, "cpu")["store"]["build"] == build
    unread = open_store(path)  # its build not read before the next rebuild
    replace_build(path)
    with pytest.raises(StoreError, match="rebuilt or replaced after it was opened"):
        resolve(config, unread, "cpu")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rollout": 4, "lead": [1, 2]}, "set lead to one step count >= 1"),
        ({"rollout": 4, "lead": 0}, "set lead to one step count >= 1"),
        ({"rollout": 4, "blocks": {"size": [4, 8]}}, "cannot train on random blocks"),
        ({"rollout": 2, "task": "downscaling", "coarse": 2}, "no next step to feed"),
        (
            {"rollout": 2, "history": 1, "lead": 2},
            r"rollout: 2 with history: 1 and lead: 2 would feed the model inputs 2 "
            r"steps apart.*set lead=1 or history=0",
        ),
    ],
)
def test_rollout_needs_one_lead_whole_fields_and_a_forecast(tiny_store, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve(load_config(None, overrides), open_store(tiny_store), "cpu")


def test_lead_times_of_a_run():
    assert lead_times({"lead": 1}) == [1]
    assert lead_times({"lead": [1, 2, 4], "rollout": 1}) == [1, 2, 4]
    assert lead_times({"lead": 2, "rollout": 4}) == [2, 4, 6, 8]


def test_rollout_with_history_at_lead_one_is_fine(tiny_store):
    run = resolve(load_config(None, {"rollout": 2, "history": 1, "lead": 1}), open_store(tiny_store), "cpu")
    assert (run["rollout"], run["history"], run["lead"]) == (2, 1, 1)


@pytest.mark.parametrize("lead", [0, [0, 1]])
def test_lead_0_is_refused_for_forecasts_and_fine_for_downscaling(tiny_store, lead):
    store = open_store(tiny_store)
    with pytest.raises(ConfigError, match=r"with task: forecast trains the identity map.*set lead to step counts >= 1"):
        resolve(load_config(None, {"lead": lead}), store, "cpu")
    assert resolve(load_config(None, {"lead": 0, "task": "downscaling", "coarse": 2}), store, "cpu")["lead"] == 0
