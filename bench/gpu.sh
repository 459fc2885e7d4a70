#!/usr/bin/env bash
# GPU loader + training benchmark on a bare CUDA machine with python3 + torch (the `device` tool):
#   bash bench/gpu.sh SIZE WORKERS OUT      (wheels for missing packages in .whl/, if any)
set -euo pipefail
SIZE=${1:-4}; WORKERS=${2:-8}; OUT=${3:-bench/results}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, xarray, zarr, numpy; print('torch', torch.__version__, 'xarray', xarray.__version__, 'zarr', zarr.__version__, 'numpy', numpy.__version__, 'cpus', __import__('os').cpu_count())"
mkdir -p data/raw "$OUT"
python3 -m canonstore demo-data data/raw/bench --size "$SIZE" --years 2
python3 -m canonstore build recipes/bench.yaml --out data/intermediate/bench.zarr --quiet
[ "${VARIANTS:-}" ] || python3 -m pytest -q -p no:cacheprovider tests/test_prefetch.py tests/test_dataset.py 2>&1 | tail -3 || true
if [ "${VARIANTS:-}" ]; then  # training with the batch path at several worker counts, model alone around them
  for w in 8 2 1; do
    python3 bench/loader.py data/intermediate/bench.zarr --workers $w --train --seconds 8 --only train:model-alone,train:store-batch | tail -1
  done
  exit
fi
python3 bench/loader.py data/intermediate/bench.zarr --workers "$WORKERS" --train --seconds 8 --results "$OUT"
