"""MLflow logging when it is installed (a recording stand-in here), and that it never stops training."""

import json
import logging
import sys
import types

import pytest

from canonstore.training import load_config, train
from canonstore.training.tracking import RunLog

TINY = {"unet": {"width": 4, "depth": 2}, "epochs": 1, "batch_size": 64, "device": "cpu", "workers": 1}


def fake_mlflow(fail_on: str | None = None) -> types.ModuleType:
    module = types.ModuleType("mlflow")
    module.calls = []

    def record(name):
        def call(*args, **kwargs):
            if name == fail_on:
                raise RuntimeError("tracking server unreachable")
            module.calls.append((name, args, kwargs))
            return types.SimpleNamespace(info=types.SimpleNamespace(run_id="run-123"))

        return call

    for name in (
        "set_tracking_uri",
        "set_experiment",
        "start_run",
        "log_params",
        "log_metrics",
        "log_artifact",
        "end_run",
    ):
        setattr(module, name, record(name))
    return module


def test_logs_params_metrics_and_files(tiny_store, tmp_path, monkeypatch):
    mlflow = fake_mlflow()
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    mlflows_own = logging.getLogger("mlflow")
    monkeypatch.setattr(mlflows_own, "level", logging.INFO)  # what mlflow sets when imported
    folder = train(load_config(None, TINY), tiny_store, tmp_path / "runs", progress=False)
    assert mlflows_own.level == logging.WARNING  # its INFO lines (each run's URL) would drown canonstore's
    calls = {}
    for name, args, kwargs in mlflow.calls:
        calls.setdefault(name, []).append((args, kwargs))
    assert calls["set_tracking_uri"][0][0][0] == (tmp_path / "runs" / "mlruns").resolve().as_uri()
    assert calls["start_run"][0][1] == {"run_name": folder.name}
    params = calls["log_params"][0][0][0]
    assert params["model"] == "unet" and params["model_args.width"] == 4
    metrics, step = calls["log_metrics"][0][0][0], calls["log_metrics"][0][1]["step"]
    assert step == 1 and {"val_loss", "val_rmse_z500", "samples_per_s", "data_wait_frac"} <= set(metrics)
    logged = {args[0].rsplit("/", 1)[-1] for args, _ in calls["log_artifact"]}
    assert {"config.json", "metrics.csv", "throughput.csv", "loss.png"} <= logged
    assert "end_run" in calls
    assert (folder / "mlflow_run_id").read_text().strip() == "run-123"

    mlflow.calls.clear()  # a resumed run goes on in the same MLflow run
    RunLog(folder, folder.name, {})
    assert ("start_run", (), {"run_id": "run-123"}) in mlflow.calls


def test_the_real_mlflow_says_only_warnings_once_a_run_logs_to_it(tiny_store, tmp_path, monkeypatch, capfd):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setattr(logging.getLogger("mlflow"), "level", logging.getLogger("mlflow").level)  # restored after
    train(load_config(None, TINY), tiny_store, tmp_path / "runs", progress=False)
    assert logging.getLogger("mlflow").getEffectiveLevel() == logging.WARNING
    assert "View run" not in "".join(capfd.readouterr())


def test_tracking_failure_is_reported_and_training_goes_on(tiny_store, tmp_path, monkeypatch, said):
    monkeypatch.setitem(sys.modules, "mlflow", fake_mlflow(fail_on="log_metrics"))
    folder = train(load_config(None, TINY), tiny_store, tmp_path, progress=False)
    assert any("MLflow logging off: log_metrics failed" in m for m in said())
    assert (folder / "checkpoints" / "last.pt").exists() and (folder / "metrics.csv").exists()


def test_undefined_scores_are_written_as_null_in_strict_json(tmp_path):
    from canonstore.training.tracking import write_json

    write_json(tmp_path / "s.json", {"acc": float("nan"), "rmse": [1.0, float("inf")], "n": 3})
    text = (tmp_path / "s.json").read_text()
    assert json.loads(text) == {"acc": None, "rmse": [1.0, None], "n": 3} and "NaN" not in text


def test_an_interrupted_run_ends_its_mlflow_run(tiny_store, tmp_path, monkeypatch, said):
    """A run that raised left its MLflow run active, so the next run of the same process logged nothing to MLflow
    ('Run ... is already active')."""
    mlflow = fake_mlflow()
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)

    def interrupt(*_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, TINY), tiny_store, tmp_path, progress=False, on_step=interrupt)
    assert mlflow.calls[-1] == ("end_run", (), {"status": "KILLED"})
    train(load_config(None, TINY), tiny_store, tmp_path, progress=False)  # resumes, and logs to MLflow again
    assert not any("MLflow logging off" in m for m in said()) and mlflow.calls[-1][0] == "end_run"
