"""The Virtual Cell Challenge score (ptrag.eval.vcc) and its row in the comparison tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ptrag.eval.tables import comparison_table
from ptrag.eval.vcc import VCC_METRICS, normalise_to_baseline, vcc_scores

NAN = math.nan


def _hand_metrics() -> pd.DataFrame:
    """context_mean (baseline), m1 (better), m2 (worse or missing) on groups A/P0, A/P1, B/P2."""
    groups = [("A", "P0"), ("A", "P1"), ("B", "P2")]
    values = {  # mae (best 0), discrimination_score_l1 (best 1), overlap_at_N (best 1)
        "context_mean": ([0.2, 0.4, 0.3], [0.5, 0.7, 0.6], [0.2, 0.2, 0.2]),
        "m1": ([0.1, 0.2, 0.15], [0.8, 0.8, 0.8], [0.6, NAN, 0.4]),
        "m2": ([0.6, 0.6, 0.6], [0.6, 0.6, 0.6], [NAN, NAN, NAN]),
    }
    rows = []
    for model, (mae, pds, ov) in values.items():
        for i, (ct, p) in enumerate(groups):
            rows.append(
                {
                    "model": model,
                    "cell_type": ct,
                    "perturbation": p,
                    "mae": mae[i],
                    "discrimination_score_l1": pds[i],
                    "overlap_at_N": ov[i],
                    "w1": 1.0 + i,
                }
            )
    return pd.DataFrame(rows)


def test_vcc_scores_by_hand():
    s = vcc_scores(_hand_metrics()).set_index(["cell_type", "model"])
    # all groups: baseline means mae 0.3, pds 0.6, overlap 0.2
    # m1: mae 0.15 -> 1 - 0.15/0.3 = 0.5; pds 0.8 -> (0.8-0.6)/(1-0.6) = 0.5;
    #     overlap mean 0.5 (NaN skipped) -> (0.5-0.2)/(1-0.2) = 0.375; score = 1.375/3
    m1 = s.loc[("all", "m1")]
    assert m1["mae_mean"] == pytest.approx(0.15) and m1["overlap_at_N_mean"] == pytest.approx(0.5)
    assert [m1["mae_score"], m1["discrimination_score_l1_score"], m1["overlap_at_N_score"]] == pytest.approx(
        [0.5, 0.5, 0.375]
    )
    assert m1["vcc_score"] == pytest.approx(1.375 / 3)
    assert m1["n_groups"] == 3 and m1["reason"] == ""
    # m2: mae 0.6 -> 1 - 2 = -1 -> clipped to 0; pds = baseline -> 0; overlap all NaN -> 0
    assert s.loc[("all", "m2"), "vcc_score"] == 0.0
    assert s.loc[("all", "context_mean"), "vcc_score"] == 0.0  # the baseline, by construction
    # cell type A on its own: baseline mae 0.3, pds 0.6, overlap 0.2; m1 mae 0.15, pds 0.8, overlap 0.6
    assert s.loc[("A", "m1"), "vcc_score"] == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    # cell type B: baseline mae 0.3, pds 0.6, overlap 0.2; m1 mae 0.15, pds 0.8, overlap 0.4 -> 0.25
    assert s.loc[("B", "m1"), "vcc_score"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert set(s.index.get_level_values(0)) == {"all", "A", "B"}


def test_vcc_scores_missing_baseline_or_columns():
    m = _hand_metrics()
    no_base = vcc_scores(m[m.model != "context_mean"], by_cell_type=False)
    assert no_base["vcc_score"].isna().all() and "baseline 'context_mean' not evaluated" in no_base["reason"].iloc[0]
    # without overlap_at_N: the mean of the other two (m1: 0.5, 0.5)
    two = vcc_scores(m.drop(columns="overlap_at_N"), by_cell_type=False).set_index("model")
    assert two.loc["m1", "vcc_score"] == pytest.approx(0.5)
    assert "overlap_at_N skipped (not in the metrics)" in two.loc["m1", "reason"]
    # a column without a best value in ptrag's registry is skipped, not guessed
    odd = vcc_scores(m.assign(foo=1.0), columns=("mae", "foo"), by_cell_type=False).set_index("model")
    assert odd.loc["m1", "vcc_score"] == pytest.approx(0.5) and "foo skipped" in odd.loc["m1", "reason"]
    # a metric the baseline has no value of is skipped
    nob = m.copy()
    nob.loc[nob.model == "context_mean", "mae"] = NAN
    r = vcc_scores(nob, by_cell_type=False).set_index("model").loc["m1"]
    assert (
        r["vcc_score"] == pytest.approx((0.5 + 0.375) / 2) and "mae skipped (the baseline has no value)" in r["reason"]
    )
    # no VCC metric at all: NaN, with the reason
    none = vcc_scores(m[["model", "cell_type", "perturbation", "w1"]], by_cell_type=False)
    assert none["vcc_score"].isna().all() and "no metric to score" in none["reason"].iloc[0]


def test_normalise_to_baseline_divisions_by_zero_give_zero():
    s = normalise_to_baseline(np.array([0.0, 0.1, 1.0, 0.5]), np.array([0.0, 0.0, 1.0, 1.0]), np.array([0, 0, 1, 1]))
    assert s.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_vcc_score_agrees_with_cell_eval_scorer():
    pl = pytest.importorskip("polars")
    score = pytest.importorskip("cell_eval._score")
    rng = np.random.default_rng(3)
    n = 12
    cols = list(VCC_METRICS)
    base = {
        "mae": rng.uniform(0.2, 0.4, n),
        "discrimination_score_l1": rng.uniform(0.4, 0.7, n),
        "overlap_at_N": rng.uniform(0.1, 0.3, n),
    }
    # the user is better on mae and overlap, worse on PDS (that metric contributes 0)
    user = {
        "mae": base["mae"] * rng.uniform(0.5, 0.9, n),
        "discrimination_score_l1": base["discrimination_score_l1"] - 0.2,
        "overlap_at_N": base["overlap_at_N"] + rng.uniform(0.0, 0.4, n),
    }
    rows = [
        {"model": name, "cell_type": "A", "perturbation": f"P{i}", **{c: v[c][i] for c in cols}}
        for name, v in (("context_mean", base), ("user", user))
        for i in range(n)
    ]
    ours = vcc_scores(pd.DataFrame(rows), by_cell_type=False).set_index("model").loc["user"]
    # cell-eval's aggregated results: polars describe() of the per-perturbation table
    agg_user = pl.DataFrame({c: user[c] for c in cols}).describe()
    agg_base = pl.DataFrame({c: base[c] for c in cols}).describe()
    theirs = dict(score.score_agg_metrics(agg_user, agg_base).iter_rows())
    assert theirs["avg_score"] == pytest.approx(ours["vcc_score"], rel=1e-9)
    for c in cols:
        assert theirs[c] == pytest.approx(ours[f"{c}_score"], rel=1e-9, abs=1e-12)
    assert ours["discrimination_score_l1_score"] == 0.0 and 0 < ours["vcc_score"] < 1


def test_comparison_table_has_the_vcc_row_only_with_the_baseline():
    m = _hand_metrics()
    t = comparison_table(m, "ptrag", models=["context_mean", "m1", "m2"])
    last = t.rows[-1]
    assert last.info.column == "vcc_score" and last.info.group == "Virtual Cell Challenge (vs context_mean)"
    assert last.mean == pytest.approx({"context_mean": 0.0, "m1": 1.375 / 3, "m2": 0.0})
    assert last.best == ["m1"] and last.mark == {} and last.q == {} and last.n == {"context_mean": 3, "m1": 3, "m2": 3}
    md = t.to_markdown()
    assert "**Virtual Cell Challenge (vs context_mean)**" in md and "| VCC score ↑ | 0.000 | **0.458** | 0.000 |" in md
    assert "VCC score: cell-eval's Virtual Cell Challenge score" in md
    tex = t.to_latex()
    assert (
        r"\textit{Virtual Cell Challenge (vs context\_mean)}" in tex
        and r"VCC score $\uparrow$ & 0.000 & \textbf{0.458} & 0.000" in tex
    )
    frame = t.to_frame().set_index("metric")
    assert frame.loc["vcc_score", "m1"] == pytest.approx(1.375 / 3) and frame.loc["vcc_score", "best_model"] == "m1"
    assert frame.loc["vcc_score", "m2_mark"] == "" and math.isnan(frame.loc["vcc_score", "m2_q"])
    # the other rows are unchanged by it
    assert frame.loc["mae", "best_model"] == "m1" and list(frame.index[:-1]) == [
        "mae",
        "w1",
        "discrimination_score_l1",
        "overlap_at_N",
    ]
    # without the baseline among the models, or with the row switched off, or in gge mode: no VCC row
    for table in (
        comparison_table(m, "ptrag", models=["m1", "m2"]),
        comparison_table(m, "ptrag", vcc_baseline=None),
        comparison_table(m, "gge"),
    ):
        assert all(r.info.column != "vcc_score" for r in table.rows) and "VCC" not in table.to_markdown()
    # a partial VCC metric set says so in the label
    partial = comparison_table(m.drop(columns=["overlap_at_N"]), "ptrag")
    assert partial.rows[-1].info.label == "VCC score (mae, discrimination_score_l1 only)"
