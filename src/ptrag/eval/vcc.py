"""The Virtual Cell Challenge score: each model's metrics normalised against a baseline.

cell-eval's ``vcc`` profile (``cell_eval._pipeline._runner.VCC_METRICS``) scores a model on
three metrics: ``mae``, ``discrimination_score_l1`` and ``overlap_at_N``. Its scorer
(``cell_eval._score.score_agg_metrics``) takes each metric's mean over the perturbations of the
model and of a baseline, normalises it against the baseline by the metric's best value ``b*``,

* ``b* = 0`` (errors): ``1 − user / base``;
* ``b* = 1`` (scores): ``(user − base) / (1 − base)``,

replaces NaN by 0, clips below at 0 and averages the normalised metrics into the score. The
baseline scores 0 by construction, a perfect model 1, and a metric on which a model is worse
than the baseline contributes 0. :func:`vcc_scores` does the same from ptrag's per-group
metrics, per model, over all groups and per cell type; the Challenge's baseline is
``context_mean`` (the mean change of the target cell type's training perturbations).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ptrag.eval.metrics import METRICS, MetricInfo

#: The metrics of cell-eval's ``vcc`` profile (cell-eval 0.8.2).
VCC_METRICS: tuple[str, ...] = ("mae", "discrimination_score_l1", "overlap_at_N")

#: The baseline the Challenge normalises against.
VCC_BASELINE = "context_mean"

#: Column of the score in :func:`vcc_scores` and in the comparison tables.
VCC_COLUMN = "vcc_score"

_ALL = "all"  # the over-all-cell-types scope, as ptrag.eval.tables.ALL


def vcc_info(baseline: str = VCC_BASELINE, columns: Sequence[str] = VCC_METRICS) -> MetricInfo:
    """Display information of the VCC score row of a comparison table.

    Parameters
    ----------
    baseline
        The baseline the score is normalised against (named in the row group).
    columns
        The metrics that went into the score: when some of :data:`VCC_METRICS` are missing,
        the label names those used.

    Returns
    -------
    MetricInfo
        Column ``vcc_score``, higher is better, best value 1, scope ``"model"`` (one value per
        model: no per-group test).
    """
    label = "VCC score"
    if set(VCC_METRICS) - set(columns):
        label += f" ({', '.join(columns)} only)"
    return MetricInfo(VCC_COLUMN, label, True, f"Virtual Cell Challenge (vs {baseline})", 1.0, "model")


def normalise_to_baseline(user: np.ndarray, base: np.ndarray, best: np.ndarray) -> np.ndarray:
    """cell-eval's normalisation of aggregated metrics against a baseline.

    Parameters
    ----------
    user, base
        The model's and the baseline's aggregated value of each metric.
    best
        Each metric's best value: 0 (``1 − user / base``) or 1 (``(user − base) / (1 − base)``).

    Returns
    -------
    numpy.ndarray
        The normalised values, NaN replaced by 0 and clipped below at 0 (a division by zero
        gives ±inf or NaN, hence 0, as in cell-eval).
    """
    user, base, best = (np.asarray(a, dtype=float) for a in (user, base, best))
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(best == 0.0, 1.0 - user / base, (user - base) / (1.0 - base))
    s = np.where(np.isnan(s), 0.0, s)
    return np.clip(s, 0.0, None)


def _best_values(columns: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    known = {m.column: m.best for m in METRICS["ptrag"]}
    best, notes = {}, []
    for c in columns:
        b = known.get(c)
        if b in (0.0, 1.0):
            best[c] = float(b)
        else:
            notes.append(f"{c} skipped (no best value 0 or 1 in ptrag's metric registry)")
    return best, notes


def _score_scope(
    means: pd.DataFrame, counts: pd.Series, scope: str, baseline: str, best: dict[str, float], notes: list[str]
) -> list[dict[str, object]]:
    """Score every model of one scope from its means (index: model; columns: metrics)."""
    cols = list(best)
    rows = [
        {
            "model": mo,
            "cell_type": scope,
            "n_groups": int(counts[mo]),
            **{f"{c}_mean": float(means.loc[mo, c]) for c in cols},
        }
        for mo in means.index
    ]
    if baseline not in means.index:
        reason = "; ".join([*notes, f"baseline {baseline!r} not evaluated here"])
        return [{**r, VCC_COLUMN: np.nan, "reason": reason} for r in rows]
    base = means.loc[baseline, cols].astype(float)
    usable = [c for c in cols if np.isfinite(base[c])]
    notes = [*notes, *(f"{c} skipped (the baseline has no value)" for c in cols if c not in usable)]
    for r in rows:
        s = normalise_to_baseline(
            means.loc[r["model"], usable].to_numpy(float), base[usable].to_numpy(), np.array([best[c] for c in usable])
        )
        r.update({f"{c}_score": float(v) for c, v in zip(usable, s, strict=True)})
        r[VCC_COLUMN] = float(s.mean()) if usable else np.nan
        r["reason"] = "; ".join(notes + ([] if usable else ["no metric to score"]))
    return rows


def vcc_scores(
    metrics: pd.DataFrame,
    baseline: str = VCC_BASELINE,
    columns: Sequence[str] = VCC_METRICS,
    by_cell_type: bool = True,
) -> pd.DataFrame:
    """The Virtual Cell Challenge score of every model against ``baseline``.

    Each metric's mean over a model's groups (NaN skipped) is normalised against the
    baseline's mean as cell-eval's ``score_agg_metrics`` does (see the module docstring), and
    the normalised metrics are averaged into ``vcc_score``. Give every model the same groups
    (e.g. :func:`ptrag.eval.tables.common_groups`), as cell-eval scores one data set.

    Parameters
    ----------
    metrics
        One row per (model, cell_type, perturbation), with the metric columns.
    baseline
        The model normalised against (scores 0).
    columns
        Metrics of the score (default: the ``vcc`` profile). A column absent from
        ``metrics``, or without a best value of 0 or 1 in :data:`ptrag.eval.metrics.METRICS`,
        is skipped; so is a metric the baseline has no value of.
    by_cell_type
        Also score each cell type on its own groups.

    Returns
    -------
    pandas.DataFrame
        One row per (scope, model): ``model, cell_type`` (``"all"``: every group),
        ``n_groups``, ``<metric>_mean`` (the raw means), ``<metric>_score`` (normalised; absent
        when the baseline is missing), ``vcc_score`` (NaN when the baseline is not among the
        models or no metric is left) and ``reason`` (what was skipped, or ``""``).
    """
    used = [c for c in columns if c in metrics.columns]
    best, notes = _best_values(used)
    notes = [f"{c} skipped (not in the metrics)" for c in columns if c not in metrics.columns] + notes
    scopes = [(_ALL, metrics)]
    if by_cell_type:
        scopes += [(str(ct), g) for ct, g in metrics.groupby("cell_type", sort=True)]
    rows: list[dict[str, object]] = []
    for scope, sub in scopes:
        grouped = sub.assign(**{c: sub[c].astype(float) for c in best}).groupby("model", sort=True)
        means = grouped[list(best)].mean() if best else pd.DataFrame(index=sorted(sub["model"].unique()))
        rows += _score_scope(means, grouped.size(), scope, baseline, best, notes)
    return pd.DataFrame(rows)


def vcc_of_models(metrics: pd.DataFrame, baseline: str = VCC_BASELINE) -> tuple[dict[str, float], list[str]]:
    """``model -> vcc_score`` over all of ``metrics``' groups, and the metrics used.

    Parameters
    ----------
    metrics
        Per-group metrics, as for :func:`vcc_scores`.
    baseline
        The baseline normalised against.

    Returns
    -------
    scores : dict
        Finite scores only: empty when the baseline is missing or no VCC metric is present.
    used : list of str
        The metrics of :data:`VCC_METRICS` behind the scores.
    """
    s = vcc_scores(metrics, baseline, by_cell_type=False)
    used = [c for c in VCC_METRICS if f"{c}_score" in s.columns]
    s = s[np.isfinite(s[VCC_COLUMN].astype(float))]
    return dict(zip(s["model"], s[VCC_COLUMN].astype(float), strict=True)), used
