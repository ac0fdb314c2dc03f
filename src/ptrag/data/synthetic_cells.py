"""The cells of the synthetic benchmark: negative-binomial counts, ``obs`` and normalisation."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.synthetic_constants import CONTROL_LABEL
from ptrag.data.synthetic_draws import nb_counts

if TYPE_CHECKING:
    from ptrag.data.synthetic import SimulationConfig
    from ptrag.data.synthetic_model import Baseline

CELL_BLOCK = 8192
"""Cells per negative-binomial draw in :func:`simulate_cells` (fixed, so the draws do not depend on memory)."""


def _cell_type_counts(
    rng: np.random.Generator, c: SimulationConfig, t: int, base: Baseline, lfc_t: np.ndarray, lib_mean: float
) -> tuple[list[sp.csr_matrix], np.ndarray, np.ndarray]:
    """Counts of the cells of cell type ``t``: controls, then each perturbation in turn.

    Returns
    -------
    blocks : list[scipy.sparse.csr_matrix]
        float32 counts in blocks of at most :data:`CELL_BLOCK` cells.
    code : numpy.ndarray
        Per cell, 0 for a control and ``p + 1`` for perturbation ``p``.
    batch : numpy.ndarray
        Per cell, its batch index.
    """
    G, P = c.n_genes, c.n_perturbations
    n_per = np.r_[c.controls_per_cell_type, np.full(P, c.cells_per_perturbation)]
    code = np.repeat(np.arange(P + 1), n_per)  # 0 = control, p + 1 = perturbation p
    n = code.size
    batch = rng.permutation(np.arange(n) % c.n_batches)
    # knock-down efficiency per cell (incomplete CRISPRi); controls get none
    eff = np.where(code > 0, rng.beta(5.0, 1.5, n), 0.0)
    log_lib = rng.normal(lib_mean, 0.35, n) + np.log(base.batch_lib[t, batch])
    z = rng.normal(0.0, 1.0, n)  # latent cell-state axis
    lfc_c = np.vstack([np.zeros((1, G)), lfc_t])
    blocks = []
    for lo in range(0, n, CELL_BLOCK):  # bounded memory; fixed block size keeps draws stable
        r = slice(lo, min(n, lo + CELL_BLOCK))
        log_mu = (
            base.log_prop[t][None, :]
            + base.batch_lfc[t, batch[r]]
            + eff[r, None] * lfc_c[code[r]]
            + z[r, None] * base.state_loading[t][None, :]
            + log_lib[r, None]
        )
        counts = nb_counts(rng, np.exp(log_mu), base.theta[None, :])
        blocks.append(sp.csr_matrix(counts.astype(np.float32)))
    return blocks, code, batch


def simulate_cells(
    rng: np.random.Generator,
    c: SimulationConfig,
    perts: list[str],
    cell_types: list[str],
    base: Baseline,
    lfc: np.ndarray,
) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """Draw the counts and ``obs`` of every cell, cell type by cell type.

    Parameters
    ----------
    rng
        The generator of the cell draws.
    c
        The simulation options.
    perts
        Perturbed genes in table order.
    cell_types
        Cell-type names.
    base
        Baseline expression and nuisance effects.
    lfc
        Cell types x perturbations x genes true mean effects.

    Returns
    -------
    counts : scipy.sparse.csr_matrix
        float32 cells x genes counts, indices sorted.
    obs : pandas.DataFrame
        Categorical ``gene``, ``cell_type``, ``gem_group``, indexed ``cell000000``, ...
    """
    lib_mean = math.log(c.counts_per_gene * c.n_genes)
    pert_names = np.asarray([CONTROL_LABEL, *perts], dtype=object)
    blocks, obs_parts = [], []
    for t in range(c.n_cell_types):
        t_blocks, code, batch = _cell_type_counts(rng, c, t, base, lfc[t], lib_mean)
        blocks += t_blocks
        obs_parts.append(
            pd.DataFrame(
                {
                    "gene": pert_names[code],
                    "cell_type": cell_types[t],
                    "gem_group": [f"{cell_types[t]}_{b + 1}" for b in batch],
                }
            )
        )
    counts = sp.vstack(blocks, format="csr", dtype=np.float32)
    counts.sort_indices()
    obs = pd.concat(obs_parts, ignore_index=True)
    obs.index = pd.Index([f"cell{i:06d}" for i in range(len(obs))])
    for col, cats in (
        ("gene", [CONTROL_LABEL, *perts]),
        ("cell_type", cell_types),
        ("gem_group", [f"{ct}_{b + 1}" for ct in cell_types for b in range(c.n_batches)]),
    ):
        obs[col] = pd.Categorical(obs[col], categories=cats)
    return counts, obs


def log_normalise(counts: sp.csr_matrix) -> tuple[sp.csr_matrix, float]:
    """scanpy ``normalize_total`` (median total) + ``log1p``, as float32 CSR.

    Parameters
    ----------
    counts
        Cells x genes counts.

    Returns
    -------
    x : scipy.sparse.csr_matrix
        The normalised, log-transformed matrix.
    target_sum : float
        The median total count of the non-empty cells (the normalisation target).
    """
    import scanpy as sc

    tmp = ad.AnnData(X=counts.copy())
    totals = np.asarray(counts.sum(axis=1)).ravel()
    target_sum = float(np.median(totals[totals > 0]))
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    x = sp.csr_matrix(tmp.X, dtype=np.float32)
    return x, target_sum
