"""The retrieval log of a RAG prediction: each retrieved candidate of each (cell type, query),
its similarity and the fraction of the query's predicted cells that selected it
(``PRED.retrieval.csv``; ``pt_rag_response`` logs also name each candidate's cell type)."""

from __future__ import annotations

import pandas as pd

from ptrag.data.sets import CellSet


def retrieval_rows(plan, out, sets: list[CellSet]) -> list[dict]:
    """One row per (set, candidate); ``pt_rag_response`` rows also name the candidate's cell type."""
    responses = plan.model.responses
    names = plan.model.database_names
    rows = []
    for b, cs in enumerate(sets):
        cand = out.candidates[b].tolist()
        sim = out.similarity[b].tolist()
        frac = out.weights[b].float().mean(0).tolist() if out.weights is not None else [float("nan")] * len(cand)
        labels = responses.labels(cand) if responses is not None else [(names[c], None) for c in cand]
        for (name, ct), s, f in zip(labels, sim, frac, strict=True):
            row = dict(cell_type=cs.cell_type, query=cs.perturbation, candidate=name)
            if ct is not None:
                row["candidate_cell_type"] = ct
            rows.append(row | dict(similarity=s, selected_fraction=f, n_cells=len(cs.pert_rows)))
    return rows


def aggregate_retrieval(rows: list[dict]) -> pd.DataFrame:
    """One row per (cell type, query, candidate): its similarity and the fraction of the query's
    predicted cells that selected it (weighted by the sets' cell counts)."""
    df = pd.DataFrame(rows)
    df["w"] = df["selected_fraction"] * df["n_cells"]
    keys = ["cell_type", "query", "candidate"] + (["candidate_cell_type"] if "candidate_cell_type" in df else [])
    g = df.groupby(keys, sort=False)
    # min_count=1: a Vanilla RAG log (no selection, NaN fractions) stays NaN instead of summing to 0
    out = g.agg(similarity=("similarity", "first"), n_cells=("n_cells", "sum")).reset_index()
    out["w"] = g["w"].sum(min_count=1).to_numpy()
    out["selected_fraction"] = out["w"] / out["n_cells"]
    out = out.drop(columns=["w"]).sort_values(["cell_type", "query", "similarity"], ascending=[True, True, False])
    return out.reset_index(drop=True)
