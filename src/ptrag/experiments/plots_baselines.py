"""Figures of the trained models against the baselines, for the experiment report.

* ``baseline_scatter.png`` — one panel per trained model: its per-group Pearson Δ (y) against
  the best baseline's (x; the baseline with the best mean), one point per test group, the
  diagonal y = x, and the fraction of groups above it in the title.
* ``vcc_score.png`` — the Virtual Cell Challenge score (:mod:`ptrag.eval.vcc`) of every model
  and baseline.

:func:`write_baseline_figures` writes both from the pooled per-group metrics
(:func:`ptrag.experiments.pooled.pooled_tables` calls it beside Table 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.errors import atomic_save_figure
from ptrag.eval.metrics import METRICS
from ptrag.eval.stats import KEYS
from ptrag.eval.vcc import VCC_BASELINE, vcc_of_models
from ptrag.train.baselines import BASELINES

#: File name -> caption of the figures, in report order.
BASELINE_FIGURES = {
    "baseline_scatter.png": "Per-group Pearson Δ of each trained model against the best baseline",
    "vcc_score.png": "Virtual Cell Challenge score of every model and baseline",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_baseline(
    metrics: pd.DataFrame, column: str = "pearson_delta", baselines: Sequence[str] = BASELINES
) -> str | None:
    """The baseline with the best mean of ``column`` (NaN skipped).

    Parameters
    ----------
    metrics
        Per-group metrics (``model`` and ``column`` columns).
    column
        The metric; its direction is read from :data:`ptrag.eval.metrics.METRICS` (higher is
        better when unknown).
    baselines
        The names that are baselines.

    Returns
    -------
    str or None
        ``None`` when no baseline has a value.
    """
    if column not in metrics.columns:
        return None
    higher = next((m.higher_is_better for m in METRICS["ptrag"] if m.column == column), True)
    sub = metrics[metrics["model"].isin(baselines)]
    means = sub.assign(v=sub[column].astype(float)).groupby("model")["v"].mean().dropna()
    if means.empty:
        return None
    return str(means.idxmax() if higher else means.idxmin())


def baseline_pairs(
    metrics: pd.DataFrame, baseline: str, column: str = "pearson_delta", baselines: Sequence[str] = BASELINES
) -> pd.DataFrame:
    """Each trained model's per-group value of ``column`` beside ``baseline``'s.

    Parameters
    ----------
    metrics
        Per-group metrics; groups are matched on ``seed`` (when present), ``cell_type`` and
        ``perturbation``.
    baseline
        The model on the x axis.
    column
        The metric.
    baselines
        Models that are not drawn (the baselines).

    Returns
    -------
    pandas.DataFrame
        Columns ``model``, the group keys, ``x`` (baseline) and ``y`` (model): one row per
        group both have a finite value of.
    """
    keys = (["seed"] if "seed" in metrics.columns else []) + KEYS

    def values(model: str) -> pd.Series:
        m = metrics[metrics["model"] == model].drop_duplicates(keys)
        return m.set_index(keys)[column].astype(float)

    x = values(baseline).rename("x")
    frames = []
    for model in sorted(set(metrics["model"]) - set(baselines)):
        pair = pd.concat([x, values(model).rename("y")], axis=1, join="inner").dropna()
        frames.append(pair.reset_index().assign(model=model))
    cols = ["model", *keys, "x", "y"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def baseline_scatter_figure(metrics: pd.DataFrame, column: str = "pearson_delta", baselines: Sequence[str] = BASELINES):
    """The scatter of every trained model against the best baseline (see the module docstring).

    Parameters
    ----------
    metrics
        Per-group metrics of the models and the baselines.
    column
        The metric (Pearson Δ by default).
    baselines
        The names that are baselines.

    Returns
    -------
    matplotlib.figure.Figure or None
        ``None`` when there is no baseline value or no trained model to draw.
    """
    base = best_baseline(metrics, column, baselines)
    pairs = baseline_pairs(metrics, base, column, baselines) if base else pd.DataFrame()
    if pairs.empty:
        return None
    models = sorted(pairs["model"].unique())
    ncols = min(len(models), 4)
    nrows = math.ceil(len(models) / ncols)
    fig, axes = _pyplot().subplots(nrows, ncols, figsize=(3.4 * ncols, 3.3 * nrows), squeeze=False)
    lo, hi = float(np.min(pairs[["x", "y"]].to_numpy())), float(np.max(pairs[["x", "y"]].to_numpy()))
    pad = 0.05 * (hi - lo or 1.0)
    for ax, model in zip(axes.flat, models, strict=False):
        p = pairs[pairs["model"] == model]
        above = int((p["y"] > p["x"]).sum())
        ax.scatter(p["x"], p["y"], s=12, alpha=0.7)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", linewidth=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{model}: {above}/{len(p)} groups above y = x ({above / len(p):.0%})", fontsize=9)
        ax.set_xlabel(f"{base} ({column})", fontsize=8)
        ax.set_ylabel(f"{model} ({column})", fontsize=8)
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def vcc_figure(metrics: pd.DataFrame, baseline: str = VCC_BASELINE, baselines: Sequence[str] = BASELINES):
    """Bar chart of the VCC score of every model and baseline (best first; baselines grey).

    Parameters
    ----------
    metrics
        Per-group metrics of the models and the baselines.
    baseline
        The baseline the score is normalised against.
    baselines
        The names drawn in grey.

    Returns
    -------
    matplotlib.figure.Figure or None
        ``None`` when the score cannot be computed (no baseline, no VCC metric).
    """
    scores, used = vcc_of_models(metrics, baseline)
    if not scores:
        return None
    names = sorted(scores, key=lambda m: -scores[m])
    fig, ax = _pyplot().subplots(figsize=(max(4.0, 0.8 * len(names) + 1.5), 3.4))
    colors = ["#9e9e9e" if n in baselines else "C0" for n in names]
    bars = ax.bar(names, [scores[n] for n in names], color=colors)
    ax.bar_label(bars, labels=[f"{scores[n]:.3f}" for n in names], fontsize=7)
    ax.set_ylabel("VCC score")
    ax.set_title(f"VCC score vs {baseline} ({', '.join(used)})", fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    return fig


def write_baseline_figures(metrics: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write ``baseline_scatter.png`` and ``vcc_score.png`` into ``out_dir`` (atomically).

    Parameters
    ----------
    metrics
        Pooled per-group metrics (with a ``seed`` column when several seeds are pooled).
    out_dir
        Destination folder (Table 1's).

    Returns
    -------
    dict
        File name -> path of the figures written (a figure that cannot be drawn is skipped and
        any older copy removed, so the report never shows a stale one).
    """
    out = Path(out_dir)
    written = {}
    for name, fig in (
        ("baseline_scatter.png", baseline_scatter_figure(metrics)),
        ("vcc_score.png", vcc_figure(metrics)),
    ):
        if fig is None:
            (out / name).unlink(missing_ok=True)
            continue
        written[name] = atomic_save_figure(fig, out / name, dpi=110)
    return written
