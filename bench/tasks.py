"""The forecast tasks side by side on one store: one step, several leads at once, rollout, fine-tuning.

    python bench/tasks.py data/intermediate/demo.zarr --epochs 3 --results bench/results

Trains (or finds, when already trained) each row's run with configs/default.yaml plus the row's
settings, scores its best checkpoint on the test split at leads 1..4 (one-step runs are rolled out
for 4 steps, `evaluate --steps 4`), and prints a table of test RMSE per lead: overall in train
stds, t2m in K, z500 in m2 s-2. Every row is scored on the same test windows (t .. t+4 in the split).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from canonstore.training import evaluate, load_config, train

ENCODINGS = ["latlon", "doy", "hod", "toa"]
# (label, config overrides, steps to roll out at evaluation, the row whose run it starts from)
ROWS = [
    ("persistence", {"model": "persistence", "rollout": 4}, None, None),
    ("climatology", {"model": "climatology", "rollout": 4}, None, None),
    ("unet, lead 1 (rolled out)", {}, 4, None),
    ("unet + encodings, lead 1 (rolled out)", {"encodings": ENCODINGS}, 4, None),
    ("unet, lead [1, 2, 4] at once", {"lead": [1, 2, 4]}, None, None),
    ("unet, rollout 4", {"rollout": 4}, None, None),
    (
        "unet, lead 1 then rollout 4 (1 epoch)",
        {"rollout": 4, "epochs": 1, "lr": 3.0e-4, "warmup": 0.0},
        None,
        "unet, lead 1 (rolled out)",
    ),
    (
        "unet + encodings, lead 1 then rollout 4 (1 epoch)",
        {"encodings": ENCODINGS, "rollout": 4, "epochs": 1, "lr": 3.0e-4, "warmup": 0.0},
        None,
        "unet + encodings, lead 1 (rolled out)",
    ),
]
CHANNELS = ("t2m", "z500")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--scores", default="scores")
    parser.add_argument("--results", default="bench/results")
    parser.add_argument("--only", nargs="*", help="labels of the rows to run (default: all)")
    args = parser.parse_args()

    folders, rows = {}, []
    for label, overrides, steps, init in ROWS:
        if args.only and label not in args.only and not any(label == r[3] for r in ROWS if r[0] in args.only):
            continue
        config = load_config(
            args.config,
            {
                "epochs": args.epochs,
                "device": args.device,
                **overrides,
                **({"init": str(folders[init])} if init else {}),
            },
        )
        began = time.perf_counter()
        folders[label] = train(config, args.store, args.runs, progress=False)
        seconds = time.perf_counter() - began
        scores = json.loads(evaluate(folders[label], args.scores, steps=steps).read_text())
        leads = {
            int(k): {"overall": v["overall"]["rmse"], **{c: v["channels"][c]["rmse"] for c in CHANNELS}}
            for k, v in scores["leads"].items()
        }
        rows.append(
            {
                "label": label,
                "run": folders[label].name,
                "train_seconds": round(seconds, 1),
                "samples": scores["scores"]["samples"],
                "leads": leads,
            }
        )
        print(f"{label}: {folders[label].name}, {seconds:.0f} s", flush=True)

    print("\n| run | " + " | ".join(f"lead {k}" for k in range(1, 5)) + " |")
    print("|---|" + "---|" * 4)
    for row in rows:
        cells = []
        for k in range(1, 5):
            v = row["leads"].get(k)
            cells.append("" if v is None else f"{v['overall']:.4f} / {v['t2m']:.3f} / {v['z500']:.1f}")
        print(f"| {row['label']} | " + " | ".join(cells) + " |")
    print("\n(test RMSE: overall in train stds / t2m in K / z500 in m2 s-2)")
    out = Path(args.results) / "tasks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"store": args.store, "epochs": args.epochs, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
