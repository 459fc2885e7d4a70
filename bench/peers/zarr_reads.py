"""How zarr-python reads a batch of a sharded store: one `oindex` of the batch's steps t and t + 1, against one
`data[t:t+2]` read per step, with the zarr-python of the venv that runs it, for 4 s each (warm page cache).

    <venv>/bin/python bench/peers/zarr_reads.py data/peers/m/canonstore-zstd.zarr/data [BATCH]

canonstore reads a compressed store with the `oindex` form (loaders/dataset.py, gather).
"""

import sys
import time

import numpy as np
import zarr


def main() -> None:
    path = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    array = zarr.open_array(path, mode="r")
    rng = np.random.default_rng(0)
    n = array.shape[0] - 1
    print(zarr.__version__, path, array.shape, "shards", array.shards, "compressors", array.compressors)
    reads = {
        "oindex": lambda steps: array.oindex[np.union1d(steps, steps + 1)],
        "per-step": lambda steps: [array[int(t) : int(t) + 2] for t in steps],
    }
    for name, read in reads.items():
        read(np.sort(rng.choice(n, batch, replace=False)))  # warm-up
        k, start = 0, time.perf_counter()
        while time.perf_counter() - start < 4:
            read(np.sort(rng.choice(n, batch, replace=False)))
            k += 1
        elapsed = time.perf_counter() - start
        print(f"  {name:9s} {k * batch / elapsed:8.1f} samples/s ({k} batches of {batch})")


if __name__ == "__main__":
    main()
