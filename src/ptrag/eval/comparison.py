"""Building the comparison tables: per-model statistics, the reference of each row, the tests' marks.

Every model is compared with the *reference* of its metric row — the model given with
``reference`` (``--reference``), by default the row's best model (best mean), or with
:data:`~ptrag.eval.table_format.BEST_BASELINE` the row's best baseline. The tests over the
(cell type, perturbation) groups come from :func:`ptrag.eval.stats.pairwise_tests`
(Mann–Whitney U, and the Wilcoxon signed-rank test paired on the groups); a non-reference cell
carries the mark of the BH-adjusted p-value of its test against the reference. Rendering is in
:mod:`ptrag.eval.table_format`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ptrag.errors import PtragError, check_choice
from ptrag.eval.metrics import MetricInfo
from ptrag.eval.stats import lookup_test, pairwise_tests
from ptrag.eval.table_format import (
    BEST_BASELINE,
    RESERVED_COLUMNS,
    ComparisonRow,
    ComparisonTable,
    metric_infos,
)
from ptrag.eval.vcc import VCC_BASELINE, vcc_info, vcc_of_models


def check_reference(reference: str | None, models: Sequence[str], baselines: Sequence[str]) -> None:
    """Raise :class:`~ptrag.errors.PtragError` when ``reference`` names no model (or no baseline is present).

    Parameters
    ----------
    reference
        A model, :data:`~ptrag.eval.table_format.BEST_BASELINE` or ``None`` (always valid).
    models
        The models of the table.
    baselines
        Which models are baselines.
    """
    if reference == BEST_BASELINE:
        if not any(b in models for b in baselines):
            raise PtragError(f"--reference {BEST_BASELINE} needs a baseline among the models ({', '.join(models)}).")
    elif reference is not None and reference not in models:
        raise PtragError(f"--reference {reference!r} is not one of the models: {', '.join(models)}.")


def best_models(mean: dict[str, float], higher_is_better: bool) -> list[str]:
    """The models with the best finite mean (all of them on a tie; none when no mean is finite).

    Parameters
    ----------
    mean
        ``model -> mean``.
    higher_is_better
        Direction of the metric.

    Returns
    -------
    list[str]
    """
    finite = {mo: x for mo, x in mean.items() if np.isfinite(x)}
    if not finite:
        return []
    target = max(finite.values()) if higher_is_better else min(finite.values())
    return [mo for mo, x in finite.items() if x == target]


def _vcc_row(metrics: pd.DataFrame, models: list[str], baseline: str) -> ComparisonRow | None:
    """The VCC score row (no test), or ``None`` when no VCC metric or no baseline value."""
    scores, used = vcc_of_models(metrics[metrics["model"].isin(models)], baseline)
    if not scores:
        return None
    counts = metrics["model"].value_counts()
    mean = {mo: scores.get(mo, math.nan) for mo in models}
    n = {mo: int(counts.get(mo, 0)) for mo in models}
    return ComparisonRow(
        vcc_info(baseline, used), mean, {mo: math.nan for mo in models}, n, best_models(mean, True), None
    )


def _row_stats(
    metrics: pd.DataFrame, column: str, models: Sequence[str]
) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """Mean, std (ddof = 1) and count of ``column`` per model, NaNs skipped."""
    mean, std, n = {}, {}, {}
    for mo in models:
        v = metrics.loc[metrics["model"] == mo, column].astype(float)
        mean[mo] = float(v.mean())
        std[mo] = float(v.std(ddof=1)) if v.notna().sum() > 1 else math.nan
        n[mo] = int(v.notna().sum())
    return mean, std, n


def _row_reference(
    reference: str | None, mean: dict[str, float], best: list[str], info: MetricInfo, baselines: Sequence[str]
) -> str | None:
    """The model a row's other models are tested against."""
    if reference == BEST_BASELINE:
        return next(iter(best_models({b: mean[b] for b in baselines if b in mean}, info.higher_is_better)), None)
    return reference if reference is not None else (best[0] if best else None)


def _metric_row(
    metrics: pd.DataFrame,
    info: MetricInfo,
    models: list[str],
    reference: str | None,
    baselines: Sequence[str],
    tests: pd.DataFrame,
    fam: str,
) -> ComparisonRow:
    """One metric row: statistics per model, best models, reference and marks (``fam``: ``mwu`` / ``wilcoxon``)."""
    mean, std, n = _row_stats(metrics, info.column, models)
    best = best_models(mean, info.higher_is_better)
    ref = _row_reference(reference, mean, best, info, baselines)
    row = ComparisonRow(info, mean, std, n, best, ref)
    if ref is not None and len(models) > 1:
        for mo in models:
            if mo == ref:
                continue
            t = lookup_test(tests, info.column, ref, mo)
            if t is not None:
                row.q[mo] = float(t[f"{fam}_q"])
                row.mark[mo] = str(t[f"{fam}_mark"])
    return row


def comparison_table(
    metrics: pd.DataFrame,
    mode: Literal["ptrag", "gge"] = "ptrag",
    reference: str | None = None,
    test: Literal["mannwhitney", "wilcoxon"] = "mannwhitney",
    models: Sequence[str] | None = None,
    title: str = "All cell types",
    vcc_baseline: str | None = VCC_BASELINE,
    baselines: Sequence[str] = (),
) -> ComparisonTable:
    """Build a comparison table of several models.

    Parameters
    ----------
    metrics
        One row per (model, cell_type, perturbation); restrict it to one cell type for the
        per-cell-type tables.
    mode
        The metric set (``ptrag`` or ``gge``).
    reference
        Compare every model with this one (``--reference``); by default each metric row's
        best model; :data:`BEST_BASELINE`: each row's best baseline (best mean among
        ``baselines``).
    test
        ``"mannwhitney"`` (the paper's) or ``"wilcoxon"`` (paired on cell type + perturbation).
    models
        Column order (all models, sorted, when ``None``).
    title
        Caption.
    baselines
        Which models are baselines (for ``reference=BEST_BASELINE``).
    vcc_baseline
        Add the Virtual Cell Challenge score against this baseline as the last row
        (:func:`ptrag.eval.vcc.vcc_scores`; ``ptrag`` mode, only when the baseline is one of
        ``models`` and a VCC metric is present); ``None``: no such row.

    Returns
    -------
    ComparisonTable
    """
    check_choice("--test", test, ("mannwhitney", "wilcoxon"))
    models = list(models) if models is not None else sorted(metrics["model"].unique())
    clash = [mo for mo in models if mo in RESERVED_COLUMNS]
    if clash:
        raise PtragError(f"model name {clash[0]!r} is reserved in the comparison tables; rename the model.")
    check_reference(reference, models, baselines)
    infos = metric_infos(mode, metrics.columns)
    # a cell-type-scope metric repeats one value over the groups of a cell type: no per-group test
    tested = [m.column for m in infos if m.tested]
    tests = pairwise_tests(metrics, tested, models) if len(models) > 1 else pd.DataFrame()
    fam = "mwu" if test == "mannwhitney" else "wilcoxon"
    rows = [_metric_row(metrics, m, models, reference, baselines, tests, fam) for m in infos]
    vcc = _vcc_row(metrics, models, vcc_baseline) if mode == "ptrag" and vcc_baseline in models else None
    return ComparisonTable(
        title, models, rows + ([vcc] if vcc else []), tests, test, reference, vcc_baseline if vcc else None
    )
