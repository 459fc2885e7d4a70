"""The training loop on a tiny store: reproducible, resumable mid-epoch, early stopping, its outputs."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from canonstore import open_dataset
from canonstore.errors import ConfigError, RunError
from canonstore.formats import open_store
from canonstore.training import evaluate, load_config, run_folder, train
from canonstore.training.data import make_loader
from canonstore.training.runs import resolve
from tests.helpers import PROCESS_GROUPS

TINY = {
    "model": "unet",
    "unet": {"width": 4, "depth": 2},
    "epochs": 2,
    "batch_size": 64,
    "lr": 3.0e-3,
    "checkpoint_steps": 5,
    "checkpoint_every": 1,
    "device": "cpu",
    "workers": 1,
    "patience": 0,
}


def tiny(**overrides) -> dict:
    return load_config(None, {**TINY, **overrides})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_same_seed_gives_identical_metrics(tiny_store, tmp_path):
    first = train(tiny(), tiny_store, tmp_path / "a", progress=False)
    second = train(tiny(), tiny_store, tmp_path / "b", progress=False)
    assert first.name == second.name
    assert (first / "metrics.csv").read_bytes() == (second / "metrics.csv").read_bytes()
    assert same_weights(first / "checkpoints" / "last.pt", second / "checkpoints" / "last.pt")
    other = train(tiny(seed=1), tiny_store, tmp_path / "a", progress=False)
    assert other.name != first.name
    assert (other / "metrics.csv").read_bytes() != (first / "metrics.csv").read_bytes()


def test_interrupted_mid_epoch_resumes_to_the_same_result(tiny_store, tmp_path, said):
    whole = train(tiny(), tiny_store, tmp_path / "whole", progress=False)
    steps_per_epoch = len(
        make_loader(
            load_config(None, TINY) | {"loader": "store"},
            open_store(tiny_store),
            "train",
            torch.device("cpu"),
            train=True,
        )
    )
    stop_at = steps_per_epoch + 8  # epoch 2, after a checkpoint at a multiple of 5 steps

    def interrupt(state):
        if state["step"] == stop_at:
            raise KeyboardInterrupt

    runs = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tiny_store, runs, progress=False, on_step=interrupt)
    saved = torch.load(runs / whole.name / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and 0 < saved["batch"] < steps_per_epoch and not saved["finished"]
    train(tiny(), tiny_store, runs, progress=False)
    assert any(f"resuming at epoch 2, batch {saved['batch']}" in m for m in said())
    assert (runs / whole.name / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()
    assert same_weights(runs / whole.name / "checkpoints" / "last.pt", whole / "checkpoints" / "last.pt")


@pytest.mark.slow  # a training process killed and started again
def test_killed_process_resumes_to_the_same_result(tiny_store, tmp_path):
    """SIGKILL (no cleanup at all) as soon as the first mid-epoch checkpoint exists, then run again."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "checkpoint_steps": 3}))
    command = [
        sys.executable,
        "-m",
        "canonstore",
        "train",
        "--config",
        str(config),
        "--store",
        str(tiny_store),
        "--quiet",
    ]
    # the uninterrupted run in a process of its own too: both sides start as fresh processes alike
    assert subprocess.run(command + ["--runs", str(tmp_path / "whole")], capture_output=True).returncode == 0
    whole = next(p for p in (tmp_path / "whole").iterdir() if (p / "config.json").exists())  # not mlruns/
    runs = tmp_path / "killed"
    job = subprocess.Popen(command + ["--runs", str(runs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = runs / whole.name / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert last.exists() and not (runs / whole.name / "metrics.csv").exists()  # killed inside epoch 1
    finished = subprocess.run(command + ["--runs", str(runs)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "resuming at epoch 1" in finished.stdout
    assert (runs / whole.name / "metrics.csv").read_bytes() == (whole / "metrics.csv").read_bytes()


def test_run_folder_scores_and_checkpoints(tiny_store, tmp_path, said):
    folder = train(tiny(), tiny_store, tmp_path / "runs", progress=False)
    text = lines(folder / "train.log")  # each line: UTC time, logger, level, then the message
    logged = [re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (canonstore\.\S+) ([A-Z]+): (.*)", line) for line in text]
    assert all(logged), text
    assert [m[3] for m in logged] == said() and any(m[3].startswith("epoch 2/2: train loss") for m in logged)
    assert {m[2] for m in logged} == {"INFO"} and "canonstore.training.train" in {m[1] for m in logged}
    info = json.loads((folder / "config.json").read_text())
    assert info["name"] == folder.name and "git_commit" in info
    assert info["config"]["model_args"] == {"width": 4, "depth": 2}
    rows = list(csv.DictReader(lines(folder / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_rmse", "val_r2", "val_rmse_z500", "val_mae_t2m", "lr"} <= set(rows[0])
    speed = list(csv.DictReader(lines(folder / "throughput.csv")))
    assert float(speed[0]["samples_per_s"]) > 0 and 0 <= float(speed[0]["data_wait_frac"]) < 1
    assert (folder / "loss.png").stat().st_size > 1000
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-001.pt", "epoch-002.pt", "last.pt"]
    best = torch.load(folder / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == int(min(rows, key=lambda r: float(r["val_loss"]))["epoch"])

    out = evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts")
    assert out.name == f"{folder.name}.json"
    scores = json.loads(out.read_text())
    assert scores["split"] == "test" and scores["checkpoint"] == "best" and scores["epoch"] == best["epoch"]
    z500 = scores["scores"]["channels"]["z500"]
    assert z500["units"] == "m**2 s**-2" and z500["rmse"] > 0 and z500["rmse"] >= z500["mae"]
    assert scores["scores"]["samples"] == len(open_dataset(tiny_store, "test"))


def test_finished_run_is_not_trained_again(tiny_store, tmp_path, said):
    folder = train(tiny(epochs=1), tiny_store, tmp_path, progress=False)
    before = (folder / "checkpoints" / "last.pt").stat().st_mtime_ns
    train(tiny(epochs=1), tiny_store, tmp_path, progress=False)
    assert "already trained" in said()[-1]
    assert (folder / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_early_stopping(tiny_store, tmp_path, said):
    folder = train(tiny(lr=0.0, epochs=6, patience=2), tiny_store, tmp_path, progress=False)
    rows = list(csv.DictReader(lines(folder / "metrics.csv")))
    assert len(rows) == 3  # epoch 1 is best; 2 and 3 are no better: stop
    assert any("early stop" in m for m in said())
    assert torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["finished"]
    assert torch.load(folder / "checkpoints" / "best.pt", weights_only=True)["epoch"] == 1


def test_persistence_scores_equal_the_direct_computation(tiny_store, tmp_path):
    """End to end in physical units: RMSE of x(t) as the forecast of x(t+1), from the store's arrays."""
    folder = train(tiny(model="persistence", lat_weighted=False), tiny_store, tmp_path)
    scores = json.loads(evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts").read_text())[
        "scores"
    ]
    store = open_store(tiny_store)
    times = open_dataset(store, "test").times
    physical = store.denormalise(store.array[:].astype(np.float64))
    error = physical[times + 1] - physical[times]
    rmse = np.sqrt((error**2).mean(axis=(2, 3)).mean(axis=0))  # WeatherBench 2's RMSE: MSE over time, then the root
    got = [scores["channels"][name]["rmse"] for name in store.channels]
    assert np.allclose(got, rmse, rtol=1e-4)
    per_time = np.sqrt((error**2).mean(axis=(2, 3))).mean(axis=0)  # WB2's RMSESqrtBeforeTimeAvg
    assert np.allclose(
        [scores["channels"][name]["rmse_sqrt_before_time_avg"] for name in store.channels], per_time, rtol=1e-4
    )
    bias = error.mean(axis=(0, 2, 3))
    assert np.allclose(
        [scores["channels"][name]["bias"] for name in store.channels], bias, rtol=1e-3, atol=1e-4 * np.abs(error).max()
    )


def test_climatology_is_fitted_and_scored(tiny_store, tmp_path):
    folder = train(tiny(model="climatology"), tiny_store, tmp_path)
    rows = list(csv.DictReader(lines(folder / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["epoch"] == "0"
    coef = weights(folder / "checkpoints" / "best.pt")["coef"]
    assert coef.abs().sum() > 0
    scores = json.loads(evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts").read_text())[
        "scores"
    ]
    assert scores["channels"]["t2m"]["r2"] > 0.1  # the seasonal and diurnal cycles are explained


def test_climatology_on_a_store_shorter_than_a_year_fits_what_the_train_days_support(short_hourly_store, tmp_path):
    folder = train(tiny(model="climatology"), short_hourly_store, tmp_path)
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["model_args"] == {"annual_harmonics": 0, "diurnal_harmonics": 2}
    assert any("annual harmonics 3 -> 0" in w for w in config["warnings"])
    out = evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts")
    scores = json.loads(out.read_text())
    # the noise (1 K) is all it misses of the test days; fitted with annual harmonics it extrapolated to 4 std
    assert 0.8 < scores["scores"]["channels"]["t2m"]["rmse"] < 1.2 and scores["scores"]["channels"]["t2m"]["r2"] > 0.7
    assert scores["acc_climatology"]["fitted_on"] == "train split"


@pytest.mark.parametrize("lead", [1, [1, 3]])
def test_netcdf_loader_gives_the_same_batches(tiny_store, lead):
    store = open_store(tiny_store)
    run = load_config(None, {**TINY, "batch_size": 8, "lead": lead})
    fast = make_loader(run, store, "train", torch.device("cpu"), train=True)
    slow = make_loader({**run, "loader": "netcdf", "workers": 0}, store, "train", torch.device("cpu"), train=True)
    fast.set_epoch(1)
    slow.set_epoch(1)
    for k, ((fx, fy), (sx, sy)) in enumerate(zip(fast, slow)):
        torch.testing.assert_close(sx, fx, rtol=0, atol=1e-6)
        torch.testing.assert_close(sy, fy, rtol=0, atol=1e-6)
        assert np.array_equal(slow.last_steps, fast.last_steps)  # what a rollout computes encodings from
        if k == 2:
            break


def test_evaluate_refuses_another_build_or_a_missing_run(tiny_store, tmp_path):
    folder = train(tiny(model="persistence"), tiny_store, tmp_path)
    info = json.loads((folder / "config.json").read_text())
    info["config"]["store"]["build"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="not the build"):
        evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "forecasts")
    with pytest.raises(RunError, match="no such run"):
        evaluate(tmp_path / "nothing", tmp_path / "scores")


@pytest.mark.slow  # subprocesses (torchrun)
@PROCESS_GROUPS
def test_two_processes_under_torchrun(tiny_store, tmp_path):
    """NPROC=2: DistributedDataParallel on the CPU (gloo); each process trains on half of every epoch."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 1}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "canonstore",
            "train",
            "--config",
            str(config),
            "--store",
            str(tiny_store),
            "--runs",
            str(tmp_path / "runs"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    assert json.loads((folder / "config.json").read_text())["config"]["world_size"] == 2
    speed = list(csv.DictReader(lines(folder / "throughput.csv")))
    per_process = len(open_dataset(tiny_store, "train")) // 2 // 64 * 64
    assert speed[0]["processes"] == "2" and int(speed[0]["samples"]) == 2 * per_process
    assert result.stdout.count("epoch 1/1") == 1  # only the first process logs


def test_bad_config_for_the_store_leaves_no_run(tiny_store, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown channel\(s\) \['foo'\]"):
        train(tiny(channels=["foo"]), tiny_store, tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_diverged_run_stops_with_a_clear_error(tiny_store, tmp_path):
    with pytest.raises(RunError, match="training loss became (nan|inf) in epoch 1"):
        train(tiny(lr=1e30, checkpoint_steps=0, grad_clip=0.0), tiny_store, tmp_path, progress=False)
    assert not list(tmp_path.glob("*/checkpoints/last.pt"))  # nothing diverged was saved to resume from


def _score_share(rank, world, folder, store):
    import torch.distributed as dist

    from canonstore.training.climatology import acc_reference
    from canonstore.training.metrics import TargetMasks, area_weights
    from canonstore.training.models import build_model
    from canonstore.training.runs import resolve
    from canonstore.training.scoring import score

    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        store = open_store(store)
        run = resolve(tiny(model="persistence", lead=4), store, "cpu", world)
        loader = make_loader(run, store, "val", torch.device("cpu"), train=False, rank=rank, world_size=world)
        result = score(
            build_model(run, loader.dataset),
            loader,
            store,
            area_weights(store, loader.dataset.targets),
            TargetMasks(store, loader.dataset),
            acc_reference(store, loader.dataset.targets),
            distributed=world > 1,
        )
        Path(folder, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        if world > 1:
            dist.destroy_process_group()


@pytest.mark.slow  # subprocesses (torchrun)
@PROCESS_GROUPS
@pytest.mark.parametrize("world", [2, 3])
def test_validation_under_ddp_scores_every_sample_once(gappy_store, tmp_path, world):
    """361 val samples (not divisible by 2 or 3): each process scores its share, sums are all-reduced,
    and every process ends with exactly the single-process scores."""
    import torch.multiprocessing as mp

    _score_share(0, 1, tmp_path, gappy_store)
    alone = json.loads((tmp_path / "rank0.json").read_text())
    assert alone["samples"] == 361
    mp.spawn(_score_share, args=(world, str(tmp_path), gappy_store), nprocs=world, join=True)
    for rank in range(world):
        shared = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert shared["samples"] == 361
        for name, channel in alone["channels"].items():
            for key in ("mae", "rmse", "rmse_sqrt_before_time_avg", "bias", "acc"):
                assert shared["channels"][name][key] == pytest.approx(channel[key], rel=1e-12)


def test_unet_refuses_a_grid_smaller_than_its_depth_in_one_line(gappy_store, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"unet.depth=2 .* at least 4 x 4 cells; this store's grid is 2 x 3: "
        r"set unet.depth=1 or less, or use mlp",
    ):
        train(tiny(), gappy_store, tmp_path)
    with pytest.raises(ConfigError, match=r"grid is 2 x 3: set unet.depth=1"):
        train(tiny(unet={"width": 4, "depth": 3}), gappy_store, tmp_path)
    assert not any(tmp_path.iterdir())


def test_encodings_and_blocks_per_epoch_are_config_choices(tiny_store, tmp_path):
    run = tiny(
        epochs=1, encodings=["latlon", "doy", "hod", "toa"], static=False, blocks={"size": [4, 8], "per_epoch": 2}
    )
    folder = train(run, tiny_store, tmp_path, progress=False)
    config = json.loads((folder / "config.json").read_text())["config"]
    assert config["encodings"] == ["latlon", "doy", "hod", "toa"] and config["blocks"] == {
        "size": [4, 8],
        "per_epoch": 2,
    }
    first = weights(folder / "checkpoints" / "last.pt")
    store = open_store(tiny_store)
    conv = next(v for k, v in first.items() if k.endswith("conv.weight"))
    assert conv.shape[1] == len(store.channels) + 9  # inputs, no static, 9 encodings
    plain = train(tiny(epochs=1, static=False), tiny_store, tmp_path, progress=False)
    assert plain.name != folder.name  # a different run, never the same folder
    with pytest.raises(ConfigError, match="encodings"):
        tiny(encodings=["moon"])
    with pytest.raises(ConfigError, match="blocks"):
        tiny(blocks={"size": [4], "per_epoch": 1})


def test_several_leads_score_per_lead_as_single_lead_runs(tiny_store, tmp_path):
    """Persistence at leads [1, 2, 4]: lead 4 scores exactly as a lead-4 run (same windows), lead 2 as computed
    by hand."""
    folder = train(tiny(model="persistence", lead=[1, 2, 4], lat_weighted=False), tiny_store, tmp_path)
    saved = json.loads(evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "fc").read_text())
    assert list(saved["leads"]) == ["1", "2", "4"] and saved["scores"] == saved["leads"]["1"]
    alone = train(tiny(model="persistence", lead=4, lat_weighted=False), tiny_store, tmp_path)
    single = json.loads(evaluate(alone, tmp_path / "scores", forecasts_dir=tmp_path / "fc").read_text())
    for key in ("rmse", "acc", "mae"):
        assert saved["leads"]["4"]["overall"][key] == pytest.approx(single["scores"]["overall"][key], rel=1e-6)
    store = open_store(tiny_store)
    times = open_dataset(store, "test", lead=4).times
    physical = store.denormalise(store.array[:].astype(np.float64))
    per_time = np.sqrt(((physical[times + 2] - physical[times]) ** 2).mean(axis=(2, 3)).mean(axis=0))
    got = [saved["leads"]["2"]["channels"][name]["rmse"] for name in store.channels]
    assert np.allclose(got, per_time, rtol=1e-4)
    val = torch.load(folder / "checkpoints" / "best.pt", weights_only=True)["val"]
    assert sorted(val["leads"]) == [1, 2, 4] and "t2m@t+4" in val["channels"]  # validation per lead too
    assert val["overall"]["rmse"] == pytest.approx(np.mean([v["overall"]["rmse"] for v in val["leads"].values()]))


def test_rollout_trains_on_its_own_forecasts_and_scores_every_step(tiny_store, tmp_path):
    run = tiny(epochs=1, rollout=3, history=1, encodings=["hod", "toa"], static=False)
    steps = []
    folder = train(run, tiny_store, tmp_path, progress=False, on_step=steps.append)
    assert len(steps) == len(
        make_loader(
            resolve(run, open_store(tiny_store), "cpu"),
            open_store(tiny_store),
            "train",
            torch.device("cpu"),
            train=True,
        )
    )
    header = next(csv.reader(lines(folder / "metrics.csv")))
    assert {"val_rmse_t2m@t+1", "val_rmse_t2m@t+3"} <= set(header)
    saved = json.loads(evaluate(folder, tmp_path / "scores", forecasts_dir=tmp_path / "fc").read_text())
    rmse = [saved["leads"][k]["overall"]["rmse"] for k in ("1", "2", "3")]
    assert rmse[0] < rmse[2]  # errors grow along the rollout
    assert saved["config"]["rollout"] == 3


def test_rollout_fine_tunes_from_a_one_step_run(tiny_store, tmp_path):
    one_step = train(tiny(epochs=1), tiny_store, tmp_path, progress=False)
    frozen = tiny(epochs=1, rollout=2, init=str(one_step), lr=0.0, weight_decay=0.0)  # lr 0: the weights stay
    tuned = train(frozen, tiny_store, tmp_path, progress=False)
    start, end = weights(one_step / "checkpoints" / "best.pt"), weights(tuned / "checkpoints" / "last.pt")
    assert start and all(torch.equal(start[k], end[f"net.{k}"]) for k in start)
    config = json.loads((tuned / "config.json").read_text())["config"]
    assert config["init"]["run"] == one_step.name and len(config["init"]["sha256"]) == 64
    other = train(tiny(epochs=1, seed=3), tiny_store, tmp_path, progress=False)
    assert (
        run_folder(tiny(epochs=1, rollout=2, init=str(other), lr=0.0, weight_decay=0.0), tiny_store, tmp_path) != tuned
    )  # other weights, another run
    narrow = train(tiny(epochs=1, channels=["t2m", "z500"]), tiny_store, tmp_path, progress=False)
    with pytest.raises(ConfigError, match="init: the weights in .* do not fit this run's model"):
        train(tiny(rollout=2, init=str(narrow)), tiny_store, tmp_path, progress=False)
    assert not run_folder(tiny(rollout=2, init=str(narrow)), tiny_store, tmp_path).exists()
    with pytest.raises(ConfigError, match="init: .* is neither a run folder"):
        train(tiny(rollout=2, init=str(tmp_path / "nothing")), tiny_store, tmp_path, progress=False)


def test_a_train_split_smaller_than_a_batch_is_refused_naming_both_numbers(tiny_store, tmp_path):
    """The last partial batch is dropped: with fewer train samples than batch_size the run took no step and
    reported "train loss 0.00000" for untrained weights."""
    n = len(open_dataset(tiny_store, "train"))
    with pytest.raises(
        ConfigError,
        match=rf"the train split has {n} samples, fewer than batch_size {n + 1}: no full "
        rf"batch.*set batch_size to {n} or less",
    ):
        train(tiny(batch_size=n + 1), tiny_store, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
    folder = train(tiny(model="persistence", batch_size=n + 1), tiny_store, tmp_path, progress=False)
    assert (folder / "checkpoints" / "best.pt").exists()  # nothing to train: any batch size


def test_an_empty_val_split_is_one_clear_error(tiny_raw, tmp_path):
    from canonstore.errors import StoreError
    from canonstore.preprocess import build
    from tests.helpers import demo_recipe

    out = tmp_path / "noval.zarr"
    build(
        demo_recipe(tmp_path, tiny_raw, splits={"train": [2000, 2001], "test": [2002, 2002]}),
        out,
        progress=False,
    )
    with pytest.raises(
        StoreError,
        match=r"split 'val' has no window .* \(0 steps\): training picks its best epoch "
        r"on the val split",
    ):
        train(tiny(), out, tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()
