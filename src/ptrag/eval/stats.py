"""Significance tests between models, per metric (the paper's protocol, plus a paired test).

For every metric and every pair of models:

* Shapiro–Wilk on each model's per-group values (the paper uses it to show non-normality);
* Mann–Whitney U, two-sided (the paper's test: treats the two models' values as independent);
* Wilcoxon signed-rank, two-sided, on the groups both models predicted, matched on
  (cell type, perturbation) — the appropriate test here, since every model predicts the same
  test perturbations; reported beside the Mann–Whitney result.

Each test family (all Mann–Whitney tests of a table; all Wilcoxon tests of a table) is
corrected with Benjamini–Hochberg (``scipy.stats.false_discovery_control``), and adjusted
p-values are marked as in the paper: ``†`` q < 0.01, ``††`` q < 0.05, ``†††`` q < 0.1.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ptrag.errors import PtragError
from ptrag.eval.metrics import benjamini_hochberg

#: (threshold, mark): the first threshold the adjusted p-value is below gives the mark.
MARKS: tuple[tuple[float, str], ...] = ((0.01, "†"), (0.05, "††"), (0.1, "†††"))

KEYS = ["cell_type", "perturbation"]


def significance_mark(q: float) -> str:
    """The paper's mark of an adjusted p-value.

    Parameters
    ----------
    q
        BH-adjusted p-value.

    Returns
    -------
    str
        ``"†"`` (q < 0.01), ``"††"`` (q < 0.05), ``"†††"`` (q < 0.1) or ``""``.
    """
    if q is None or not np.isfinite(q):
        return ""
    for threshold, mark in MARKS:
        if q < threshold:
            return mark
    return ""


def shapiro_p(values: np.ndarray) -> float:
    """Shapiro–Wilk p-value (NaN for fewer than 3 values or a constant sample).

    Parameters
    ----------
    values
        Sample (NaNs dropped).

    Returns
    -------
    float
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 3 or np.ptp(v) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.shapiro(v).pvalue)


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided Mann–Whitney U test (NaNs dropped).

    Returns
    -------
    tuple
        ``(U statistic of a, p-value)``; NaN when a sample is empty.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    res = stats.mannwhitneyu(a, b, alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def wilcoxon_paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Two-sided Wilcoxon signed-rank test on paired values (pairs with a NaN dropped).

    Parameters
    ----------
    a, b
        Values of two models on the same groups, in the same order.

    Returns
    -------
    tuple
        ``(W statistic, p-value, number of pairs)``; ``p = 1`` when all differences are 0,
        NaN when there is no pair.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n == 0:
        return math.nan, math.nan, 0
    d = a - b
    if np.all(d == 0):
        return 0.0, 1.0, n
    nz = d[d != 0]
    if nz.size <= 50:
        w, p = _signed_rank_exact(nz)
        return w, p, n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = stats.wilcoxon(a, b, alternative="two-sided", method="approx")
    return float(res.statistic), float(res.pvalue), n


def _signed_rank_exact(d: np.ndarray) -> tuple[float, float]:
    """Exact two-sided signed-rank test of non-zero differences (up to ~50), ties included.

    The null distribution of the sum of the positive (mid)ranks under random signs, by dynamic
    programming over doubled ranks (integers): the exact permutation test, equal to
    ``scipy.stats.wilcoxon(method="exact")`` without ties. scipy >= 1.15 runs a random or
    enumerated permutation test here by default, ~100 ms a call on the tied values of discrete
    metrics (overlaps, PDS ranks).
    """
    r2 = np.rint(2 * stats.rankdata(np.abs(d))).astype(np.int64)
    t_plus = int(r2[d > 0].sum())
    dist = np.zeros(int(r2.sum()) + 1)
    dist[0] = 1.0
    for v in r2:
        dist[v:] = dist[v:] + dist[: dist.size - v].copy()
    dist /= dist.sum()
    p = min(1.0, 2.0 * min(dist[: t_plus + 1].sum(), dist[t_plus:].sum()))
    return min(t_plus, int(r2.sum()) - t_plus) / 2.0, float(p)


def pairwise_tests(
    metrics: pd.DataFrame,
    metric_cols: Sequence[str],
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """All tests of every metric and every pair of models, BH-corrected over the table.

    Parameters
    ----------
    metrics
        One row per (model, cell_type, perturbation), as in ``metrics.parquet``.
    metric_cols
        Metrics to test.
    models
        Models to compare (all models of ``metrics`` when ``None``), in this order.

    Returns
    -------
    pandas.DataFrame
        One row per (metric, model_a, model_b) with ``n_a, n_b, mean_a, mean_b, shapiro_p_a,
        shapiro_p_b, mwu_u, mwu_p, mwu_q, mwu_mark, n_pairs, wilcoxon_w, wilcoxon_p,
        wilcoxon_q, wilcoxon_mark``.
    """
    for col in ("model", *KEYS, *metric_cols):
        if col not in metrics.columns:
            raise PtragError(f"metrics table lacks column {col!r}.")
    models = list(models) if models is not None else sorted(metrics["model"].unique())
    by_model = {m: metrics[metrics["model"] == m].drop_duplicates(KEYS).set_index(KEYS) for m in models}
    shapiro = {(col, m): shapiro_p(by_model[m][col].to_numpy()) for col in metric_cols for m in models}
    rows = [
        _pair_row(col, ma, mb, by_model, shapiro) for col in metric_cols for ma, mb in itertools.combinations(models, 2)
    ]
    cols = [
        "metric", "model_a", "model_b", "n_a", "n_b", "mean_a", "mean_b", "shapiro_p_a",
        "shapiro_p_b", "mwu_u", "mwu_p", "mwu_q", "mwu_mark", "n_pairs", "wilcoxon_w",
        "wilcoxon_p", "wilcoxon_q", "wilcoxon_mark",
    ]  # fmt: skip
    out = pd.DataFrame(rows, columns=[c for c in cols if not c.endswith(("_q", "_mark"))])
    for fam in ("mwu", "wilcoxon"):
        q = benjamini_hochberg(out[f"{fam}_p"].to_numpy()) if len(out) else np.zeros(0)
        out[f"{fam}_q"] = q
        out[f"{fam}_mark"] = [significance_mark(v) for v in q]
    return out[cols]


def _pair_row(
    col: str, ma: str, mb: str, by_model: dict[str, pd.DataFrame], shapiro: dict[tuple[str, str], float]
) -> dict:
    """The row of :func:`pairwise_tests` (before the BH correction) for metric ``col`` and models
    ``ma``, ``mb``: counts, means, Shapiro–Wilk p-values, Mann–Whitney and paired Wilcoxon tests."""
    a, b = by_model[ma][col], by_model[mb][col]
    u, p_u = mann_whitney(a.to_numpy(), b.to_numpy())
    common = a.index.intersection(b.index)
    w, p_w, n_pairs = wilcoxon_paired(a.loc[common].to_numpy(), b.loc[common].to_numpy())
    return {
        "metric": col,
        "model_a": ma,
        "model_b": mb,
        "n_a": int(a.notna().sum()),
        "n_b": int(b.notna().sum()),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "shapiro_p_a": shapiro[(col, ma)],
        "shapiro_p_b": shapiro[(col, mb)],
        "mwu_u": u,
        "mwu_p": p_u,
        "n_pairs": n_pairs,
        "wilcoxon_w": w,
        "wilcoxon_p": p_w,
    }


def lookup_test(tests: pd.DataFrame, metric: str, model_a: str, model_b: str) -> pd.Series | None:
    """The row of ``tests`` comparing two models on a metric (either order), or ``None``."""
    t = tests[
        (tests["metric"] == metric)
        & (
            ((tests["model_a"] == model_a) & (tests["model_b"] == model_b))
            | ((tests["model_a"] == model_b) & (tests["model_b"] == model_a))
        )
    ]
    return None if t.empty else t.iloc[0]


def baseline_comparison(metrics: pd.DataFrame, metric: str = "energy", baseline: str = "control") -> pd.DataFrame:
    """Paired comparison of every model with the baseline on one lower-is-better metric.

    Parameters
    ----------
    metrics
        One row per (model, cell type, perturbation), as written by ``ptrag evaluate``.
    metric
        Metric column (lower is better).
    baseline
        Model name of the baseline.

    Returns
    -------
    pandas.DataFrame
        Per model (baseline excluded): ``better_than_control`` (fraction of shared groups
        where the model's value is lower) and ``wilcoxon_p`` (two-sided signed-rank test).
    """
    base = metrics[metrics["model"] == baseline].set_index(KEYS)[metric]
    rows = []
    for model, g in metrics[metrics["model"] != baseline].groupby("model", sort=False):
        joined = g.set_index(KEYS)[[metric]].join(base.rename("base"), how="inner").dropna()
        _, p, n = wilcoxon_paired(joined[metric].to_numpy(), joined["base"].to_numpy())
        better = float((joined[metric] < joined["base"]).mean()) if n else float("nan")
        rows.append({"model": model, "better_than_control": better, "wilcoxon_p": p})
    return pd.DataFrame(rows, columns=["model", "better_than_control", "wilcoxon_p"])
