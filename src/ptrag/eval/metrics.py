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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats
from scipy.spatial.distance import cdist

from ptrag.errors import PtragError, check_choice
from ptrag.eval.pca import PCASpace

# ----------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricInfo:
    """How a metric column is shown in tables.

    Attributes
    ----------
    column
        Column name in ``metrics.parquet``.
    label
        Display name.
    higher_is_better
        Direction (↑ when true, ↓ otherwise).
    group
        Row group of the comparison table.
    """

    column: str
    label: str
    higher_is_better: bool
    group: str

    @property
    def arrow(self) -> str:
        """``↑`` or ``↓``."""
        return "↑" if self.higher_is_better else "↓"


_CORR = "Correlation on DEGs"
_ERR = "Expression error (on means)"
_DIST = "Distribution distance (PCA-50)"

#: Metrics of each evaluation mode, in table order.
METRICS: dict[str, tuple[MetricInfo, ...]] = {
    "ptrag": (
        MetricInfo("pearson_deg", "Pearson DEG", True, _CORR),
        MetricInfo("spearman_deg", "Spearman DEG", True, _CORR),
        MetricInfo("pearson_delta", "Pearson Δ (all genes)", True, _CORR),
        MetricInfo("mse", "MSE", False, _ERR),
        MetricInfo("rmse", "RMSE", False, _ERR),
        MetricInfo("mae", "MAE", False, _ERR),
        MetricInfo("mse_pca50", "MSE PCA50", False, _ERR),
        MetricInfo("w1", "W1", False, _DIST),
        MetricInfo("w2_sq", "W2²", False, _DIST),
        MetricInfo("energy", "Energy", False, _DIST),
        MetricInfo("mmd", "MMD²", False, _DIST),
    ),
    "gge": (
        MetricInfo("pearson_deg", "Pearson DEG", True, _CORR),
        MetricInfo("spearman_deg", "Spearman DEG", True, _CORR),
        MetricInfo("mse", "MSE", False, _ERR),
        MetricInfo("rmse", "RMSE", False, _ERR),
        MetricInfo("mae", "MAE", False, _ERR),
        MetricInfo("mse_pca50", "MSE PCA50", False, _ERR),
        MetricInfo("w1", "W1", False, "Per-PC distance, averaged (gge)"),
        MetricInfo("w2", "W2", False, "Per-PC distance, averaged (gge)"),
        MetricInfo("energy", "Energy", False, "Per-PC distance, averaged (gge)"),
        MetricInfo("mmd", "MMD", False, "Per-PC distance, averaged (gge)"),
    ),
}

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
    """

    deg_pval: float = 0.05
    deg_correction: Literal["none", "bh"] = "none"
    deg_min_lfc: float = 0.0
    min_degs: int = 3

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
    def of(cls, X: np.ndarray) -> "GroupStats":
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
    def of_chunks(cls, chunks) -> "GroupStats":
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
            _, p = stats.ttest_ind_from_stats(
                a.mean, np.sqrt(a.var), a.n, b.mean, np.sqrt(b.var), b.n, equal_var=False
            )
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
    r = float(stats.pearsonr(x, y)[0])
    rho = float(stats.spearmanr(x, y)[0])
    return r, rho, ""


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


# ------------------------------------------------------------ set-to-set distances


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise PtragError(f"a cell set must be a non-empty [cells, features] array, got shape {x.shape}.")
    return x


def _emd(cost: np.ndarray) -> float:
    import ot

    n, m = cost.shape
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    return float(ot.emd2(a, b, np.ascontiguousarray(cost), numItermax=max(100_000, 50 * n * m)))


def wasserstein_1(x: np.ndarray, y: np.ndarray) -> float:
    """Exact W1 between two point clouds with uniform weights (Euclidean cost, ``ot.emd2``).

    Parameters
    ----------
    x, y
        ``[n, d]`` and ``[m, d]`` samples (1-D arrays are one feature).

    Returns
    -------
    float
        ``min_P sum_ij P_ij |x_i - y_j|``.
    """
    x, y = _as_2d(x), _as_2d(y)
    return _emd(cdist(x, y, "euclidean"))


def wasserstein_2_squared(x: np.ndarray, y: np.ndarray) -> float:
    """Exact squared W2 (optimal transport on the squared Euclidean cost, ``ot.emd2``).

    Parameters
    ----------
    x, y
        ``[n, d]`` and ``[m, d]`` samples.

    Returns
    -------
    float
        ``W2² = min_P sum_ij P_ij |x_i - y_j|²`` (not its square root).
    """
    x, y = _as_2d(x), _as_2d(y)
    return _emd(cdist(x, y, "sqeuclidean"))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance, V-statistic: ``2 E|X-Y| - E|X-X'| - E|Y-Y'|``.

    All expectations are plain means over all pairs, including the zero self-pairs in the
    within-set terms (V-statistic). The V-statistic is never negative, is exactly 0 for
    identical sets, and equals twice ``geomloss.SamplesLoss("energy")`` (STATE's training loss).

    Parameters
    ----------
    x, y
        ``[n, d]`` and ``[m, d]`` samples.

    Returns
    -------
    float
    """
    x, y = _as_2d(x), _as_2d(y)
    return float(2 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean())


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Squared MMD with an RBF kernel, unbiased estimator.

    ``k(a, b) = exp(-|a-b|² / (2 σ²))``; ``σ`` is the median of the pairwise Euclidean
    distances of the pooled sample ``[x; y]`` (distinct pairs) unless given (1 when that median
    is 0). Unbiased: the within-set means leave out the diagonal, so the estimate may be
    slightly negative when the sets come from the same distribution.

    Parameters
    ----------
    x, y
        ``[n, d]`` and ``[m, d]`` samples with ``n, m >= 2``.
    bandwidth
        ``σ``; median heuristic when ``None``.

    Returns
    -------
    float
        ``MMD²_u`` (NaN when a set has fewer than 2 cells).
    """
    x, y = _as_2d(x), _as_2d(y)
    return _distances_from_pooled(x, y, bandwidth, want=("mmd",))["mmd"]


def set_distances(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """W1, W2², energy distance and MMD² between two sets, sharing one distance matrix.

    Parameters
    ----------
    x, y
        ``[n, d]`` and ``[m, d]`` samples (predicted and observed cells in PCA space).

    Returns
    -------
    dict
        ``{"w1", "w2_sq", "energy", "mmd"}``, each as in its own function.
    """
    x, y = _as_2d(x), _as_2d(y)
    return _distances_from_pooled(x, y, None, want=("w1", "w2_sq", "energy", "mmd"))


def _distances_from_pooled(x, y, bandwidth, want) -> dict[str, float]:
    n, m = len(x), len(y)
    z = np.concatenate([x, y])
    d2 = cdist(z, z, "sqeuclidean")
    d = np.sqrt(d2)
    out: dict[str, float] = {}
    if "w1" in want:
        out["w1"] = _emd(d[:n, n:])
    if "w2_sq" in want:
        out["w2_sq"] = _emd(d2[:n, n:])
    if "energy" in want:
        out["energy"] = float(2 * d[:n, n:].mean() - d[:n, :n].mean() - d[n:, n:].mean())
    if "mmd" in want:
        if n < 2 or m < 2:
            out["mmd"] = math.nan
        else:
            if bandwidth is None:
                iu = np.triu_indices(n + m, k=1)
                sigma = float(np.median(d[iu]))
                if sigma == 0:
                    sigma = 1.0
            else:
                sigma = float(bandwidth)
            k = np.exp(-d2 / (2 * sigma * sigma))
            kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
            out["mmd"] = float(
                (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                - 2 * kxy.mean()
            )
    return out


# --------------------------------------------------------------- one group, all models


def group_metrics(
    preds: Mapping[str, np.ndarray],
    real: np.ndarray,
    control: GroupStats,
    pca: PCASpace | None,
    options: MetricOptions = MetricOptions(),
    degs: DEGResult | None = None,
) -> dict[str, dict[str, object]]:
    """All ptrag metrics of one (cell type, perturbation) group, for every model.

    The DEGs, the observed means and the observed PCA scores are computed once and shared by
    all models; the predicted cells of all models are projected in one batch.

    Parameters
    ----------
    preds
        ``{model: [n_pred, n_genes] predicted cells}``.
    real
        ``[n_real, n_genes]`` observed perturbed cells of the group.
    control
        Statistics of the observed control cells of the group's cell type.
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
    real = np.asarray(real)
    if degs is None:
        degs = welch_degs(GroupStats.of(real), control, options)
    real_mean = real.astype(np.float64).mean(axis=0)
    real_delta = real_mean - control.mean
    models = list(preds)
    pred_arrays = [np.asarray(preds[mo]) for mo in models]
    for mo, p in zip(models, pred_arrays):
        if p.ndim != 2 or p.shape[1] != real.shape[1] or p.shape[0] == 0:
            raise PtragError(
                f"model {mo!r}: predicted cells have shape {p.shape}, expected [cells, {real.shape[1]}]."
            )
    if pca is not None:
        real_z = pca.transform(real)
        pred_z_all = pca.transform(np.concatenate(pred_arrays))
        bounds = np.cumsum([0] + [len(p) for p in pred_arrays])
    out: dict[str, dict[str, object]] = {}
    for i, (mo, p) in enumerate(zip(models, pred_arrays)):
        reasons = []
        pred_mean = p.astype(np.float64).mean(axis=0)
        pred_delta = pred_mean - control.mean
        r, rho, why = delta_correlations(pred_delta, real_delta, degs.mask, options.min_degs)
        if why:
            reasons.append(why)
        r_all, _, why_all = delta_correlations(pred_delta, real_delta, None, 2)
        if why_all and why_all != why:
            reasons.append(f"pearson_delta: {why_all}")
        row: dict[str, object] = {"pearson_deg": r, "spearman_deg": rho, "pearson_delta": r_all}
        row.update(mean_errors(pred_mean, real_mean))
        if pca is not None:
            pz = pred_z_all[bounds[i] : bounds[i + 1]]
            row["mse_pca50"] = mean_errors(pz.mean(axis=0), real_z.mean(axis=0))["mse"]
            row.update(set_distances(pz, real_z))
            if len(p) < 2 or len(real) < 2:
                reasons.append("MMD needs at least 2 cells per set")
        else:
            row.update({k: math.nan for k in ("mse_pca50", "w1", "w2_sq", "energy", "mmd")})
            reasons.append("no PCA space")
        row.update({"n_pred": len(p), "n_real": len(real), "n_deg": degs.n, "reason": "; ".join(reasons)})
        out[mo] = row
    return out


# ------------------------------------------------------------- retrieval (synthetic)


# retrieval scores live with the retrieval analysis; re-exported for existing imports
from ptrag.eval.retrieval import retrieval_precision_recall, retrieval_summary  # noqa: E402,F401
