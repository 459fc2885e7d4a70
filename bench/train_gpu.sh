#!/usr/bin/env bash
# `make train MODEL=unet` from the store and with LOADER=netcdf, same config and workers, on a bare
# CUDA machine (the `device` tool: no make env there, so the same CLI calls make would run):
#   bash bench/train_gpu.sh SIZE WORKERS EPOCHS OUT      (wheels for missing packages in .whl/, if any)
# Prints each run's throughput.csv (samples/s, data-wait fraction per epoch) and the store/netcdf ratio.
set -euo pipefail
SIZE=${1:-4}; WORKERS=${2:-8}; EPOCHS=${3:-2}; OUT=${4:-bench/results}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m canonstore demo-data data/raw/demo --size "$SIZE" --years 5
python3 -m canonstore build recipes/demo.yaml --out data/intermediate/demo.zarr --quiet
for loader in store netcdf; do
  python3 -m canonstore train --model unet --set loader=$loader --set workers="$WORKERS" --set epochs="$EPOCHS" \
    --set unet.width=32 --runs "$OUT/runs" --quiet
done
# DDP on the GPU: two processes (on one GPU they share it, gloo; on two or more, NCCL), one epoch.
python3 -m torch.distributed.run --standalone --nproc_per_node=2 -m canonstore train --model unet \
  --set workers="$WORKERS" --set epochs=1 --set unet.width=32 --runs "$OUT/ddp" --quiet
for f in "$OUT"/ddp/*/throughput.csv; do echo "DDP x2: $f"; cat "$f"; done
python3 - "$OUT/runs" <<'PY'
import csv, sys, pathlib
rows = {}
for folder in sorted(pathlib.Path(sys.argv[1]).glob("unet-*")):
    speed = list(csv.DictReader(open(folder / "throughput.csv")))
    for r in speed:
        print(folder.name, r["loader"], "epoch", r["epoch"], r["samples_per_s"], "samples/s, data wait",
              f"{100 * float(r['data_wait_frac']):.1f}%")
    rows[speed[-1]["loader"]] = float(speed[-1]["samples_per_s"])  # last epoch: no cuDNN autotuning in it
if {"store", "netcdf"} <= rows.keys():
    print(f"store / netcdf, last epoch: {rows['store'] / rows['netcdf']:.1f}x")
PY
