"""Per-group metrics: a predicted cell set against the observed one (ptrag's definitions).

Every number is computed for one (cell type, perturbation) group and one model, from

* ``pred`` — the predicted cells of the group,
* ``real`` — the observed perturbed cells of the group,
* the observed control cells of the same cell type (only their mean, variance and count).

Definitions (all written out with formulas in ``docs/metrics.md``):

* DEGs: Welch t-test per gene, observed perturbed vs observed control cells, ``p < 0.05``
  (optionally BH-adjusted, optionally with a minimum ``|log fold change|``, where the log fold
  change is the difference of mean log-normalised expression).
* ``pearson_deg`` / ``spearman_deg``: correlation over the DEGs between the predicted change
  ``mean(pred) - mean(ctrl)`` and the observed change ``mean(real) - mean(ctrl)``; NaN with a
  recorded reason when there are fewer than 3 DEGs.
* ``pearson_delta``: the same Pearson correlation over all genes (cell-eval's ``pearson_delta``).
* ``mse`` / ``rmse`` / ``mae``: errors between the *mean* profiles, over all genes.
* ``mse_pca50``: squared error between the mean profiles in the run's PCA-50 space, averaged over
  components.
* In the PCA-50 space, joint (not per-component) distances between the two cell sets:
  ``w1`` (exact optimal transport, Euclidean cost), ``w2_sq`` (exact OT on the squared Euclidean
  cost, i.e. W2 squared), ``energy`` (V-statistic), ``mmd`` (squared MMD, RBF kernel,
  median-heuristic bandwidth on the pooled sample, unbiased estimator).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from ptrag.errors import PtragError, check_choice

# the registry lives in ptrag.eval.registry; re-exported here for existing imports
from ptrag.eval.registry import (  # noqa: F401
    CELL_EVAL_COLUMNS,
    COUNT_COLUMNS,
    ID_COLUMNS,
    METRICS,
    OVERLAP_KS,
    MetricInfo,
    metric_columns,
    metric_info,
)

# ------------------------------------------------------------------------- options


@dataclass(frozen=True)
class MetricOptions:
    """Options of ptrag's metric definitions.

    Parameters
    ----------
    deg_pval
        DEG threshold: a gene is a DEG when its (adjusted) Welch p-value is below this.
    deg_correction
        ``"none"`` (raw p-values, as in the paper) or ``"bh"`` (Benjamini–Hochberg adjusted
        over the genes of the group).
    deg_min_lfc
        Also require ``|mean(real) - mean(ctrl)| >= deg_min_lfc`` (log-normalised units).
    min_degs
        Fewer DEGs than this give NaN DEG correlations (with a reason).
    cell_eval
        Also compute cell-eval's metrics (they need every control cell, not only their
        statistics; ``--no-cell-eval`` skips them).
    """

    deg_pval: float = 0.05
    deg_correction: Literal["none", "bh"] = "none"
    deg_min_lfc: float = 0.0
    min_degs: int = 3
    cell_eval: bool = True

    def __post_init__(self) -> None:
        check_choice("--deg-correction", self.deg_correction, ("none", "bh"))
        if not 0 < self.deg_pval <= 1:
            raise PtragError(f"--deg-pval must be in (0, 1], got {self.deg_pval}.")
        if self.deg_min_lfc < 0:
            raise PtragError(f"--deg-min-lfc must be >= 0, got {self.deg_min_lfc}.")
        if self.min_degs < 2:
            raise PtragError(f"min_degs must be at least 2 (a correlation needs 2 points), got {self.min_degs}.")


# --------------------------------------------------------------------------- DEGs


@dataclass(frozen=True)
class GroupStats:
    """Mean, variance (ddof = 1) and count of a set of cells, per gene.

    Attributes
    ----------
    mean
        ``[n_genes]`` float64.
    var
        ``[n_genes]`` float64 sample variance (NaN when ``n < 2``).
    n
        Number of cells.
    """

    mean: np.ndarray
    var: np.ndarray
    n: int

    @classmethod
    def of(cls, X: np.ndarray) -> GroupStats:
        """Statistics of the rows of ``X``.

        Parameters
        ----------
        X
            ``[n_cells, n_genes]``.

        Returns
        -------
        GroupStats
        """
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        if n == 0:
            raise PtragError("cannot compute statistics of an empty cell set.")
        var = X.var(axis=0, ddof=1) if n > 1 else np.full(X.shape[1], np.nan)
        return cls(X.mean(axis=0), var, n)

    @classmethod
    def of_chunks(cls, chunks) -> GroupStats:
        """Statistics over row blocks (for control sets too large to hold twice).

        Parameters
        ----------
        chunks
            Iterable of ``[n_i, n_genes]`` arrays.

        Returns
        -------
        GroupStats
        """
        n, s, ss = 0, None, None
        shift = None
        for block in chunks:
            block = np.asarray(block, dtype=np.float64)
            if block.shape[0] == 0:
                continue
            if shift is None:  # shifted sums keep the variance accurate
                shift = block[0].copy()
                s = np.zeros_like(shift)
                ss = np.zeros_like(shift)
            d = block - shift
            s += d.sum(axis=0)
            ss += (d * d).sum(axis=0)
            n += block.shape[0]
        if n == 0:
            raise PtragError("cannot compute statistics of an empty cell set.")
        mean = shift + s / n
        var = (ss - s * s / n) / (n - 1) if n > 1 else np.full_like(mean, np.nan)
        return cls(mean, np.maximum(var, 0.0), n)


@dataclass(frozen=True)
class DEGResult:
    """Differentially expressed genes of one group.

    Attributes
    ----------
    mask
        ``[n_genes]`` bool, the DEGs.
    pvalues
        ``[n_genes]`` Welch p-values (adjusted when BH was asked for; NaN where undefined).
    lfc
        ``[n_genes]`` ``mean(perturbed) - mean(control)`` of the log-normalised expression.
    """

    mask: np.ndarray
    pvalues: np.ndarray
    lfc: np.ndarray

    @property
    def n(self) -> int:
        """Number of DEGs."""
        return int(self.mask.sum())


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (``scipy.stats.false_discovery_control``).

    NaN entries are left out of the family and stay NaN.

    Parameters
    ----------
    pvalues
        Raw p-values.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, same shape.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


def welch_degs(
    perturbed: np.ndarray | GroupStats,
    control: np.ndarray | GroupStats,
    options: MetricOptions = MetricOptions(),
) -> DEGResult:
    """DEGs of a perturbation: per-gene Welch t-test, perturbed vs control cells.

    Vectorised over genes (``scipy.stats.ttest_ind_from_stats`` with ``equal_var=False``, which
    is ``scipy.stats.ttest_ind(..., equal_var=False, axis=0)`` computed from the group means,
    variances and sizes). Genes whose p-value is undefined (no variance in either group, or a
    group with fewer than 2 cells) are not DEGs.

    Parameters
    ----------
    perturbed
        Observed perturbed cells ``[n, n_genes]`` (or their :class:`GroupStats`).
    control
        Observed control cells of the same cell type ``[m, n_genes]`` (or their stats).
    options
        Threshold, correction and minimum fold change.

    Returns
    -------
    DEGResult
    """
    a = perturbed if isinstance(perturbed, GroupStats) else GroupStats.of(perturbed)
    b = control if isinstance(control, GroupStats) else GroupStats.of(control)
    lfc = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        p = np.full(lfc.shape, np.nan)
    else:
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _, p = stats.ttest_ind_from_stats(a.mean, np.sqrt(a.var), a.n, b.mean, np.sqrt(b.var), b.n, equal_var=False)
        p = np.asarray(p, dtype=np.float64)
    if options.deg_correction == "bh":
        p = benjamini_hochberg(p)
    mask = np.isfinite(p) & (p < options.deg_pval)
    if options.deg_min_lfc > 0:
        mask &= np.abs(lfc) >= options.deg_min_lfc
    return DEGResult(mask, p, lfc)


# ------------------------------------------------------------------ correlations


def delta_correlations(
    pred_delta: np.ndarray,
    real_delta: np.ndarray,
    mask: np.ndarray | None = None,
    min_genes: int = 3,
) -> tuple[float, float, str]:
    """Pearson and Spearman correlation between predicted and observed changes.

    Parameters
    ----------
    pred_delta
        ``mean(pred) - mean(ctrl)`` per gene.
    real_delta
        ``mean(real) - mean(ctrl)`` per gene.
    mask
        Genes to use (the DEGs); all genes when ``None``.
    min_genes
        Fewer selected genes than this give NaN.

    Returns
    -------
    tuple
        ``(pearson, spearman, reason)``; ``reason`` is ``""`` when both are defined.
    """
    x = np.asarray(pred_delta, dtype=np.float64)
    y = np.asarray(real_delta, dtype=np.float64)
    if mask is not None:
        x, y = x[mask], y[mask]
    if x.size < min_genes:
        return math.nan, math.nan, f"fewer than {min_genes} DEGs ({x.size})"
    if np.ptp(x) == 0:
        return math.nan, math.nan, "predicted change is constant over the genes"
    if np.ptp(y) == 0:
        return math.nan, math.nan, "observed change is constant over the genes"
    return _pearson(x, y), _pearson(stats.rankdata(x), stats.rankdata(y)), ""


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two non-constant vectors (Spearman's on their average ranks,
    as ``scipy.stats.spearmanr``); centred dot products, without scipy's per-call checks."""
    a = x - x.mean()
    b = y - y.mean()
    return float(np.clip(a @ b / math.sqrt((a @ a) * (b @ b)), -1.0, 1.0))


# -------------------------------------------------------------- mean-profile errors


def mean_errors(pred_mean: np.ndarray, real_mean: np.ndarray) -> dict[str, float]:
    """MSE, RMSE and MAE between two mean profiles (averaged over features).

    Parameters
    ----------
    pred_mean, real_mean
        ``[n_features]`` mean expression (or mean PCA scores).

    Returns
    -------
    dict
        ``{"mse", "rmse", "mae"}``.
    """
    d = np.asarray(pred_mean, dtype=np.float64) - np.asarray(real_mean, dtype=np.float64)
    mse = float(np.mean(d * d))
    return {"mse": mse, "rmse": math.sqrt(mse), "mae": float(np.mean(np.abs(d)))}


# set distances live in ptrag.eval.distances, one group's scoring in ptrag.eval.scoring;
# re-exported here for existing imports
from ptrag.eval.distances import (  # noqa: E402,F401
    energy_distance,
    mmd_rbf,
    set_distances,
    wasserstein_1,
    wasserstein_2_squared,
)

# ------------------------------------------------------------- retrieval (synthetic)
# retrieval scores live with the retrieval analysis; re-exported for existing imports
from ptrag.eval.retrieval import retrieval_precision_recall, retrieval_summary  # noqa: E402,F401


def __getattr__(name: str):
    """``group_metrics`` and the scorers moved to :mod:`ptrag.eval.scoring` (imported lazily:
    scoring builds on this module)."""
    if name in ("group_metrics", "ControlSet", "CellTypeScorer"):
        from ptrag.eval import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
