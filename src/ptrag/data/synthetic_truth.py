"""Ground truth of the synthetic benchmark, and statistics measured against it.

The ground truth lists, per (cell type, query perturbation), the other perturbations whose true
mean effect in that cell type is cosine-similar to the query's (:func:`true_ground_truth`). It is
stored in ``adata.uns`` (:func:`ground_truth_to_uns`) and in ``ground_truth.csv``, read back by
:func:`load_ground_truth` and expanded by :func:`informative_sets`; the statistics score the
embedding retrieval and the cell-type dependence of the informative sets against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.synthetic_constants import CONTROL_LABEL, GROUND_TRUTH_KEY, GT_COLUMNS, SIMULATION_KEY
from ptrag.data.synthetic_draws import cosine_matrix
from ptrag.errors import PtragError

if TYPE_CHECKING:
    from ptrag.data.synthetic import SyntheticBenchmark


def true_ground_truth(
    lfc: np.ndarray, cell_types: list[str], perts: list[str], threshold: float
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The informative pairs implied by the true mean effects.

    Parameters
    ----------
    lfc
        Cell types x perturbations x genes true mean effects.
    cell_types
        Cell-type names (first axis of ``lfc``).
    perts
        Perturbed genes (second axis of ``lfc``).
    threshold
        Cosine similarity above which another perturbation is informative for a query.

    Returns
    -------
    ground_truth : pandas.DataFrame
        One row per informative pair (``cell_type``, ``query``, ``informative``), sorted by cell
        type, query and decreasing cosine.
    true_effects : dict[str, numpy.ndarray]
        Cell type -> float32 perturbations x genes true mean effects.
    """
    rows = []
    true_effects = {}
    for t, ct in enumerate(cell_types):
        true_effects[ct] = lfc[t].astype(np.float32)
        cos = cosine_matrix(lfc[t])
        np.fill_diagonal(cos, -np.inf)
        for p in range(len(perts)):
            order = np.argsort(-cos[p], kind="stable")
            rows += [(ct, perts[p], perts[q]) for q in order if cos[p, q] > threshold]
    ground_truth = pd.DataFrame(rows, columns=["cell_type", "query", "informative"], dtype=object)
    return ground_truth, true_effects


def ground_truth_to_uns(gt: pd.DataFrame) -> dict[str, np.ndarray]:
    """The ground truth as ``adata.uns`` string arrays, one per column of :data:`GT_COLUMNS`."""
    return {col: np.asarray([str(v) for v in gt[col]], dtype=object) for col in GT_COLUMNS}


def _ground_truth_frame(cell_type: Iterable[Any], query: Iterable[Any], informative: Iterable[Any]) -> pd.DataFrame:
    """The ground-truth table from its three columns, every value as ``str``."""
    return pd.DataFrame(
        {
            "cell_type": [str(v) for v in cell_type],
            "query": [str(v) for v in query],
            "informative": [str(v) for v in informative],
        },
        dtype=object,
    )


def informative_sets(
    ground_truth: pd.DataFrame,
    cell_types: list[str] | None = None,
    queries: list[str] | None = None,
) -> dict[tuple[str, str], tuple[str, ...]]:
    """The informative set of every (cell type, query), empty ones included.

    Parameters
    ----------
    ground_truth
        Long table with columns ``cell_type``, ``query``, ``informative``.
    cell_types, queries
        The cell types and query perturbations to cover (default: those in the table);
        pairs without rows get an empty tuple.

    Returns
    -------
    dict
        ``(cell_type, query)`` -> tuple of informative perturbations in table order.
    """
    cell_types = list(dict.fromkeys(ground_truth["cell_type"])) if cell_types is None else cell_types
    queries = list(dict.fromkeys(ground_truth["query"])) if queries is None else queries
    out: dict[tuple[str, str], list[str]] = {(ct, q): [] for ct in cell_types for q in queries}
    for ct, q, inf in ground_truth[list(GT_COLUMNS)].itertuples(index=False):
        if (ct, q) in out:
            out[(ct, q)].append(inf)
    return {k: tuple(v) for k, v in out.items()}


def load_ground_truth(path_or_adata: str | Path | ad.AnnData) -> pd.DataFrame:
    """Read the ground truth of a synthetic benchmark.

    Parameters
    ----------
    path_or_adata
        ``ground_truth.csv``, the benchmark's ``.h5ad`` (read from ``uns["ptrag_ground_truth"]``
        without loading the matrix) or an in-memory AnnData.

    Returns
    -------
    pandas.DataFrame
        One row per informative pair: ``cell_type``, ``query``, ``informative`` (str).

    Raises
    ------
    PtragError
        If the file is missing or holds no ground truth.
    """
    if isinstance(path_or_adata, ad.AnnData):
        uns = path_or_adata.uns.get(GROUND_TRUTH_KEY)
        if uns is None:
            raise PtragError(f"the AnnData has no uns[{GROUND_TRUTH_KEY!r}]: it is not a ptrag synthetic benchmark.")
        return _ground_truth_frame(uns["cell_type"], uns["query"], uns["informative"])
    path = Path(path_or_adata)
    if not path.is_file():
        raise PtragError(f"ground-truth file {path} does not exist: pass ground_truth.csv or the .h5ad.")
    if path.suffix == ".h5ad":
        with h5py.File(path, "r") as f:
            key = f"uns/{GROUND_TRUTH_KEY}"
            if key not in f:
                raise PtragError(f"{path} has no uns[{GROUND_TRUTH_KEY!r}]: it is not a ptrag synthetic benchmark.")
            uns = ad.io.read_elem(f[key])
        return _ground_truth_frame(uns["cell_type"], uns["query"], uns["informative"])
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise PtragError(f"cannot read ground-truth CSV {path}: {exc}") from exc
    missing = [col for col in ("cell_type", "query", "informative") if col not in df.columns]
    if missing:
        raise PtragError(
            f"ground-truth CSV {path} lacks column {missing[0]!r}: expected cell_type, query, informative."
        )
    return _ground_truth_frame(df["cell_type"], df["query"], df["informative"])


# --------------------------------------------------------------------------------------------
# statistics


def embedding_retrieval_precision(
    gene_table: dict[str, np.ndarray],
    ground_truth: pd.DataFrame,
    k: int = 10,
    cell_types: list[str] | None = None,
) -> dict[str, float]:
    """Precision of top-``k`` cosine neighbours in the embedding against the ground truth.

    Every gene of ``gene_table`` is a query; its neighbours are the ``k`` other genes of the
    table with the most cosine-similar vectors, the same in every cell type.

    Parameters
    ----------
    gene_table
        Symbol -> embedding vector (the perturbations of the benchmark).
    ground_truth
        Long table with columns ``cell_type``, ``query``, ``informative``.
    k
        Number of neighbours.
    cell_types
        Cell types to score (default: those in ``ground_truth``).

    Returns
    -------
    dict[str, float]
        ``precision``: mean over (cell type, query) pairs with a non-empty informative set;
        ``precision_all``: mean over all pairs; ``random``: the expected precision of ``k``
        neighbours drawn at random (same pairs as ``precision``).
    """
    queries = list(gene_table)
    emb = np.stack([np.asarray(gene_table[q], dtype=np.float64) for q in queries])
    cos = cosine_matrix(emb)
    np.fill_diagonal(cos, -np.inf)
    k = min(k, len(queries) - 1)
    top = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    neigh = {q: {queries[j] for j in top[i]} for i, q in enumerate(queries)}
    sets = informative_sets(ground_truth, cell_types, queries)
    prec = np.asarray([len(neigh[q] & set(inf)) / k for (_, q), inf in sets.items()])
    rand = np.asarray([len(inf) / (len(queries) - 1) for inf in sets.values()])
    nonempty = np.asarray([len(inf) > 0 for inf in sets.values()])
    return {
        "precision": float(prec[nonempty].mean()) if nonempty.any() else float("nan"),
        "precision_all": float(prec.mean()),
        "random": float(rand[nonempty].mean()) if nonempty.any() else float("nan"),
    }


def informative_overlap(
    ground_truth: pd.DataFrame,
    cell_types: list[str] | None = None,
    queries: list[str] | None = None,
) -> dict[str, Any]:
    """How much the informative sets of a query differ between cell types.

    Parameters
    ----------
    ground_truth
        Long table with columns ``cell_type``, ``query``, ``informative``.
    cell_types, queries
        Cell types and queries to cover (default: those in the table; pass all perturbations
        so that queries with no informative set in any cell type count too).

    Returns
    -------
    dict
        ``jaccard``: DataFrame cell type x cell type of the mean Jaccard index of the informative
        sets over queries whose two sets are not both empty; ``mean_jaccard``: mean of its
        off-diagonal entries; ``frac_queries_differ``: fraction of queries whose informative
        set is not the same in every cell type; ``mean_size``: mean informative-set size per
        cell type; ``frac_empty``: fraction of (cell type, query) pairs with an empty set.
    """
    sets = {k: set(v) for k, v in informative_sets(ground_truth, cell_types, queries).items()}
    cts = list(dict.fromkeys(ct for ct, _ in sets))
    qs = list(dict.fromkeys(q for _, q in sets))
    jac = pd.DataFrame(np.eye(len(cts)), index=cts, columns=cts)
    for i, a in enumerate(cts):
        for b in cts[i + 1 :]:
            vals = [len(sets[a, q] & sets[b, q]) / len(sets[a, q] | sets[b, q]) for q in qs if sets[a, q] or sets[b, q]]
            jac.loc[a, b] = jac.loc[b, a] = float(np.mean(vals)) if vals else float("nan")
    off = jac.to_numpy()[~np.eye(len(cts), dtype=bool)]
    differ = [len({frozenset(sets[ct, q]) for ct in cts}) > 1 for q in qs]
    return {
        "jaccard": jac,
        "mean_jaccard": float(np.nanmean(off)) if off.size and not np.isnan(off).all() else float("nan"),
        "frac_queries_differ": float(np.mean(differ)) if differ else float("nan"),
        "mean_size": {ct: float(np.mean([len(sets[ct, q]) for q in qs])) for ct in cts},
        "frac_empty": float(np.mean([len(v) == 0 for v in sets.values()])),
    }


def observed_deltas(adata: ad.AnnData, control: str = CONTROL_LABEL) -> dict[str, pd.DataFrame]:
    """Observed mean effect per (cell type, perturbation): mean perturbed minus mean control ``X``.

    Parameters
    ----------
    adata
        A benchmark AnnData (obs ``gene`` and ``cell_type``; ``X`` log-normalised).
    control
        Control label.

    Returns
    -------
    dict[str, pandas.DataFrame]
        Cell type -> perturbations x genes frame of mean differences.
    """
    out = {}
    x = adata.X
    for ct in pd.unique(adata.obs["cell_type"].astype(str)):
        mask = (adata.obs["cell_type"].astype(str) == ct).to_numpy()
        genes = adata.obs["gene"].astype(str).to_numpy()[mask]
        labels, inv = np.unique(genes, return_inverse=True)
        ind = sp.csr_matrix((np.ones(inv.size), (inv, np.arange(inv.size))), shape=(labels.size, inv.size))
        counts = np.asarray(ind.sum(axis=1)).ravel()
        sums = ind @ x[mask]
        means = np.asarray(sums.todense() if sp.issparse(sums) else sums) / counts[:, None]
        frame = pd.DataFrame(means, index=labels, columns=adata.var_names)
        ctrl = frame.loc[control]
        out[str(ct)] = frame.drop(index=control) - ctrl
    return out


def summarize(bench: SyntheticBenchmark, k: int = 10) -> dict[str, Any]:
    """Headline numbers of a benchmark (printed by ``ptrag simulate``).

    Parameters
    ----------
    bench
        The output of :func:`simulate`.
    k
        Neighbours for the embedding retrieval precision.

    Returns
    -------
    dict
        ``n_cells``, ``n_genes``, ``n_perturbations``, ``perturbations_per_cell_type``,
        ``min_cells_per_group``, ``controls_per_cell_type``, ``sparsity`` (fraction of zero
        counts), the entries of :func:`informative_overlap` and of
        :func:`embedding_retrieval_precision` (prefixed ``retrieval_``).
    """
    adata = bench.adata
    obs = adata.obs
    pert = obs[obs["gene"] != CONTROL_LABEL]
    groups = pert.groupby(["cell_type", "gene"], observed=True).size()
    counts = adata.layers["counts"]
    nnz = counts.nnz if sp.issparse(counts) else int(np.count_nonzero(counts))
    out: dict[str, Any] = {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_perturbations": len(bench.gene_table),
        "perturbations_per_cell_type": pert.groupby("cell_type", observed=True)["gene"].nunique().to_dict(),
        "min_cells_per_group": int(groups.min()),
        "controls_per_cell_type": obs[obs["gene"] == CONTROL_LABEL]
        .groupby("cell_type", observed=True)
        .size()
        .to_dict(),
        "sparsity": 1.0 - nnz / (adata.n_obs * adata.n_vars),
    }
    cell_types = [str(ct) for ct in adata.uns[SIMULATION_KEY]["cell_types"]]
    out.update(informative_overlap(bench.ground_truth, cell_types, bench.perturbations))
    retrieval = embedding_retrieval_precision(bench.gene_table, bench.ground_truth, k, cell_types)
    for key, val in retrieval.items():
        out[f"retrieval_{key}"] = val
    return out
