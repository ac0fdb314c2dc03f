"""The metric registry: every metric declared once, with its function (cell-eval's style).

A metric is a :class:`MetricInfo`: its column, label, direction, best value, table group, scope
and the small function that computes it. Group-scope functions take a
:class:`ptrag.eval.scoring.GroupContext` (one model, one (cell type, perturbation) group; the
shared quantities — means, DEGs, PCA scores, DE tables — are computed once and cached there);
cell-type-scope functions take a :class:`ptrag.eval.scoring.CellTypeContext` (all the groups of
one model in one cell type) and return one value per group. ``group_metrics`` and the
evaluators iterate :data:`METRICS`; adding a metric is adding one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ptrag.errors import check_choice


@dataclass(frozen=True)
class MetricInfo:
    """A metric: how it is computed and shown.

    Attributes
    ----------
    column
        Column name in ``metrics.parquet``.
    label
        Display name.
    higher_is_better
        Direction (↑ when true, ↓ otherwise).
    group
        Row group of the comparison table (the metric's family).
    best
        The metric's best possible value (1 for correlations and scores, 0 for errors and
        distances; ``None`` when unbounded), as cell-eval's registry states it: the VCC score
        normalises against a baseline with it.
    scope
        ``"group"``: one value per (cell type, perturbation); ``"cell_type"``: one value per
        (model, cell type) or computed from all its groups together (cell-eval's PDS and
        ``pearson_edistance``).
    func
        The function: context -> value (group scope) or -> values per group (cell-type scope);
        ``None`` for display-only entries (the gge mode, scored by :mod:`ptrag.eval.gge`).
    tested
        Whether the groups' values take the tables' paired tests (not when one value is
        repeated over a cell type's groups, as ``pearson_edistance``).
    """

    column: str
    label: str
    higher_is_better: bool
    group: str
    best: float | None = None
    scope: str = "group"
    func: Callable[[Any], Any] | None = None
    tested: bool = True

    @property
    def arrow(self) -> str:
        """``↑`` or ``↓``."""
        return "↑" if self.higher_is_better else "↓"


_CORR = "Correlation on DEGs"
_ERR = "Expression error (on means)"
_DIST = "Distribution distance (PCA-50)"
_CE_DELTA = "cell-eval: change from control"
_CE_PDS = "cell-eval: discrimination (PDS)"
_CE_DE = "cell-eval: DE genes (Wilcoxon, FDR < 0.05)"
_GGE = "Per-PC distance, averaged (gge)"

#: cell-eval's DE overlap columns: ``overlap_at_N`` (N = the observed DE count) and fixed k.
OVERLAP_KS = (None, 50, 100, 200, 500)


def _overlap(k: int | None, metric: str) -> Callable[[Any], float]:
    return lambda c: c.de_overlap(k, metric)


def _pds(distance: str) -> Callable[[Any], Any]:
    return lambda ct: ct.discrimination(distance)


#: Metrics of each evaluation mode, in table order.
METRICS: dict[str, tuple[MetricInfo, ...]] = {
    "ptrag": (
        MetricInfo("pearson_deg", "Pearson DEG", True, _CORR, 1.0, func=lambda c: c.deg_correlations[0]),
        MetricInfo("spearman_deg", "Spearman DEG", True, _CORR, 1.0, func=lambda c: c.deg_correlations[1]),
        MetricInfo("pearson_delta", "Pearson Δ (all genes)", True, _CORR, 1.0, func=lambda c: c.pearson_delta),
        MetricInfo("mse", "MSE", False, _ERR, 0.0, func=lambda c: c.mean_errors["mse"]),
        MetricInfo("rmse", "RMSE", False, _ERR, 0.0, func=lambda c: c.mean_errors["rmse"]),
        MetricInfo("mae", "MAE", False, _ERR, 0.0, func=lambda c: c.mean_errors["mae"]),
        MetricInfo("mse_pca50", "MSE PCA50", False, _ERR, 0.0, func=lambda c: c.pca_mean_error),
        MetricInfo("w1", "W1", False, _DIST, 0.0, func=lambda c: c.set_distances["w1"]),
        MetricInfo("w2_sq", "W2²", False, _DIST, 0.0, func=lambda c: c.set_distances["w2_sq"]),
        MetricInfo("energy", "Energy", False, _DIST, 0.0, func=lambda c: c.set_distances["energy"]),
        MetricInfo("mmd", "MMD²", False, _DIST, 0.0, func=lambda c: c.set_distances["mmd"]),
        MetricInfo("mae_delta", "MAE Δ", False, _CE_DELTA, 0.0, func=lambda c: c.delta_errors["mae_delta"]),
        MetricInfo("mse_delta", "MSE Δ", False, _CE_DELTA, 0.0, func=lambda c: c.delta_errors["mse_delta"]),
        MetricInfo(
            "pearson_edistance",
            "Pearson E-distance",
            True,
            _CE_DELTA,
            1.0,
            "cell_type",
            lambda ct: ct.pearson_edistance(),
            tested=False,
        ),
        *(
            MetricInfo(f"discrimination_score_{d}", f"PDS {d}", True, _CE_PDS, 1.0, "cell_type", _pds(d))
            for d in ("l1", "l2", "cosine")
        ),
        *(
            MetricInfo(f"overlap_at_{k or 'N'}", f"Overlap@{k or 'N'}", True, _CE_DE, 1.0, func=_overlap(k, "overlap"))
            for k in OVERLAP_KS
        ),
        MetricInfo("precision_at_N", "Precision@N", True, _CE_DE, 1.0, func=_overlap(None, "precision")),
        MetricInfo("de_spearman_lfc_sig", "Spearman LFC (DE)", True, _CE_DE, 1.0, func=lambda c: c.de_agreement[0]),
        MetricInfo("de_direction_match", "Direction match (DE)", True, _CE_DE, 1.0, func=lambda c: c.de_agreement[1]),
    ),
    "gge": (
        MetricInfo("pearson_deg", "Pearson DEG", True, _CORR, 1.0),
        MetricInfo("spearman_deg", "Spearman DEG", True, _CORR, 1.0),
        MetricInfo("mse", "MSE", False, _ERR, 0.0),
        MetricInfo("rmse", "RMSE", False, _ERR, 0.0),
        MetricInfo("mae", "MAE", False, _ERR, 0.0),
        MetricInfo("mse_pca50", "MSE PCA50", False, _ERR, 0.0),
        MetricInfo("w1", "W1", False, _GGE, 0.0),
        MetricInfo("w2", "W2", False, _GGE, 0.0),
        MetricInfo("energy", "Energy", False, _GGE, 0.0),
        MetricInfo("mmd", "MMD", False, _GGE, 0.0),
    ),
}

#: The metrics that need cell-eval's inputs (the control cells themselves, not their statistics).
CELL_EVAL_COLUMNS = tuple(m.column for m in METRICS["ptrag"] if m.group.startswith("cell-eval"))

#: Columns of ``metrics.parquet`` besides the metrics.
ID_COLUMNS = ("model", "cell_type", "perturbation")
COUNT_COLUMNS = ("n_pred", "n_real", "n_deg", "reason")


def metric_columns(mode: Literal["ptrag", "gge"] = "ptrag") -> list[str]:
    """Metric column names of a mode, in table order.

    Parameters
    ----------
    mode
        ``"ptrag"`` or ``"gge"``.

    Returns
    -------
    list of str
    """
    check_choice("--mode", mode, tuple(METRICS))
    return [m.column for m in METRICS[mode]]


def metric_info(column: str, mode: Literal["ptrag", "gge"] = "ptrag") -> MetricInfo:
    """The registry entry of a metric column.

    Parameters
    ----------
    column
        Column name.
    mode
        The metric set.

    Returns
    -------
    MetricInfo
    """
    for m in METRICS[mode]:
        if m.column == column:
            return m
    raise KeyError(column)
