"""Retrieval scored against the synthetic benchmark's ground truth (informative context pairs).

:func:`retrieval_precision_recall` scores a retrieval log per (cell type, query);
:func:`retrieval_summary` averages it; :func:`retrieval_against_truth` reads the truth file.
Re-exported by :mod:`ptrag.eval.retrieval`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.errors import PtragError


def retrieval_against_truth(log: pd.DataFrame, truth_path: str | Path, model: str) -> pd.DataFrame:
    """Macro-averaged precision / recall of a retrieval log against a synthetic ground truth.

    Parameters
    ----------
    log
        Retrieval log of ``ptrag predict`` (one row per query, cell type and candidate).
    truth_path
        ``ground_truth.csv`` of the synthetic benchmark.
    model
        Model name for the output rows.

    Returns
    -------
    pandas.DataFrame
        One row per cell type and one ``all`` row: ``model, cell_type, n_queries,
        precision_topk, recall_topk`` and, for PT-RAG (which selects), ``precision_selected,
        recall_selected, n_selected``; NaN for a Vanilla RAG log, which has no selection.
    """
    from ptrag.data.synthetic import load_ground_truth

    pr = retrieval_precision_recall(log.fillna({"selected_fraction": -1.0}), load_ground_truth(truth_path))
    if log["selected_fraction"].isna().all():  # no Stage 2: nothing is "selected"
        pr[["precision_selected", "recall_selected", "n_selected"]] = np.nan
    summ = retrieval_summary(pr).rename_axis("cell_type").reset_index()
    return summ.assign(model=model)[
        [
            "model",
            "cell_type",
            "n_queries",
            "precision_topk",
            "recall_topk",
            "precision_selected",
            "recall_selected",
            "n_selected",
        ]
    ]


def retrieval_precision_recall(
    retrieval_log: pd.DataFrame,
    ground_truth: pd.DataFrame,
    min_fraction: float | None = None,
) -> pd.DataFrame:
    """Precision and recall of the selected contexts against the simulator's ground truth.

    For every (cell type, query) of the retrieval log, two selections are scored against the
    informative pairs of the ground truth:

    * ``selected`` — PT-RAG's Stage 2. By default each candidate counts with its weight
      ``f_k = selected_fraction`` (the fraction of the query's cells that select it, or their
      expected selection): ``|S| = sum_k f_k`` (contexts per cell) and
      ``|S ∩ I| = sum_{k in I} f_k``, the precision and recall of the contexts a cell
      actually uses; with ``min_fraction`` the candidates with ``f_k >= min_fraction``, each
      counted once (both agree when every ``f_k`` is 0 or 1);
    * ``topk`` — the unfiltered Stage-1 top-K (every candidate in the log), the baseline that
      shows what Stage 2 adds.

    A ``pt_rag_response`` log (column ``candidate_cell_type``) is scored on its candidates of the
    query's own cell type: the ground truth says which perturbations are informative *in that
    cell type*; the query's own groups in other cell types are outside it.

    ``precision = |S ∩ I| / |S|`` (NaN when nothing is selected) and
    ``recall = |S ∩ I| / |I|`` (NaN when the query has no informative pair), where ``I`` holds
    all informative candidates of the query, retrieved or not.

    Parameters
    ----------
    retrieval_log
        Columns ``cell_type, query, candidate, similarity, selected_fraction`` (one row per
        retrieved candidate; ``selected_fraction`` = fraction of the set's cells that selected
        it).
    ground_truth
        Columns ``cell_type, query, informative`` (one row per informative pair).
    min_fraction
        ``None`` (default): the weighted count above; else a candidate counts as selected when
        ``selected_fraction >= min_fraction``.

    Returns
    -------
    pandas.DataFrame
        One row per (cell_type, query): ``n_topk, n_selected, n_informative, tp_topk,
        tp_selected, precision_topk, recall_topk, precision_selected, recall_selected``.
    """
    _check_truth_inputs(retrieval_log, ground_truth, min_fraction)
    log = _log_as_text(retrieval_log)
    truth = _informative_sets(ground_truth)
    rows = [
        _score_query(ct, q, g, truth.get((ct, q), set()), min_fraction)
        for (ct, q), g in log.groupby(["cell_type", "query"], sort=True)
    ]
    return pd.DataFrame(rows, columns=_PR_COLUMNS)


#: Columns of :func:`retrieval_precision_recall`'s table, in order.
_PR_COLUMNS = [
    "cell_type", "query", "n_topk", "n_selected", "n_informative", "tp_topk", "tp_selected",
    "precision_topk", "recall_topk", "precision_selected", "recall_selected",
]  # fmt: skip


def _check_truth_inputs(retrieval_log: pd.DataFrame, ground_truth: pd.DataFrame, min_fraction: float | None) -> None:
    """Raise a :class:`PtragError` when a table lacks a column or ``min_fraction`` is outside [0, 1]."""
    need_log = ["cell_type", "query", "candidate", "similarity", "selected_fraction"]
    need_gt = ["cell_type", "query", "informative"]
    for name, df, need in (("retrieval log", retrieval_log, need_log), ("ground truth", ground_truth, need_gt)):
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise PtragError(f"{name} lacks column(s) {', '.join(missing)}; it needs {', '.join(need)}.")
    if min_fraction is not None and not 0 <= min_fraction <= 1:
        raise PtragError(f"min_fraction must be in [0, 1], got {min_fraction}.")


def _log_as_text(retrieval_log: pd.DataFrame) -> pd.DataFrame:
    """The log with text labels; a ``pt_rag_response`` log restricted to its candidates of the
    query's own cell type."""
    if "candidate_cell_type" in retrieval_log:  # pt_rag_response: the truth is about the query's cell type
        retrieval_log = retrieval_log[
            retrieval_log["candidate_cell_type"].astype(str) == retrieval_log["cell_type"].astype(str)
        ]
    return retrieval_log.assign(
        cell_type=retrieval_log["cell_type"].astype(str),
        query=retrieval_log["query"].astype(str),
        candidate=retrieval_log["candidate"].astype(str),
    )


def _informative_sets(ground_truth: pd.DataFrame) -> dict[tuple[str, str], set[str]]:
    """The ground truth's informative candidates per (cell type, query), as text."""
    gt = ground_truth.assign(
        cell_type=ground_truth["cell_type"].astype(str),
        query=ground_truth["query"].astype(str),
        informative=ground_truth["informative"].astype(str),
    ).drop_duplicates(["cell_type", "query", "informative"])
    return {k: set(g["informative"]) for k, g in gt.groupby(["cell_type", "query"], sort=False)}


def _score_query(ct: str, q: str, g: pd.DataFrame, informative: set[str], min_fraction: float | None) -> dict:
    """The precision / recall row of one (cell type, query): its log rows ``g`` against its
    informative candidates."""
    topk = set(g["candidate"])
    frac = g["selected_fraction"].astype(float).clip(lower=0.0)
    if min_fraction is not None:
        frac = (frac >= min_fraction).astype(float)
    n_sel = float(frac.sum())
    tp_s = float(frac[g["candidate"].isin(informative)].sum())
    tp_k = len(topk & informative)
    ni = len(informative)
    return {
        "cell_type": ct,
        "query": q,
        "n_topk": len(topk),
        "n_selected": n_sel,
        "n_informative": ni,
        "tp_topk": tp_k,
        "tp_selected": tp_s,
        "precision_topk": tp_k / len(topk) if topk else math.nan,
        "recall_topk": tp_k / ni if ni else math.nan,
        "precision_selected": tp_s / n_sel if n_sel > 0 else math.nan,
        "recall_selected": tp_s / ni if ni else math.nan,
    }


def retrieval_summary(pr: pd.DataFrame) -> pd.DataFrame:
    """Mean precision / recall per cell type and overall (macro average over queries).

    Parameters
    ----------
    pr
        Output of :func:`retrieval_precision_recall`.

    Returns
    -------
    pandas.DataFrame
        Index ``cell_type`` (plus ``"all"``); columns the mean of each precision / recall
        column (NaNs skipped) and ``n_queries``.
    """
    cols = ["precision_topk", "recall_topk", "precision_selected", "recall_selected", "n_selected"]
    per = pr.groupby("cell_type")[cols].mean()
    per["n_queries"] = pr.groupby("cell_type").size()
    allrow = pr[cols].mean().to_frame("all").T
    allrow["n_queries"] = len(pr)
    return pd.concat([per, allrow])
