"""ptrag.eval.stats and the comparison tables: marks, BH, Mann-Whitney, paired Wilcoxon."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ptrag.errors import PtragError
from ptrag.eval.stats import (
    lookup_test,
    mann_whitney,
    pairwise_tests,
    shapiro_p,
    significance_mark,
    wilcoxon_paired,
)
from ptrag.eval.tables import comparison_table, format_value, summary_markdown, summary_table


def _metrics(seed: int = 0, n: int = 40) -> pd.DataFrame:
    """Three models on the same n groups; 'best' is better than 'mid' by a small paired shift."""
    rng = np.random.default_rng(seed)
    groups = [(ct, f"P{i}") for i, ct in enumerate(["A", "B"] * (n // 2))]
    base = rng.gamma(2.0, 1.0, size=n)
    rows = []
    for model, shift, noise in (("best", 0.0, 0.01), ("mid", 0.05, 0.01), ("worst", 1.0, 0.3)):
        w1 = base + shift + rng.normal(0, noise, size=n)
        r = 0.8 - shift / 2 + rng.normal(0, 0.05, size=n)
        for (ct, p), a, b in zip(groups, w1, r, strict=True):
            rows.append({"model": model, "cell_type": ct, "perturbation": p, "w1": a, "pearson_deg": b})
    return pd.DataFrame(rows)


def test_significance_marks_follow_the_paper():
    assert significance_mark(0.001) == "†"
    assert significance_mark(0.01) == "††"  # strict thresholds
    assert significance_mark(0.049) == "††"
    assert significance_mark(0.05) == "†††"
    assert significance_mark(0.099) == "†††"
    assert significance_mark(0.1) == ""
    assert significance_mark(float("nan")) == ""


def test_tests_against_scipy_and_the_paired_advantage():
    m = _metrics()
    t = pairwise_tests(m, ["w1", "pearson_deg"], ["best", "mid", "worst"])
    assert len(t) == 2 * 3
    row = lookup_test(t, "w1", "mid", "best")  # either order
    a = m[m.model == "best"]["w1"].to_numpy()
    b = m[m.model == "mid"]["w1"].to_numpy()
    assert row["mwu_p"] == pytest.approx(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    assert row["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert row["n_pairs"] == 40
    # a small shift on top of a large shared spread: invisible to Mann-Whitney, clear when paired
    assert row["mwu_p"] > 0.1 and row["wilcoxon_p"] < 1e-6
    # BH over all tests of the table, per family
    np.testing.assert_allclose(t["mwu_q"], stats.false_discovery_control(t["mwu_p"]))
    np.testing.assert_allclose(t["wilcoxon_q"], stats.false_discovery_control(t["wilcoxon_p"]))
    assert all(t["mwu_mark"] == [significance_mark(q) for q in t["mwu_q"]])
    assert row["shapiro_p_a"] == pytest.approx(stats.shapiro(a).pvalue)


def test_wilcoxon_pairs_on_cell_type_and_perturbation_not_row_order():
    m = _metrics(1)
    shuffled = pd.concat([m[m.model == "best"], m[m.model == "mid"].sample(frac=1.0, random_state=3)])
    t1 = lookup_test(pairwise_tests(m, ["w1"]), "w1", "best", "mid")
    t2 = lookup_test(pairwise_tests(shuffled, ["w1"]), "w1", "best", "mid")
    assert t1["wilcoxon_p"] == pytest.approx(t2["wilcoxon_p"]) and t1["mwu_p"] == pytest.approx(t2["mwu_p"])
    # a group only one model has is left out of the pairs
    t3 = lookup_test(pairwise_tests(m.iloc[1:], ["w1"]), "w1", "best", "mid")
    assert t3["n_pairs"] == 39


def test_edge_cases():
    assert wilcoxon_paired(np.ones(5), np.ones(5)) == (0.0, 1.0, 5)
    _, p, n = wilcoxon_paired(np.array([1.0, np.nan]), np.array([np.nan, 2.0]))
    assert n == 0 and math.isnan(p)
    assert math.isnan(mann_whitney(np.array([np.nan]), np.array([1.0]))[1])
    assert math.isnan(shapiro_p(np.array([1.0, 2.0]))) and math.isnan(shapiro_p(np.ones(10)))
    with pytest.raises(PtragError, match="nope"):
        pairwise_tests(_metrics(), ["nope"])


def test_comparison_table_best_bold_reference_and_renderings():
    m = _metrics()
    t = comparison_table(m, "ptrag", models=["best", "mid", "worst"])
    rows = {r.info.column: r for r in t.rows}
    assert rows["w1"].best == ["best"] and rows["pearson_deg"].best == ["best"]
    assert rows["w1"].reference == "best" and "best" not in rows["w1"].mark
    q = lookup_test(t.tests, "w1", "best", "worst")["mwu_q"]
    assert rows["w1"].mark["worst"] == significance_mark(q) == "†"
    md = t.to_markdown()
    assert f"**{format_value(rows['w1'].mean['best'])}**" in md and "W1 ↓" in md and "Pearson DEG ↑" in md
    assert md.index("Correlation on DEGs") < md.index("Distribution distance")
    tex = t.to_latex()
    assert tex.count(r"\textbf{") == 2 and r"$\downarrow$" in tex and r"\textsuperscript{\dag}" in tex
    frame = t.to_frame().set_index("metric")
    assert frame.loc["w1", "worst_mark"] == "†" and frame.loc["w1", "best_model"] == "best"
    # a fixed reference and the paired test
    tw = comparison_table(m, "ptrag", reference="worst", test="wilcoxon")
    r = {x.info.column: x for x in tw.rows}["w1"]
    assert r.reference == "worst" and "worst" not in r.mark
    assert r.q["mid"] == pytest.approx(lookup_test(tw.tests, "w1", "worst", "mid")["wilcoxon_q"])
    with pytest.raises(PtragError, match="--reference"):
        comparison_table(m, "ptrag", reference="nobody")
    with pytest.raises(PtragError, match="--test"):
        comparison_table(m, "ptrag", test="ttest")


def test_summary_table_and_markdown():
    m = _metrics()
    s = summary_table(m, "ptrag")
    assert set(s["cell_type"]) == {"all", "A", "B"}
    r = s[(s.model == "mid") & (s.cell_type == "A")].iloc[0]
    v = m[(m.model == "mid") & (m.cell_type == "A")]["w1"]
    assert r["w1_mean"] == pytest.approx(v.mean()) and r["w1_std"] == pytest.approx(v.std(ddof=1)) and r["w1_n"] == 20
    md = summary_markdown(s, "ptrag")
    assert "## All cell types" in md and "## Cell type A" in md and " ± " in md


def test_format_value_paper_style():
    assert [format_value(v) for v in (646.123, 35.704, 8.4312, 0.6331, 0.01423)] == [
        "646.1",
        "35.70",
        "8.43",
        "0.633",
        "0.0142",
    ]
    assert format_value(float("nan")) == "nan"


def test_exact_signed_rank_with_ties_equals_enumerating_every_sign_pattern():
    import itertools

    from ptrag.eval.stats import wilcoxon_paired

    a = np.array([0.3, 0.1, 0.4, 0.4, 0.2, 0.9, 0.3, 0.0, 0.5, 0.1])
    b = np.array([0.1, 0.3, 0.1, 0.1, 0.2, 0.1, 0.0, 0.2, 0.1, 0.4])  # tied |d| and one zero
    d = (a - b)[a != b]
    r = stats.rankdata(np.abs(d))
    t = r[d > 0].sum()
    sums = np.array([r[np.array(s, bool)].sum() for s in itertools.product([0, 1], repeat=d.size)])
    p = min(1.0, 2 * min(np.mean(sums <= t + 1e-9), np.mean(sums >= t - 1e-9)))
    w, pw, n = wilcoxon_paired(a, b)
    assert n == 10 and w == min(t, r.sum() - t) and pw == pytest.approx(p, rel=1e-12)
    # without ties it is scipy's exact test
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=23), rng.normal(size=23) + 0.4
    assert wilcoxon_paired(x, y)[1] == pytest.approx(stats.wilcoxon(x, y, method="exact").pvalue, rel=1e-12)
