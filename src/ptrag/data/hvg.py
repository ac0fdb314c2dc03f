"""Highly variable genes of a run, chosen on its training cells only."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from ptrag.data.io import PerturbData
from ptrag.errors import PtragError


def select_hvg(
    data: PerturbData,
    rows: np.ndarray,
    n_top: int = 2000,
    max_cells: int = 100_000,
    seed: int = 0,
) -> list[str]:
    """Highly variable genes (scanpy, ``seurat`` flavour) on the given (training) cells.

    Parameters
    ----------
    data
        The data set.
    rows
        Cells to compute dispersions on (training cells only, so that held-out data do not
        leak into the gene choice).
    n_top
        Number of genes; all genes (file order) when the file has at most ``n_top``.
    max_cells
        Subsample the rows (seeded) beyond this number.
    seed
        Seed of the subsample.

    Returns
    -------
    list of str
        Selected genes in file order.
    """
    import scanpy as sc

    if n_top < 1:
        raise PtragError(f"--n-genes must be at least 1 (got {n_top}).")
    if len(data.var_names) <= n_top:
        return list(data.var_names)
    rows = np.asarray(rows)
    if len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
    x = np.concatenate([e for _, e in data.iter_chunks(rows)]) if data.backed else data.expression(rows)
    sub = ad.AnnData(x, var=pd.DataFrame(index=data.var_names))
    sc.pp.highly_variable_genes(sub, n_top_genes=n_top, flavor="seurat")
    # scanpy may return more than n_top genes on ties; keep exactly n_top by rank.
    disp = np.nan_to_num(sub.var["dispersions_norm"].to_numpy(dtype=float), nan=-np.inf)
    top = np.sort(np.argsort(-disp, kind="stable")[:n_top])
    return [data.var_names[i] for i in top]
