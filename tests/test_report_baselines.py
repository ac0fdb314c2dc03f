"""The report against the baselines: the "which model wins" sentences and the two figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ptrag.experiments.plots_baselines import (
    baseline_pairs,
    baseline_scatter_figure,
    best_baseline,
    vcc_figure,
    write_baseline_figures,
)
from ptrag.experiments.report import winners

MODELS = ["context_mean", "control", "linear", "pt_rag", "state"]


def _row(label: str, direction: str, mean: dict, q: dict, reference: str = "") -> dict:
    """A row of table_all.csv (ComparisonTable.to_frame) written by hand."""
    best = (max if direction == "↑" else min)(mean, key=mean.get)
    row = {
        "metric_group": "g",
        "metric": label.lower(),
        "metric_label": label,
        "direction": direction,
        "best_model": best,
        "reference_model": reference,
    }
    for m in MODELS:
        row.update(
            {
                m: mean[m],
                f"{m}_std": 0.1,
                f"{m}_n": 10,
                f"{m}_q": q.get(m, np.nan),
                f"{m}_mark": "†" if q.get(m, 1.0) < 0.01 else "",
            }
        )
    return row


def test_winners_names_the_best_baseline_and_judges_each_model(tmp_path):
    rows = [
        # a baseline has the best mean: the models' q are their tests against it
        _row(
            "Pearson Δ",
            "↑",
            {"context_mean": 0.399, "control": 0.0, "linear": 0.35, "state": 0.346, "pt_rag": 0.39},
            {"control": 1e-4, "linear": 0.04, "state": 0.003, "pt_rag": 0.2},
        ),
        # a model has the best mean and its test against the best baseline is significant
        _row(
            "MSE",
            "↓",
            {"context_mean": 0.2, "control": 0.5, "linear": 0.25, "state": 0.1, "pt_rag": 0.15},
            {"context_mean": 0.01, "control": 1e-4, "linear": 0.001, "pt_rag": 0.04},
        ),
        # a model has the best mean, not significantly better than the best baseline (linear here)
        _row(
            "Energy",
            "↓",
            {"context_mean": 1.1, "control": 2.0, "linear": 1.05, "state": 1.2, "pt_rag": 1.0},
            {"context_mean": 0.01, "control": 1e-4, "linear": 0.3, "state": 0.02},
        ),
        # the VCC row: no tests at all
        _row("VCC score", "↑", {"context_mean": 0.0, "control": 0.0, "linear": 0.05, "state": 0.1, "pt_rag": 0.02}, {}),
        # tests against a fixed reference (control) say nothing about context_mean
        _row(
            "W1",
            "↓",
            {"context_mean": 1.0, "control": 3.0, "linear": 1.5, "state": 2.0, "pt_rag": 0.9},
            {"context_mean": 0.001, "linear": 0.001, "state": 0.01, "pt_rag": 0.001},
            reference="control",
        ),
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    lines = winners(tmp_path / "t.csv").splitlines()
    assert lines == [
        (
            "- **Pearson Δ ↑**: baseline context_mean wins (0.399); pt_rag 0.390 ties (q = 0.2), "
            "state 0.346 is worse (q = 0.003)."
        ),
        (
            "- **MSE ↓**: model state wins; best baseline context_mean (0.200): state 0.100 beats it (q = 0.01), "
            "pt_rag 0.150 beats it (no test)."
        ),
        (
            "- **Energy ↓**: model pt_rag wins; best baseline linear (1.05): pt_rag 1.00 ties (q = 0.3), "
            "state 1.20 is worse (no test)."
        ),
        (
            "- **VCC score ↑**: model state wins; best baseline linear (0.05): state 0.100 beats it (no test), "
            "pt_rag 0.02 is worse (no test)."
        ),
        (
            "- **W1 ↓**: model pt_rag wins; best baseline context_mean (1.00): pt_rag 0.900 beats it (no test), "
            "state 2.00 is worse (no test)."
        ),
    ]
    assert winners(tmp_path / "missing.csv") == ""


def test_winners_without_baselines_or_values(tmp_path):
    r = _row("MSE", "↓", {"context_mean": 0.2, "control": 0.5, "linear": 0.25, "state": 0.1, "pt_rag": 0.15}, {})
    pd.DataFrame([r]).to_csv(tmp_path / "t.csv", index=False)
    assert winners(tmp_path / "t.csv", baselines=()) == (
        "- **MSE ↓**: best mean state (0.100); no baseline to compare with."
    )
    r.update({m: np.nan for m in MODELS})
    pd.DataFrame([r]).to_csv(tmp_path / "t.csv", index=False)
    assert winners(tmp_path / "t.csv") == "- **MSE ↓**: best mean no values; no baseline to compare with."


def _group_metrics() -> pd.DataFrame:
    """2 seeds x 2 cell types x 3 perturbations; state above context_mean on 5 of the 12 groups,
    pt_rag missing one group's value; control far below context_mean."""
    rows = []
    groups = [(s, ct, f"P{p}") for s in (0, 1) for ct in ("A", "B") for p in range(3)]
    for i, (seed, ct, p) in enumerate(groups):
        x = 0.4 + 0.01 * i
        values = {
            "context_mean": x,
            "control": 0.0,
            "linear": x - 0.1,
            "state": x + (0.05 if i < 5 else -0.05),
            "pt_rag": np.nan if i == 0 else x + 0.02,
        }
        for model, v in values.items():
            rows.append(
                {
                    "model": model,
                    "seed": seed,
                    "cell_type": ct,
                    "perturbation": p,
                    "pearson_delta": v,
                    "mae": 0.3 if model != "state" else 0.15,
                    "discrimination_score_l1": 0.6,
                    "overlap_at_N": 0.2,
                }
            )
    return pd.DataFrame(rows)


def test_baseline_scatter_points_titles_and_files(tmp_path):
    m = _group_metrics()
    assert best_baseline(m) == "context_mean" and best_baseline(m, "mae") in ("context_mean", "control", "linear")
    pairs = baseline_pairs(m, "context_mean")
    # matched on (seed, cell type, perturbation): 12 groups for state, 11 for pt_rag (one NaN)
    assert pairs.groupby("model").size().to_dict() == {"pt_rag": 11, "state": 12}
    st = pairs[pairs.model == "state"].sort_values(["seed", "cell_type", "perturbation"])
    assert st["y"].to_numpy() - st["x"].to_numpy() == pytest.approx([0.05] * 5 + [-0.05] * 7)
    fig = baseline_scatter_figure(m)
    axes = {ax.get_title().split(":")[0]: ax for ax in fig.axes if ax.get_visible()}
    assert set(axes) == {"pt_rag", "state"}
    assert len(axes["state"].collections[0].get_offsets()) == 12
    assert len(axes["pt_rag"].collections[0].get_offsets()) == 11
    assert axes["state"].get_title() == "state: 5/12 groups above y = x (42%)"
    assert axes["pt_rag"].get_title() == "pt_rag: 11/11 groups above y = x (100%)"
    line = axes["state"].lines[0]  # the diagonal
    assert list(line.get_xdata()) == list(line.get_ydata())
    import matplotlib.pyplot as plt

    plt.close(fig)
    # VCC bars: state halves the baseline's MAE (0.5) and ties on the rest: (0.5 + 0 + 0) / 3
    fig = vcc_figure(m)
    heights = {
        t.get_text(): p.get_height() for t, p in zip(fig.axes[0].get_xticklabels(), fig.axes[0].patches, strict=True)
    }
    assert heights == pytest.approx(
        {"state": 0.5 / 3, "context_mean": 0.0, "control": 0.0, "linear": 0.0, "pt_rag": 0.0}
    )
    plt.close(fig)
    written = write_baseline_figures(m, tmp_path)
    assert set(written) == {"baseline_scatter.png", "vcc_score.png"}
    for f in written.values():
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 1000
    # no baseline left: nothing drawn, and the old figures are removed
    assert write_baseline_figures(m[~m.model.isin(["context_mean", "control", "linear"])], tmp_path) == {}
    assert not (tmp_path / "baseline_scatter.png").exists() and not (tmp_path / "vcc_score.png").exists()


def test_pooled_tables_and_report_show_the_baselines(tmp_path):
    from ptrag.experiments.cross_celltype import pooled_tables
    from ptrag.experiments.report import write_report

    m = _group_metrics()
    evals = {}
    for (seed, ct), g in m.groupby(["seed", "cell_type"]):
        d = tmp_path / f"seed{seed}" / ct / "eval"
        d.mkdir(parents=True)
        g.drop(columns="seed").assign(mode="ptrag").to_parquet(d / "metrics.parquet")
        evals[(seed, ct)] = d
    tables = pooled_tables(evals, tmp_path / "tables")
    t = pd.read_csv(tables / "table_all.csv").set_index("metric")
    assert t.loc["vcc_score", "state"] == pytest.approx(0.5 / 3) and t.loc["vcc_score", "best_model"] == "state"
    assert (tables / "baseline_scatter.png").is_file() and (tables / "vcc_score.png").is_file()
    man = {
        "data": "d.h5ad",
        "n_cells": 10,
        "n_genes": 5,
        "cell_types": ["A", "B"],
        "targets": ["A", "B"],
        "fewshot": 0.3,
        "seeds": [0, 1],
        "models": ["state", "pt_rag"],
        "preset": "cpu",
        "options": {},
        "gene_tables": [],
    }
    (tmp_path / "experiment.json").write_text(json.dumps(man))
    md = write_report(tmp_path)[0].read_text()
    assert "![Per-group Pearson Δ of each trained model against the best baseline](tables/baseline_scatter.png)" in md
    assert "(tables/vcc_score.png)" in md and "Virtual Cell Challenge (vs context_mean)" in md
    assert (
        "- **VCC score ↑**: model state wins; best baseline context_mean (0.000): state 0.167 beats it (no test)" in md
    )
    assert "- **Pearson Δ (all genes) ↑**: model pt_rag wins; best baseline context_mean" in md
