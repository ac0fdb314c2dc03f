"""The paper's retrieval analyses over an experiment's PT-RAG predictions.

Reads the retrieval logs that ``ptrag predict`` wrote beside each RAG prediction of
:func:`ptrag.experiments.cross_celltype.cross_celltype` and writes ``OUT/retrieval/``: contexts
per cell, the top contexts per query, the Jaccard index of the selected contexts between cell
types (heatmap) and, against a synthetic ground truth, the same Jaccard index of the
informative sets and the precision / recall of Stage 1 and Stage 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.errors import atomic_write_csv, atomic_write_text


def retrieval_analysis(
    out: Path,
    seeds: Sequence[int],
    targets: Sequence[str],
    ground_truth: str | Path | None = None,
    top: int | None = None,
) -> Path:
    """The paper's retrieval analyses over the experiment's PT-RAG predictions.

    Writes ``out/retrieval/``: ``top_contexts.csv`` (top 10 per seed, cell type and query),
    ``jaccard.csv`` (mean over seeds of each seed's cell-type x cell-type Jaccard matrix of
    the ``top`` most selected contexts per query, by default the paper's 10 of 32 scaled to the
    run's K; with the ground truth also ``jaccard_truth.csv`` of the informative sets),
    ``jaccard_queries.csv`` (queries behind each entry, summed over seeds), ``jaccard.png``,
    ``contexts.csv`` (mean contexts selected per cell, per seed and target), with the ground
    truth ``precision_recall.csv`` (RAG models' Stage-1 top-K and PT-RAG's selection), and
    ``summary.md`` for the report.
    """
    rdir = out / "retrieval"
    md: list[str] = []
    all_logs = _read_logs(out, seeds, targets, with_truth=bool(ground_truth))
    logs = {(seed, t): lg for (model, seed, t), lg in all_logs.items() if model == "pt_rag"}
    if logs:
        md += _pt_rag_analysis(rdir, logs, seeds, ground_truth, top)
    if ground_truth:
        md += _precision_recall(rdir, all_logs, ground_truth)
    if md:
        atomic_write_text(rdir / "summary.md", "\n".join(md))
    return rdir


def _read_logs(
    out: Path, seeds: Sequence[int], targets: Sequence[str], with_truth: bool
) -> dict[tuple[str, int, str], pd.DataFrame]:
    """The retrieval logs of the experiment, by (model, seed, target): PT-RAG's, and with the
    ground truth also Vanilla RAG's and PT-RAG over responses'; missing logs are left out."""
    paths = {
        (model, seed, t): out / f"seed{seed}" / t / "pred" / f"{model}.retrieval.csv"
        for model in (("vanilla_rag", "pt_rag", "pt_rag_response") if with_truth else ("pt_rag",))
        for seed in seeds
        for t in targets
    }
    return {k: pd.read_csv(p) for k, p in paths.items() if p.is_file()}


def _pt_rag_analysis(
    rdir: Path,
    logs: dict[tuple[int, str], pd.DataFrame],
    seeds: Sequence[int],
    ground_truth: str | Path | None,
    top: int | None,
) -> list[str]:
    """Write PT-RAG's contexts per cell, top contexts and Jaccard matrices (with the ground
    truth also the informative sets' matrix); return their paragraphs of ``summary.md``."""
    from ptrag.data.synthetic import load_ground_truth
    from ptrag.eval.retrieval import paper_top, plot_jaccard
    from ptrag.experiments.sweep import mean_selected_contexts

    ctx = pd.DataFrame(
        [
            {
                "seed": s,
                "target": t,
                "contexts_per_cell": mean_selected_contexts(lg),
                "retrieved_k": int(lg.groupby(["cell_type", "query"]).size().max()),
            }
            for (s, t), lg in logs.items()
        ]
    )
    atomic_write_csv(rdir / "contexts.csv", ctx)
    truth = load_ground_truth(ground_truth) if ground_truth else None
    k = int(ctx["retrieved_k"].max())
    n_top = top or paper_top(k)
    tops, jac, cnt, truth_jac = _per_seed_matrices(logs, seeds, n_top, truth)
    atomic_write_csv(rdir / "top_contexts.csv", tops)
    atomic_write_csv(rdir / "jaccard.csv", jac, index=True)
    atomic_write_csv(rdir / "jaccard_queries.csv", cnt, index=True)
    plot_jaccard(jac, rdir / "jaccard.png", title="PT-RAG: Jaccard of selected contexts")
    md = [_contexts_md(ctx), _jaccard_md(jac, n_top, k), _matrix_md(jac)]
    if truth_jac is not None:
        atomic_write_csv(rdir / "jaccard_truth.csv", truth_jac, index=True)
        plot_jaccard(truth_jac, rdir / "jaccard_truth.png", title="Ground truth: Jaccard of informative contexts")
        md.append(
            "The same Jaccard index for the ground truth's informative sets of the same queries (an "
            "oracle Stage 2 choosing, among the same Stage-1 candidates, exactly the informative ones; "
            f"`retrieval/jaccard_truth.csv`). Off-diagonal: {_range(_off_diagonal(truth_jac))}; PT-RAG: "
            f"{_range(_off_diagonal(jac))}.\n"
        )
        md.append(_matrix_md(truth_jac))
    top_md = _top_contexts_md(tops, ctx, seeds[0])
    return md + ([top_md] if top_md else [])


def _per_seed_matrices(
    logs: dict[tuple[int, str], pd.DataFrame],
    seeds: Sequence[int],
    n_top: int,
    truth: pd.DataFrame | None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """Per seed (its targets' logs pooled): the top 10 contexts per query, the Jaccard matrix of the
    ``n_top`` most selected and, with ``truth``, that of the informative sets. Returns the top
    contexts of all seeds, the mean Jaccard matrix, the summed query counts and the mean truth
    matrix (``None`` without ``truth``)."""
    from ptrag.eval.retrieval import jaccard_matrix, top_contexts, truth_selection

    tops, jacs, cnts, truth_jacs = [], [], [], []
    for seed in seeds:
        sl = [lg for (s, _), lg in logs.items() if s == seed]
        if not sl:
            continue
        rlog = pd.concat(sl, ignore_index=True)
        tops.append(top_contexts(rlog, 10).assign(seed=seed))
        j, c = jaccard_matrix(rlog, top=n_top)
        jacs.append(j)
        cnts.append(c)
        if truth is not None:
            truth_jacs.append(jaccard_matrix(truth_selection(rlog, truth))[0])
    truth_jac = _mean_matrix(truth_jacs) if truth_jacs else None
    return pd.concat(tops, ignore_index=True), _mean_matrix(jacs), sum(cnts), truth_jac


def _contexts_md(ctx: pd.DataFrame) -> str:
    """The summary's sentence on the contexts a predicted cell selects."""
    from ptrag.eval.table_format import format_value

    return (
        f"Contexts a predicted cell selects (of the K retrieved), mean over test queries: "
        f"{format_value(ctx['contexts_per_cell'].mean())} of {ctx['retrieved_k'].max()} "
        f"(per seed and target in `retrieval/contexts.csv`).\n"
    )


def _jaccard_md(jac: pd.DataFrame, n_top: int, k: int) -> str:
    """The summary's paragraph on the Jaccard index of the selected contexts, beside chance."""
    from ptrag.eval.retrieval import chance_jaccard

    return (
        f"Jaccard index between cell types of the {n_top} contexts most often selected for the same "
        f"query gene (the paper's analysis: the 10 most selected of K = 32; here {n_top} of K = {k}), "
        "mean over the queries tested in both cell types (and over seeds); number of queries behind "
        f"each entry in `retrieval/jaccard_queries.csv`. Off-diagonal: {_range(_off_diagonal(jac))}. Two random "
        f"{n_top}-subsets of {k} candidates would give {chance_jaccard(k, n_top):.3f} (the paper's "
        f"0.185–0.196 is that level for 10 of 32: {chance_jaccard(32, 10):.3f}).\n"
    )


def _top_contexts_md(top: pd.DataFrame, ctx: pd.DataFrame, seed: int) -> str:
    """The summary's table of the top-5 contexts of the first 5 queries of ``seed`` (``""`` when
    it has none)."""
    from ptrag.eval.table_format import md_table

    first = top[(top["seed"] == seed) & (top["rank"] <= 5)]
    queries = sorted(first["query"].unique())[:5]
    if not len(queries):
        return ""
    sub = first[first["query"].isin(queries)]
    rows = []
    for (ct, q), g in sub.groupby(["cell_type", "query"]):
        rows.append(
            [
                ct,
                q,
                ", ".join(f"{c} ({f:.2f})" for c, f in zip(g["candidate"], g["selected_fraction"], strict=True)),
            ]
        )
    none = (
        ""
        if ctx["contexts_per_cell"].max() > 0
        else (". PT-RAG selected no context, so these are the Stage-1 candidates in order of similarity")
    )
    return (
        f"Top-5 contexts (fraction of the query's cells selecting each) for {len(queries)} queries "
        f"of seed {seed}; all queries, top 10, in `retrieval/top_contexts.csv`{none}:\n\n"
        + md_table(["cell type", "query", "contexts"], rows)
        + "\n"
    )


def _precision_recall(
    rdir: Path, all_logs: dict[tuple[str, int, str], pd.DataFrame], ground_truth: str | Path
) -> list[str]:
    """Write the RAG models' precision / recall against the ground truth
    (``precision_recall.csv``); return its paragraph of ``summary.md`` (none without logs)."""
    from ptrag.eval.retrieval import retrieval_against_truth
    from ptrag.eval.table_format import format_value, md_table

    pr = [
        retrieval_against_truth(lg, ground_truth, model).query("cell_type != 'all'").assign(seed=seed)
        for (model, seed, _), lg in all_logs.items()
    ]
    if not pr:
        return []
    allpr = pd.concat(pr, ignore_index=True)
    atomic_write_csv(rdir / "precision_recall.csv", allpr)
    cols = ["precision_topk", "recall_topk", "precision_selected", "recall_selected", "n_selected"]
    summ = allpr.groupby("model")[cols].mean()
    return [
        "Against the simulator's ground truth (informative context pairs), macro-averaged over "
        "test queries, targets and seeds: Stage-1 top-K for the RAG models, Stage-2 selection for "
        "PT-RAG and PT-RAG over responses (scored on its candidates of the query's own cell type: "
        "the truth is per cell type; `retrieval/precision_recall.csv`):\n\n"
        + md_table(
            ["model", *cols],
            [[m, *[format_value(float(v)) if pd.notna(v) else "–" for v in r]] for m, r in summ.iterrows()],
        )
        + "\n"
    ]


def _mean_matrix(mats: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Entry-wise mean of matrices over the ones where the entry is defined (NaN where none is)."""
    return sum(m.fillna(0.0) for m in mats) / sum(m.notna().astype(float) for m in mats)


def _off_diagonal(mat: pd.DataFrame) -> np.ndarray:
    n = len(mat)
    return mat.to_numpy(dtype=float)[~np.eye(n, dtype=bool)] if n > 1 else np.array([])


def _matrix_md(mat: pd.DataFrame) -> str:
    from ptrag.eval.table_format import format_value, md_table

    return (
        md_table(
            ["", *map(str, mat.columns)],
            [[str(i), *[format_value(float(v)) if pd.notna(v) else "–" for v in r]] for i, r in mat.iterrows()],
        )
        + "\n"
    )


def _range(values: np.ndarray) -> str:
    v = values[np.isfinite(values)]
    return (
        "no pair of cell types has a selection to compare"
        if not len(v)
        else f"{v.min():.3f}–{v.max():.3f} (mean {v.mean():.3f})"
    )
