"""The observed side of scoring, computed once and shared by every model's scoring:

* :class:`ControlSet` — the observed control cells of a cell type: their statistics (ptrag's
  metrics), and for cell-eval's metrics the cells sorted per gene and their mean
  self-distance, all computed once per cell type.
* :class:`ObservedGroup` — one (cell type, perturbation) group's observed cells and what every
  model's scoring shares (means, Welch DEGs, PCA scores, cell-eval's DE table).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ptrag.data.pca import PCASpace
from ptrag.eval import celleval, distances
from ptrag.eval.metrics import DEGResult, GroupStats, MetricOptions, welch_degs


@dataclass
class ControlSet:
    """The observed control cells of one cell type.

    Attributes
    ----------
    stats
        Mean, variance and count per gene.
    ranked
        The cells sorted per gene (cell-eval's DE); ``None`` when only statistics are known.
    cells
        The cells minus their mean (float32), for cell-eval's energy distances; ``None``
        likewise.
    self_distance
        Mean Euclidean distance over all pairs of control cells.
    """

    stats: GroupStats
    ranked: celleval.RankedReference | None = None
    cells: np.ndarray | None = None
    self_distance: float = math.nan

    @classmethod
    def of(cls, X: np.ndarray, cell_eval: bool = True) -> ControlSet:
        """Everything scoring needs from the control cells.

        Parameters
        ----------
        X
            ``[n_cells, n_genes]`` control cells.
        cell_eval
            Also prepare cell-eval's metrics (sorted cells, self-distance).

        Returns
        -------
        ControlSet
        """
        stats = GroupStats.of(X)
        if not cell_eval:
            return cls(stats)
        centered = (np.asarray(X, dtype=np.float64) - stats.mean).astype(np.float32)
        return cls(stats, celleval.RankedReference.of(X), centered, distances.mean_pairwise_distance(centered))

    @classmethod
    def coerce(cls, control: ControlSet | GroupStats) -> ControlSet:
        """A :class:`ControlSet` from either form (statistics only: no cell-eval metrics)."""
        return control if isinstance(control, ControlSet) else cls(control)


@dataclass
class ObservedGroup:
    """The observed cells of one group and what all models' scoring shares."""

    cells: np.ndarray
    control: ControlSet
    pca: PCASpace | None
    options: MetricOptions = MetricOptions()
    degs: DEGResult | None = None

    def __post_init__(self) -> None:
        self.cells = np.asarray(self.cells)
        if self.degs is None:
            self.degs = welch_degs(GroupStats.of(self.cells), self.control.stats, self.options)

    @cached_property
    def mean(self) -> np.ndarray:
        """Mean profile."""
        return self.cells.astype(np.float64).mean(axis=0)

    @cached_property
    def delta(self) -> np.ndarray:
        """Observed change from control."""
        return self.mean - self.control.stats.mean

    @cached_property
    def z(self) -> np.ndarray | None:
        """PCA scores (``None`` without a PCA space)."""
        return None if self.pca is None else self.pca.transform(self.cells)

    @cached_property
    def de(self) -> celleval.DETable | None:
        """cell-eval's DE table (``None`` without the control cells)."""
        return None if self.control.ranked is None else celleval.de_tables([self.cells], self.control.ranked)[0]

    @cached_property
    def edistance(self) -> float:
        """Energy distance of the observed cells to the controls (cell-eval's, all genes)."""
        return self.edistances([self.cells])[0]

    def edistances(self, sets: Sequence[np.ndarray]) -> list[float]:
        """Energy distances of several cell sets to the controls, their cross terms from one
        matrix product (NaN without the control cells)."""
        c = self.control
        if c.cells is None:
            return [math.nan] * len(sets)
        stacked = np.concatenate([np.asarray(x, dtype=np.float32) for x in sets]) - c.stats.mean.astype(np.float32)
        rows = distances.row_mean_distances(stacked, c.cells)
        bounds = np.cumsum([0] + [len(x) for x in sets])
        return [
            distances.edistance(stacked[a:b], c.cells, c.self_distance, cross=float(rows[a:b].mean()))
            for a, b in itertools.pairwise(bounds)
        ]
