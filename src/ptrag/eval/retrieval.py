"""Retrieval analysis of PT-RAG: which contexts each cell type selects, and how much the
selections of two cell types overlap (the paper's "cell-type-aware" claim).

Input: retrieval logs written by ``ptrag predict`` for RAG runs (one row per cell type,
query and retrieved candidate, with ``similarity`` and ``selected_fraction``, the fraction
of the query's predicted cells that selected the candidate).

* :func:`top_contexts` — the ``n`` most selected contexts per (cell type, query);
* :func:`retrieval_precision_recall` / :func:`retrieval_summary` — precision and recall against a
  synthetic ground truth;
* :func:`jaccard_matrix` — for every pair of cell types, the mean over the queries logged in
  both of the Jaccard index between their selected sets (a candidate is selected when
  ``selected_fraction >= min_fraction``); the paper reports 0.185–0.196 off the diagonal;
* :func:`plot_jaccard` — that matrix as a heatmap PNG;
* :func:`retrieval_against_truth` — precision / recall against a synthetic ground truth.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.errors import PtragError, atomic_save_figure

LOG_COLUMNS = ("cell_type", "query", "candidate", "similarity", "selected_fraction")


def read_retrieval_logs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Read and concatenate retrieval logs, checking their columns.

    Parameters
    ----------
    paths
        ``*.retrieval.csv`` files of ``ptrag predict``.

    Returns
    -------
    pandas.DataFrame
        The rows of all logs (duplicates of a (cell type, query, candidate) keep the first).
    """
    if not paths:
        raise PtragError("give at least one retrieval log with --log.")
    frames = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise PtragError(
                f"retrieval log not found: {p}. `ptrag predict` writes <prediction>.retrieval.csv for RAG runs."
            )
        try:
            df = pd.read_csv(p)
        except (ValueError, OSError) as exc:
            raise PtragError(f"{p} is not a readable CSV ({exc}).") from exc
        missing = [c for c in LOG_COLUMNS if c not in df.columns]
        if missing:
            raise PtragError(f"{p} lacks column(s) {', '.join(missing)}: is it a ptrag retrieval log?")
        frames.append(df[list(LOG_COLUMNS)].astype({"cell_type": str, "query": str, "candidate": str}))
    log = pd.concat(frames, ignore_index=True).drop_duplicates(["cell_type", "query", "candidate"])
    if log["selected_fraction"].isna().all():
        raise PtragError("the logs hold no selection (Vanilla RAG logs): the analysis needs PT-RAG logs.")
    return log


def top_contexts(log: pd.DataFrame, n: int = 5) -> pd.DataFrame:
    """The ``n`` most selected contexts per (cell type, query).

    Parameters
    ----------
    log
        Retrieval log rows.
    n
        Contexts per query.

    Returns
    -------
    pandas.DataFrame
        ``cell_type, query, rank (1..n), candidate, selected_fraction, similarity``; ties in
        selection are broken by similarity, then name.
    """
    order = log.sort_values(
        ["cell_type", "query", "selected_fraction", "similarity", "candidate"],
        ascending=[True, True, False, False, True],
    )
    top = order.groupby(["cell_type", "query"], sort=False).head(n).copy()
    top["rank"] = top.groupby(["cell_type", "query"], sort=False).cumcount() + 1
    return top[["cell_type", "query", "rank", "candidate", "selected_fraction", "similarity"]].reset_index(drop=True)


def selected_sets(log: pd.DataFrame, min_fraction: float = 0.5, top: int | None = None) -> dict[tuple, set]:
    """The selected context set of every (cell type, query) of a retrieval log.

    Parameters
    ----------
    log
        Retrieval log rows.
    min_fraction
        Without ``top``: a candidate is selected when at least this fraction of the query's
        cells selected it.
    top
        The paper's rule instead: the ``top`` candidates most often selected (largest
        ``selected_fraction``, ties by similarity), among those selected at all.

    Returns
    -------
    dict
        ``(cell_type, query) -> set of candidates``.
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise PtragError(f"--min-fraction must be in [0, 1] (got {min_fraction}).")
    frac = log["selected_fraction"].fillna(0.0)
    if top is None:
        sel = log[frac >= min_fraction]
    else:
        if top < 1:
            raise PtragError(f"--jaccard-top (contexts per query in the Jaccard index) must be at least 1 (got {top}).")
        ranked = log[frac > 0].sort_values(
            ["cell_type", "query", "selected_fraction", "similarity"], ascending=[True, True, False, False]
        )
        sel = ranked.groupby(["cell_type", "query"], sort=False).head(top)
    return {k: set(g["candidate"]) for k, g in sel.groupby(["cell_type", "query"])}


def jaccard_matrix(
    log: pd.DataFrame, min_fraction: float = 0.5, top: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean Jaccard index of the selected context sets between cell types.

    Parameters
    ----------
    log
        Retrieval log rows.
    min_fraction, top
        Which candidates count as selected (see :func:`selected_sets`; the paper's analysis
        takes the ``top = 10`` most selected of ``K = 32``).

    Returns
    -------
    jaccard : pandas.DataFrame
        Cell type x cell type; entry = mean over the queries logged in both cell types of
        ``|A ∩ B| / |A ∪ B|`` (queries where both sets are empty are skipped; NaN when no
        query is left). The diagonal is 1 where a cell type selected anything.
    counts : pandas.DataFrame
        The number of queries behind each entry.
    """
    sets = selected_sets(log, min_fraction, top)
    queries = {ct: set(g["query"]) for ct, g in log.groupby("cell_type")}
    cts = sorted(queries)
    jac = pd.DataFrame(np.nan, index=cts, columns=cts)
    cnt = pd.DataFrame(0, index=cts, columns=cts)
    for a, b in itertools.product(cts, cts):
        vals = []
        for q in sorted(queries[a] & queries[b]):
            sa, sb = sets.get((a, q), set()), sets.get((b, q), set())
            union = sa | sb
            if union:
                vals.append(len(sa & sb) / len(union))
        cnt.loc[a, b] = len(vals)
        jac.loc[a, b] = float(np.mean(vals)) if vals else math.nan
    return jac, cnt


def chance_jaccard(k: int, n: int) -> float:
    """Expected Jaccard index of two independent uniform ``n``-subsets of ``k`` candidates.

    The overlap ``i`` is hypergeometric, ``P(i) = C(n, i) C(k - n, n - i) / C(k, n)``, and
    the index is ``i / (2n - i)``. For the paper's analysis (top 10 of K = 32) it is 0.192:
    the level of the paper's reported 0.185–0.196.

    Parameters
    ----------
    k
        Candidates retrieved.
    n
        Size of each selected set (``1 <= n <= k``).

    Returns
    -------
    float
    """
    if not 1 <= n <= k:
        raise PtragError(f"chance_jaccard needs 1 <= n <= k (got n={n}, k={k}).")
    total = math.comb(k, n)
    return sum(math.comb(n, i) * math.comb(k - n, n - i) / total * i / (2 * n - i) for i in range(0, n + 1))


def paper_top(k: int) -> int:
    """The paper's top-10-of-32 analysis scaled to ``k`` candidates (at least 1)."""
    return max(1, round(10 * k / 32))


def truth_selection(log: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The retrieval log as an oracle Stage 2 would select: among the same candidates, exactly
    the ground truth's informative ones (``selected_fraction`` 1 or 0).

    Fed to :func:`jaccard_matrix`, it gives the Jaccard index between cell types that the
    informative sets of the same queries have, the reference for PT-RAG's own.

    Parameters
    ----------
    log
        Retrieval log rows (``cell_type, query, candidate, ...``).
    truth
        Ground truth rows ``cell_type, query, informative`` (:func:`ptrag.data.synthetic.load_ground_truth`).

    Returns
    -------
    pandas.DataFrame
        ``log`` with ``selected_fraction`` replaced.
    """
    keys = set(
        zip(truth["cell_type"].astype(str), truth["query"].astype(str), truth["informative"].astype(str), strict=True)
    )
    hit = [
        (c, q, k) in keys
        for c, q, k in zip(
            log["cell_type"].astype(str), log["query"].astype(str), log["candidate"].astype(str), strict=True
        )
    ]
    return log.assign(selected_fraction=np.asarray(hit, dtype=float))


def plot_jaccard(jac: pd.DataFrame, path: str | Path, title: str = "Jaccard index of selected contexts") -> Path:
    """Write the Jaccard matrix as an annotated heatmap PNG (atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(jac)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 1.5))
    im = ax.imshow(jac.to_numpy(dtype=float), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), jac.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), jac.index)
    for i, j in itertools.product(range(n), range(n)):
        v = jac.iat[i, j]
        ax.text(j, i, "" if pd.isna(v) else f"{v:.3f}", ha="center", va="center", color="w" if v < 0.6 else "k")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=120)


from ptrag.eval.retrieval_truth import (  # noqa: E402  (re-exported)
    retrieval_against_truth,
    retrieval_precision_recall,
    retrieval_summary,
)

__all__ = [
    "LOG_COLUMNS",
    "chance_jaccard",
    "jaccard_matrix",
    "paper_top",
    "plot_jaccard",
    "read_retrieval_logs",
    "retrieval_against_truth",
    "retrieval_precision_recall",
    "retrieval_summary",
    "selected_sets",
    "top_contexts",
    "truth_selection",
]
