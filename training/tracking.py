"""What a run leaves behind in `runs/<run-name>/`, and in MLflow when it is installed.

    config.json       the resolved config, run name, git commit, versions
    metrics.csv       one row per epoch: learning rate, train loss, validation loss and scores
    throughput.csv    one row per epoch: samples/s and the fraction of step time spent waiting for data
    loss.png          train and validation loss per epoch (when matplotlib is installed)
    checkpoints/      best.pt, last.pt, epoch-<n>.pt (training.checkpoint)

metrics.csv depends only on the run's config and data, so two runs with the same seed write the
same file; timings, which never repeat, go to throughput.csv. Both are rewritten whole from the
history kept in the checkpoint, so a resumed run never holds a row twice.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import logging
import math
import os
import platform
from pathlib import Path

import torch

from canonstore._logging import copied_to
from canonstore.atomic import write_file_atomic, write_json_atomic
from canonstore.errors import RunError
from canonstore.provenance import git_commit, git_dirty, package_version

logger = logging.getLogger(__name__)
QUIETED = ("mlflow", "alembic")  # third-party loggers set to WARNING once canonstore logs to MLflow


def write_json(path: Path, value) -> None:
    """Strict JSON: an undefined score (NaN, e.g. the ACC of the climatology itself) is written as null."""
    write_json_atomic(path, _finite_or_null(value), indent=2, sort_keys=False, allow_nan=False)


def _finite_or_null(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    write_file_atomic(path, text.getvalue())


def read_config(folder: Path) -> dict:
    """The resolved config a run was trained with (its config.json)."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())["config"]
    except FileNotFoundError:
        raise RunError(f"{folder}: no such run (no config.json): train it first with `make train`") from None
    except (ValueError, KeyError) as exc:
        raise RunError(f"{path}: not a canonstore run config: {exc}") from exc


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train_log(folder: Path):
    """While a run trains, canonstore's lines also go to `runs/<run>/train.log`, each with its UTC time and
    level (a batch job's terminal output is easily lost; the run folder stays). Resumed runs append."""
    return copied_to(LogFile(folder))


class LogFile:
    """Appends lines to the run folder's `train.log`. Lines said before the folder exists (a bad config leaves
    no folder) wait and go in with the first one after; a full disk costs the log, never the run."""

    def __init__(self, folder: Path):
        self.path, self.waiting = Path(folder) / "train.log", []

    def __call__(self, line: str) -> None:
        self.waiting.append(line + "\n")
        if self.path.parent.is_dir():
            with contextlib.suppress(OSError), open(self.path, "a") as f:
                f.writelines(self.waiting)
            self.waiting = []


class RunLog:
    """Writes one run's folder; also logs to MLflow (local file store under runs/mlruns by default,
    or MLFLOW_TRACKING_URI) when mlflow can be imported. Tracking trouble never stops training."""

    def __init__(self, folder: Path, name: str, run: dict):
        self.folder, self.name, self.run = Path(folder), name, run
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mlflow = self._start_mlflow()

    def write_config(self) -> None:
        """config.json, written when the run starts (a resumed run keeps its first one)."""
        path = self.folder / "config.json"
        if path.exists():
            return

        write_json(
            path,
            {
                "name": self.name,
                "config": self.run,
                "git_commit": git_commit(),
                "git_dirty": git_dirty(),
                "canonstore_version": package_version("canonstore") or "0+unknown",
                "torch_version": torch.__version__,
                "python": platform.python_version(),
                "host": platform.node(),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            },
        )

    def epoch(self, history: list[dict], throughput: list[dict]) -> None:
        write_csv(self.folder / "metrics.csv", history)
        write_csv(self.folder / "throughput.csv", throughput)
        if self.mlflow and history:
            row = {**history[-1], **(throughput[-1] if throughput else {})}
            metrics = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
            self._call("log_metrics", metrics, step=int(history[-1]["epoch"]))

    def finish(self) -> None:
        self.plot_loss()
        if self.mlflow:
            for name in ("config.json", "metrics.csv", "throughput.csv", "loss.png", "train.log"):
                if (self.folder / name).exists():
                    self._call("log_artifact", str(self.folder / name))
            self._call("end_run")

    def abort(self) -> None:
        """End the MLflow run of a run that failed or was interrupted (a resume logs into it again)."""
        if self.mlflow:
            self._call("end_run", status="KILLED")

    def plot_loss(self) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            logger.warning("loss.png skipped: matplotlib is not installed (pip install matplotlib)")
            return
        rows = read_csv(self.folder / "metrics.csv") if (self.folder / "metrics.csv").exists() else []
        if not rows:
            return
        epochs = [int(r["epoch"]) for r in rows]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in ("train_loss", "val_loss"):
            values = [float(r[key]) if r.get(key) not in (None, "") else float("nan") for r in rows]
            ax.plot(epochs, values, marker="o", label=key.replace("_", " "))
        ax.set(xlabel="epoch", ylabel="area-weighted MSE (normalised units)", yscale="log", title=self.name)
        ax.legend()
        fig.tight_layout()
        fig.savefig(self.folder / "loss.png", dpi=100)
        plt.close(fig)

    # -- MLflow ---------------------------------------------------------------------------
    def _start_mlflow(self):
        try:
            import mlflow
        except ImportError:
            return None
        for name in QUIETED:  # their INFO lines (each run's URL, database migrations) drown canonstore's
            logging.getLogger(name).setLevel(logging.WARNING)
        id_file = self.folder / "mlflow_run_id"
        try:
            uri = os.environ.get("MLFLOW_TRACKING_URI")
            if not uri:  # the local file store: MLflow >= 3.7 wants this opt-in for it (or a database URI)
                uri = (self.folder.parent / "mlruns").resolve().as_uri()
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment("canonstore")
            if id_file.exists():  # a resumed run goes on logging into the same MLflow run
                mlflow.start_run(run_id=id_file.read_text().strip())
            else:
                active = mlflow.start_run(run_name=self.name)
                id_file.write_text(active.info.run_id + "\n")
                mlflow.log_params(_flat(self.run))
        except Exception as exc:  # noqa: BLE001 - any tracking failure: say so and train on
            logger.warning(f"MLflow logging off: {type(exc).__name__}: {exc}")
            return None
        return mlflow

    def _call(self, method: str, *args, **kwargs) -> None:
        try:
            getattr(self.mlflow, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            logger.warning(f"MLflow logging off: {method} failed: {type(exc).__name__}: {exc}")
            self.mlflow = None


def _flat(value: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, lists as text: MLflow params are flat strings."""
    flat = {}
    for key, item in value.items():
        if isinstance(item, dict):
            flat.update(_flat(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item if isinstance(item, (int, float, str, bool)) else json.dumps(item)
    return flat
