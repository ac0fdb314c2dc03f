"""Noise floor of the validation energy: energy distance between two disjoint S-cell samples of
the same observed group, next to the predict-the-control energy, for the groups of one split.

    python experiments/energy_floor.py DATA.h5ad SPLIT.toml [--which val] [--set-size 32]
        [--pert-col gene] [--control non-targeting]

A model's energy on a group cannot be expected below the floor (both sets are finite samples).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from geomloss import SamplesLoss

from ptrag.data.io import ColumnSpec, read_perturbseq
from ptrag.data.splits import load_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("split")
    ap.add_argument("--which", default="val")
    ap.add_argument("--set-size", type=int, default=32)
    ap.add_argument("--pert-col", default="gene")
    ap.add_argument("--control", default="non-targeting")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    data = read_perturbseq(a.data, ColumnSpec(pert_col=a.pert_col, control=a.control))
    split = load_split(data.groups(), a.split)
    energy = SamplesLoss("energy")
    rng = np.random.default_rng(a.seed)
    s = a.set_size
    floor, control = [], []
    for ct, pert in split.groups(a.which)[["cell_type", "perturbation"]].itertuples(index=False):
        rows = rng.permutation(data.rows_of(ct, pert))
        if len(rows) < 2 * s:
            continue
        ctrl = rng.choice(data.rows_of(ct, a.control), s, replace=False)
        x = {
            k: torch.from_numpy(data.expression(r))[None]
            for k, r in (("a", rows[:s]), ("b", rows[s : 2 * s]), ("c", ctrl))
        }
        floor.append(energy(x["b"], x["a"]).item())
        control.append(energy(x["c"], x["a"]).item())
    print(f"{len(floor)} {a.which} groups with >= {2 * s} cells; sets of {s} cells")
    print(f"split-half floor   {np.mean(floor):.4f}")
    print(f"predict-control    {np.mean(control):.4f}")


if __name__ == "__main__":
    main()
