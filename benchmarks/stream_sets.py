"""Streaming benchmark: train-time cell sets from an h5ad file read backed (not loaded).

Writes a large synthetic Perturb-seq file chunk by chunk (default 500k cells x 2000 genes,
CSR), opens it with ``--backed``, plans training sets (64 perturbed + 64 matched control cells
per set) and reads them, then prints sets per second and peak resident memory next to the size
of the expression matrix, so one can see the file is not held in RAM (let alone twice).

    python benchmarks/stream_sets.py --cells 500000 --genes 2000 --sets 400 --dir /tmp/ptrag_bench
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
    if args.hvg:
        from ptrag.data.hvg import select_hvg

        t = time.perf_counter()
        genes = select_hvg(data, np.arange(data.n_cells), args.hvg, max_cells=20_000)
        print(f"HVG selection on 20k cells: {time.perf_counter() - t:.1f} s")
    sampler = SetSampler(data.obs, data.groups(), args.set_size, seed=0)
    plan = sampler.plan()[: args.sets]
    ds = SetDataset(data, genes, {p: i for i, p in enumerate(sorted(data.groups()["perturbation"].unique()))})
    t = time.perf_counter()
    for cs in plan:
        ds[cs]
    dt = time.perf_counter() - t
    print(
        f"file: {args.cells:,} cells x {args.genes:,} genes, {file_mib:,.0f} MiB on disk; "
        f"CSR in memory would be {csr_mib:,.0f} MiB, dense float32 {dense_mib:,.0f} MiB"
    )
    print(f"open + validate (backed, one streaming pass): {t_open:.1f} s")
    print(
        f"read {len(plan)} training sets of {args.set_size}+{args.set_size} cells: "
        f"{len(plan) / dt:.1f} sets/s ({dt / len(plan) * 1e3:.1f} ms/set)"
    )
    print(f"peak RSS: {peak_rss_mib():,.0f} MiB (before opening: {rss0:,.0f} MiB)")


if __name__ == "__main__":
    main()
