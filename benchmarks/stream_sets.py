"""Streaming benchmark: train-time cell sets from an h5ad file read backed (not loaded).

Writes a large synthetic Perturb-seq file chunk by chunk (default 500k cells x 2000 genes,
CSR), opens it with ``--backed``, plans training sets (64 perturbed + 64 matched control cells
per set) and reads them, then prints sets per second and peak resident memory next to the size
of the expression matrix, so one can see the file is not held in RAM (let alone twice).

With ``--prepare`` it first writes the file's run-ready copy (``ptrag prepare``, in a child
process whose time and peak RSS are printed), then reads the same planned sets, in training
batches, from the prepared copy and from the source file, side by side.

    python benchmarks/stream_sets.py --cells 500000 --genes 2000 --sets 400 --dir /tmp/ptrag_bench
    python benchmarks/stream_sets.py --cells 2000000 --genes 2000 --sets 3000 --prepare
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import h5py
import numpy as np


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, default=500_000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--sets", type=int, default=400, help="training sets to read")
    ap.add_argument("--set-size", type=int, default=64)
    ap.add_argument(
        "--hvg", type=int, default=0, help="also select this many HVGs on 20k training cells (0: all genes)"
    )
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ptrag_bench"))
    ap.add_argument("--prepare", action="store_true", help="write the prepared copy first (ptrag prepare)")
    ap.add_argument("--batch-size", type=int, default=64, help="sets per read (a training batch)")
    ap.add_argument("--source-sets", type=int, default=200, help="sets read from the source for comparison")
    args = ap.parse_args()

    from ptrag.data.io import read_perturbseq
    from ptrag.data.sets import SetDataset, SetSampler
    from ptrag.data.synthetic import write_large_h5ad

    path = args.dir / f"large_{args.cells}x{args.genes}.h5ad"
    if not path.exists():
        # Written in a child process so that the peak RSS below is the reader's alone.
        import multiprocessing as mp

        t = time.perf_counter()
        proc = mp.get_context("spawn").Process(
            target=write_large_h5ad, args=(path, args.cells, args.genes), kwargs={"seed": 0}
        )
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"writing {path} failed")
        print(f"wrote {path} in {time.perf_counter() - t:.1f} s (separate process)")
    if args.prepare:
        prepare_in_child(path)
    with h5py.File(path) as f:
        nnz = f["X/data"].shape[0]
    file_mib = path.stat().st_size / 2**20
    dense_mib = args.cells * args.genes * 4 / 2**20
    csr_mib = nnz * 8 / 2**20 + args.cells * 8 / 2**20
    rss0 = peak_rss_mib()

    t = time.perf_counter()
    data = read_perturbseq(path, backed=True)
    t_open = time.perf_counter() - t
    genes = data.var_names
    if args.hvg and args.hvg < len(genes):
        from ptrag.data.hvg import select_hvg

        t = time.perf_counter()
        genes = select_hvg(data, np.arange(data.n_cells), args.hvg, max_cells=20_000)
        print(f"HVG selection on 20k cells: {time.perf_counter() - t:.1f} s")
    sampler = SetSampler(data.obs, data.groups(), args.set_size, seed=0)
    plan = sampler.plan()[: args.sets]
    perts = {p: i for i, p in enumerate(sorted(data.groups()["perturbation"].unique()))}
    print(
        f"file: {args.cells:,} cells x {args.genes:,} genes, {file_mib:,.0f} MiB on disk; "
        f"CSR in memory would be {csr_mib:,.0f} MiB, dense float32 {dense_mib:,.0f} MiB"
    )
    what = "prepared copy found: validation skipped" if data._prepared is not None else "one streaming pass"
    print(f"open + validate (backed, {what}): {t_open:.1f} s; peak RSS after opening {peak_rss_mib():,.0f} MiB")
    if data._prepared is not None:
        rate = read_sets(SetDataset(data, genes, perts), plan, args.batch_size)
        print(
            f"prepared copy: {rate:,.0f} sets/s ({1e3 / rate:.2f} ms/set) over {len(plan)} sets, batches of "
            f"{args.batch_size}; peak RSS {peak_rss_mib():,.0f} MiB"
        )
        data._prepared.close()
        data._prepared = None  # the same object now reads the source file
    n = min(args.source_sets, len(plan))
    if n:
        rate = read_sets(SetDataset(data, genes, perts), plan[:n], args.batch_size)
        print(f"source file: {rate:,.1f} sets/s ({1e3 / rate:.1f} ms/set) over {n} sets")
    print(f"peak RSS: {peak_rss_mib():,.0f} MiB (before opening: {rss0:,.0f} MiB)")


def read_sets(ds, plan: list, batch: int) -> float:
    """Sets per second reading ``plan`` in batches as a training DataLoader does (one warm-up batch)."""
    ds.__getitems__(plan[:batch])
    t = time.perf_counter()
    for i in range(0, len(plan), batch):
        ds.__getitems__(plan[i : i + batch])
    return len(plan) / (time.perf_counter() - t)


def prepare_in_child(path: Path) -> None:
    """``ptrag prepare --data path`` in a child process; print its time and peak RSS."""
    import subprocess
    import sys

    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ptrag", "prepare", "--data", str(path)], check=True)
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"ptrag prepare: {time.perf_counter() - t:.1f} s, peak RSS {child:,.0f} MiB (child process)")


if __name__ == "__main__":
    main()
