"""Small Perturb-seq AnnData files made in the tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

#: ``ptrag train`` options of a tiny, seconds-long training (the tests add the target and seed).
#: The network and set sizes of those trainings.
TINY_MODEL = "--batch-size 4 --cell-set-size 8 --hidden 16 --n-heads 2 --ffn 32 --n-genes 20 --topk 3".split()  # noqa: SIM905
TINY_TRAIN = ["--max-steps", "4", "--val-every", "2", *TINY_MODEL]


def make_adata(
    n_cell_types: int = 2,
    n_perts: int = 6,
    cells: int = 20,
    n_controls: int = 40,
    n_genes: int = 30,
    counts: bool = False,
    seed: int = 0,
    pert_col: str = "gene",
    cell_type_col: str = "cell_type",
    control: str = "non-targeting",
) -> ad.AnnData:
    """A tiny data set: each perturbation shifts its own block of genes."""
    rng = np.random.default_rng(seed)
    rows, obs = [], []
    base = rng.gamma(2.0, 1.0, size=(n_cell_types, n_genes))
    for c in range(n_cell_types):
        for p in [control] + [f"P{i}" for i in range(n_perts)]:
            n = n_controls if p == control else cells
            mu = base[c].copy()
            if p != control:
                i = int(p[1:])
                mu[(3 * i) % n_genes : (3 * i) % n_genes + 3] *= 4.0
            rows.append(rng.poisson(mu, size=(n, n_genes)))
            obs += [(p, f"CT{c}", f"b{k % 2}") for k in range(n)]
    x = np.concatenate(rows).astype(np.float32)
    obs = pd.DataFrame(obs, columns=[pert_col, cell_type_col, "gem_group"])
    obs.index = [f"cell{i}" for i in range(len(obs))]
    a = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    if not counts:
        tot = x.sum(1, keepdims=True)
        a.X = sp.csr_matrix(np.log1p(x / np.maximum(tot, 1) * 1e4).astype(np.float32))
        a.uns["log1p"] = {"base": None}
    return a


def write_gene_table(path, n_perts: int = 8, dim: int = 12, seed: int = 0) -> None:
    """A GenePT-style pickle of random ``dim``-vectors for perturbations ``P0 .. P{n_perts-1}``."""
    import pickle

    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        pickle.dump({f"P{i}": rng.normal(size=dim).tolist() for i in range(n_perts)}, f)
