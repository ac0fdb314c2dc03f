"""Scoring: the registry's metrics over one group, and over the groups of one cell type.

* :class:`ControlSet`, :class:`ObservedGroup` (in :mod:`ptrag.eval.groups`, re-exported) — the
  observed control cells of a cell type and one group's observed cells, computed once.
* :class:`GroupContext` — one model's predicted cells of a group; its cached properties are
  what the registry's group-scope functions read.
* :class:`CellTypeScorer` — feeds groups one at a time (nothing but per-group summaries is
  kept), then scores the cell-type-scope metrics (PDS, ``pearson_edistance``) over all of them.
* :func:`group_metrics` — every group-scope metric of one group for several models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ptrag.data.pca import PCASpace
from ptrag.errors import PtragError
from ptrag.eval import celleval
from ptrag.eval.distances import set_distances
from ptrag.eval.groups import ControlSet, ObservedGroup
from ptrag.eval.metrics import (
    DEGResult,
    GroupStats,
    MetricOptions,
    delta_correlations,
    mean_errors,
)
from ptrag.eval.registry import METRICS, MetricInfo

GROUP_METRICS: tuple[MetricInfo, ...] = tuple(m for m in METRICS["ptrag"] if m.scope == "group")
CELL_TYPE_METRICS: tuple[MetricInfo, ...] = tuple(m for m in METRICS["ptrag"] if m.scope == "cell_type")


@dataclass
class GroupContext:
    """One model's predicted cells of one group: what the registry's functions read
    (``given_de``: its cell-eval DE table when computed with other sets in one pass)."""

    pred: np.ndarray
    obs: ObservedGroup
    reasons: list[str] = field(default_factory=list)
    given_de: celleval.DETable | None = None

    @cached_property
    def mean(self) -> np.ndarray:
        """Predicted mean profile."""
        return self.pred.astype(np.float64).mean(axis=0)

    @cached_property
    def delta(self) -> np.ndarray:
        """Predicted change from the observed controls."""
        return self.mean - self.obs.control.stats.mean

    @cached_property
    def deg_correlations(self) -> tuple[float, float]:
        """Pearson and Spearman correlation of the changes over the DEGs."""
        r, rho, why = delta_correlations(self.delta, self.obs.delta, self.obs.degs.mask, self.obs.options.min_degs)
        if why:
            self.reasons.append(why)
        return r, rho

    @cached_property
    def pearson_delta(self) -> float:
        """Pearson correlation of the changes over all genes."""
        r, _, why = delta_correlations(self.delta, self.obs.delta, None, 2)
        if why and why not in self.reasons:
            self.reasons.append(f"pearson_delta: {why}")
        return r

    @cached_property
    def mean_errors(self) -> dict[str, float]:
        """MSE, RMSE, MAE of the mean profiles."""
        return mean_errors(self.mean, self.obs.mean)

    @cached_property
    def z(self) -> np.ndarray | None:
        """Predicted PCA scores."""
        if self.obs.pca is None:
            self.reasons.append("no PCA space")
            return None
        return self.obs.pca.transform(self.pred)

    @cached_property
    def pca_mean_error(self) -> float:
        """MSE of the mean PCA scores."""
        return math.nan if self.z is None else mean_errors(self.z.mean(axis=0), self.obs.z.mean(axis=0))["mse"]

    @cached_property
    def set_distances(self) -> dict[str, float]:
        """W1, W2², energy, MMD² in PCA space."""
        if self.z is None:
            return dict.fromkeys(("w1", "w2_sq", "energy", "mmd"), math.nan)
        if len(self.pred) < 2 or len(self.obs.cells) < 2:
            self.reasons.append("MMD needs at least 2 cells per set")
        return set_distances(self.z, self.obs.z)

    @cached_property
    def delta_errors(self) -> dict[str, float]:
        """cell-eval's ``mae_delta`` / ``mse_delta``."""
        return celleval.delta_errors(self.delta, self.obs.delta)

    @cached_property
    def de(self) -> celleval.DETable | None:
        """cell-eval's DE table of the predicted cells (against the same controls)."""
        if self.obs.de is None:
            self.reasons.append("cell-eval DE metrics need the control cells")
            return None
        return (
            self.given_de if self.given_de is not None else celleval.de_tables([self.pred], self.obs.control.ranked)[0]
        )

    def de_overlap(self, k: int | None, metric: str) -> float:
        """cell-eval's ``overlap_at_k`` / ``precision_at_k``."""
        return math.nan if self.de is None else celleval.de_overlap(self.obs.de, self.de, k, metric)

    @cached_property
    def de_agreement(self) -> tuple[float, float]:
        """cell-eval's ``de_spearman_lfc_sig`` and ``de_direction_match``."""
        return (math.nan, math.nan) if self.de is None else celleval.de_agreement(self.obs.de, self.de)

    @cached_property
    def edistance(self) -> float:
        """Energy distance of the predicted cells to the controls (cell-eval's)."""
        return self.obs.edistances([self.pred])[0]

    def row(self) -> dict[str, object]:
        """Every group-scope metric, the counts and the reasons for NaNs."""
        out: dict[str, object] = {m.column: float(m.func(self)) for m in GROUP_METRICS}
        out.update(
            {
                "n_pred": len(self.pred),
                "n_real": len(self.obs.cells),
                "n_deg": self.obs.degs.n,
                "reason": "; ".join(dict.fromkeys(self.reasons)),
            }
        )
        return out


def _check_shape(model: str, pred: np.ndarray, n_genes: int) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.ndim != 2 or pred.shape[1] != n_genes or pred.shape[0] == 0:
        raise PtragError(f"model {model!r}: predicted cells have shape {pred.shape}, expected [cells, {n_genes}].")
    return pred


def group_metrics(
    preds: Mapping[str, np.ndarray],
    real: np.ndarray,
    control: ControlSet | GroupStats,
    pca: PCASpace | None,
    options: MetricOptions = MetricOptions(),
    degs: DEGResult | None = None,
) -> dict[str, dict[str, object]]:
    """Every group-scope metric of one (cell type, perturbation) group, for every model.

    The DEGs, the observed means, PCA scores and DE table are computed once and shared by all
    models. cell-eval's metrics need the control cells (a :class:`ControlSet`); with only
    their :class:`GroupStats` they are NaN, with a reason.

    Parameters
    ----------
    preds
        ``{model: [n_pred, n_genes] predicted cells}``.
    real
        ``[n_real, n_genes]`` observed perturbed cells of the group.
    control
        The observed control cells of the group's cell type (or their statistics).
    pca
        The run's PCA space; ``None`` leaves the PCA metrics NaN.
    options
        DEG options.
    degs
        Precomputed DEGs (computed here when ``None``).

    Returns
    -------
    dict
        ``{model: {metric: value, "n_pred", "n_real", "n_deg", "reason"}}``.
    """
    obs = ObservedGroup(real, ControlSet.coerce(control), pca, options, degs)
    n_genes = obs.cells.shape[1]
    return {mo: GroupContext(_check_shape(mo, p, n_genes), obs).row() for mo, p in preds.items()}


@dataclass
class CellTypeContext:
    """All groups of one model in one cell type: what cell-type-scope functions read."""

    perturbations: list[str]
    genes: list[str]
    real_delta: np.ndarray
    pred_delta: np.ndarray
    real_edistance: np.ndarray
    pred_edistance: np.ndarray

    def discrimination(self, distance: str) -> np.ndarray:
        """cell-eval's PDS of every group."""
        return celleval.discrimination_scores(
            self.real_delta, self.pred_delta, self.perturbations, self.genes, distance
        )

    def pearson_edistance(self) -> np.ndarray:
        """cell-eval's ``pearson_edistance``, the same value on every group."""
        r = celleval.pearson_or_nan(self.real_edistance, self.pred_edistance)
        return np.full(len(self.perturbations), r)


class CellTypeScorer:
    """Score the groups of one cell type one at a time, then the cell-type-scope metrics.

    Parameters
    ----------
    cell_type
        Its name (the rows' ``cell_type``).
    control
        The observed control cells (:meth:`ControlSet.of`).
    genes
        Gene names of the columns (PDS leaves out the gene named like the perturbation).
    pca
        The run's PCA space.
    options
        DEG options.
    """

    def __init__(
        self,
        cell_type: str,
        control: ControlSet,
        genes: Sequence[str],
        pca: PCASpace | None,
        options: MetricOptions = MetricOptions(),
    ) -> None:
        self.cell_type, self.control, self.genes, self.pca, self.options = cell_type, control, list(genes), pca, options
        self._rows: dict[str, list[dict]] = {}
        self._summ: dict[str, list[tuple]] = {}

    def add(self, perturbation: str, real: np.ndarray, preds: Mapping[str, np.ndarray]) -> None:
        """Score one group for every model (keeps only the rows and per-group summaries).

        Parameters
        ----------
        perturbation
            The group's perturbation.
        real
            Its observed cells.
        preds
            ``{model: predicted cells}``.
        """
        obs = ObservedGroup(real, self.control, self.pca, self.options)
        models = list(preds)
        cells = [_check_shape(mo, preds[mo], obs.cells.shape[1]) for mo in models]
        real_e, *pred_e = obs.edistances([obs.cells, *cells])
        des = [None] * len(cells)
        if self.control.ranked is not None:  # every set's DE in one pass over the sorted controls
            obs.de, *des = celleval.de_tables([obs.cells, *cells], self.control.ranked)
        for mo, p, e, de in zip(models, cells, pred_e, des, strict=True):
            ctx = GroupContext(p, obs, given_de=de)
            row = {"model": mo, "cell_type": self.cell_type, "perturbation": perturbation, **ctx.row()}
            self._rows.setdefault(mo, []).append(row)
            self._summ.setdefault(mo, []).append((perturbation, obs.delta, ctx.delta, real_e, e))

    def rows(self) -> list[dict]:
        """All rows, with the cell-type-scope metrics of each model's groups filled in."""
        out = []
        for mo, rows in self._rows.items():
            perts, real_d, pred_d, real_e, pred_e = zip(*self._summ[mo], strict=True)
            ctx = CellTypeContext(
                list(perts),
                self.genes,
                np.stack(real_d),
                np.stack(pred_d),
                np.asarray(real_e, float),
                np.asarray(pred_e, float),
            )
            for m in CELL_TYPE_METRICS:
                values = m.func(ctx) if self.control.cells is not None else np.full(len(rows), math.nan)
                for row, v in zip(rows, values, strict=True):
                    row[m.column] = float(v)
            out.extend(rows)
        return out


def score_cell_type(
    cell_type: str,
    control: ControlSet,
    genes: Sequence[str],
    pca: PCASpace | None,
    groups: Iterable[tuple[str, np.ndarray, Mapping[str, np.ndarray]]],
    options: MetricOptions = MetricOptions(),
) -> list[dict]:
    """Every metric of every (model, group) of one cell type.

    Parameters
    ----------
    cell_type
        Its name.
    control
        Its observed control cells (:meth:`ControlSet.of`).
    genes
        Gene names.
    pca
        The run's PCA space.
    groups
        ``(perturbation, observed cells, {model: predicted cells})`` per group (may be a
        generator: groups are read one at a time).
    options
        DEG options.

    Returns
    -------
    list of dict
        One row per (model, group): ``model, cell_type, perturbation``, the metrics and counts.
    """
    scorer = CellTypeScorer(cell_type, control, genes, pca, options)
    for pert, real, preds in groups:
        scorer.add(pert, real, preds)
    return scorer.rows()
