"""Compatibility mode: gge-eval 1.0.1's metric definitions, reimplemented.

The paper's numbers were produced with the gge-eval evaluator, whose definitions differ from
ptrag's (see ``docs/metrics.md``). This module restates them so that a user can compare a
ptrag evaluation with published numbers:

* Conditions are ``"<perturbation>####<cell type>"`` keys, visited in sorted order. Every
  space transformation (PCA, DEG selection) is fit once, on the **first** condition's observed
  cells, and reused for all later conditions.
* PCA: scikit-learn PCA with ``min(50, n_cells - 1, n_genes - 1)`` components, fit on the
  first condition's observed cells.
* DEG space: a per-gene Welch t-test of the first condition's observed cells against **all**
  observed control cells (every cell type pooled); a DEG has ``p <= deg_pval`` (NaN p counts as
  1) and ``|log2(mean+1) - log2(mean_ctrl+1)| >= deg_lfc``; when no gene passes, all genes.
* Pearson / Spearman: when the predicted and observed sets have the same number of cells,
  per-gene correlations between the *index-paired* cells of the two (unordered) sets, averaged
  over the DEGs (NaN genes skipped); otherwise one correlation between the two mean profiles
  restricted to the DEGs (raw means, not changes from control).
* MSE: mean over genes of the squared difference of the mean profiles. gge-eval 1.0.1 has no
  RMSE / MAE; this mode reports ``sqrt(MSE)`` and the mean absolute difference of the means.
* MSE PCA50, W1, W2, energy, MMD: computed **one principal component at a time** (1-D) and
  averaged over the components:

  - W1: 1-D Wasserstein-1 (``scipy.stats.wasserstein_distance``);
  - W2: ``geomloss.SamplesLoss("sinkhorn", p=2, blur=0.01)`` on float32, i.e. a debiased
    Sinkhorn divergence with cost ``|x-y|²/2`` (about ``W2²/2``, not W2);
  - energy: ``geomloss.SamplesLoss("energy")`` = half the 1-D energy distance (V-statistic);
  - MMD: unbiased squared MMD, RBF kernel, bandwidth = median of the positive pooled absolute
    differences (1 when that median is 0), clipped at 0.

None of gge-eval's code is used; agreement with the package is tested in
``tests/test_metrics.py`` (skipped when ``gge`` is not importable).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ptrag.errors import PtragError
from ptrag.eval.gge_distances import (
    energy_per_feature,
    mmd_per_feature,
    sinkhorn_w2_per_feature,
    wasserstein1_per_feature,
)
from ptrag.eval.metrics import GroupStats


@dataclass(frozen=True)
class GGEOptions:
    """Settings of the gge compatibility mode.

    Parameters
    ----------
    deg_lfc
        Minimum ``|log2 fold change|`` of a DEG (on ``log2(mean + 1)``). The default is the
        value in the authors' evaluation script; gge-eval's own default is 1.0.
    deg_pval
        Maximum Welch p-value of a DEG (authors' script: 0.1; gge-eval default: 0.05).
    n_components
        Requested number of principal components.
    """

    deg_lfc: float = 0.05
    deg_pval: float = 0.1
    n_components: int = 50

    def __post_init__(self) -> None:
        if self.deg_lfc < 0:
            raise PtragError(f"gge deg_lfc must be >= 0, got {self.deg_lfc}.")
        if not 0 < self.deg_pval <= 1:
            raise PtragError(f"gge deg_pval must be in (0, 1], got {self.deg_pval}.")
        if self.n_components < 1:
            raise PtragError(f"gge n_components must be >= 1, got {self.n_components}.")


def condition_key(perturbation: str, cell_type: str) -> str:
    """gge-eval's key of a condition (condition columns: perturbation, cell type).

    Parameters
    ----------
    perturbation, cell_type
        The group.

    Returns
    -------
    str
        ``"<perturbation>####<cell type>"``.
    """
    return f"{perturbation}####{cell_type}"


def first_condition(keys: Sequence[str]) -> str:
    """The condition on which gge-eval fits its PCA and DEG selection: the smallest key.

    Parameters
    ----------
    keys
        Keys of all conditions present (with at least 2 cells) in both files.

    Returns
    -------
    str
    """
    if not keys:
        raise PtragError("gge mode: no condition is present in both the predictions and the observed data.")
    return sorted(keys)[0]


@dataclass
class GGEReference:
    """The transformations gge-eval fits on its first condition.

    Attributes
    ----------
    pca_mean, pca_components
        The PCA (centring vector and ``[k, n_genes]`` components).
    deg_mask
        ``[n_genes]`` the DEG selection shared by all conditions.
    condition
        Key of the condition they were fit on.
    """

    pca_mean: np.ndarray
    pca_components: np.ndarray
    deg_mask: np.ndarray
    condition: str = ""

    @classmethod
    def fit(
        cls,
        first_real: np.ndarray,
        controls: np.ndarray | GroupStats,
        options: GGEOptions = GGEOptions(),
        condition: str = "",
    ) -> GGEReference:
        """Fit the PCA and the DEG selection on the first condition.

        Parameters
        ----------
        first_real
            Observed cells of the first condition ``[n, n_genes]``.
        controls
            All observed control cells (all cell types) ``[m, n_genes]``, or their
            :class:`~ptrag.eval.metrics.GroupStats`.
        options
            DEG thresholds and number of components.
        condition
            The first condition's key (kept for the record).

        Returns
        -------
        GGEReference
        """
        from sklearn.decomposition import PCA

        x = np.asarray(first_real, dtype=np.float64)
        n, g = x.shape
        k = min(options.n_components, n - 1, g - 1)
        if k < 1:
            raise PtragError(f"gge mode: the first condition {condition!r} has too few cells ({n}) for a PCA.")
        pca = PCA(n_components=k, svd_solver="full").fit(x)
        return cls(pca.mean_, pca.components_, gge_deg_mask(x, controls, options), condition)

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Project cells on the first condition's PCA."""
        return (np.asarray(X, dtype=np.float64) - self.pca_mean) @ self.pca_components.T


def gge_deg_mask(
    real: np.ndarray | GroupStats,
    controls: np.ndarray | GroupStats,
    options: GGEOptions = GGEOptions(),
) -> np.ndarray:
    """gge-eval's DEG selection of one condition against all control cells.

    Welch t-test per gene (computed from means, variances and counts, which equals
    ``scipy.stats.ttest_ind(real, controls, equal_var=False, axis=0)``); NaN p-values count as 1.

    Parameters
    ----------
    real
        Observed cells of the condition (or their :class:`GroupStats`).
    controls
        All observed control cells (or their stats).
    options
        Thresholds.

    Returns
    -------
    numpy.ndarray
        Boolean mask over genes (all true when no gene passes).
    """
    a = real if isinstance(real, GroupStats) else GroupStats.of(real)
    b = controls if isinstance(controls, GroupStats) else GroupStats.of(controls)
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2(a.mean + 1) - np.log2(b.mean + 1)
    if a.n > 1 and b.n > 1:
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = stats.ttest_ind_from_stats(
                a.mean, np.sqrt(a.var), a.n, b.mean, np.sqrt(b.var), b.n, equal_var=False
            ).pvalue
        p = np.where(np.isnan(p), 1.0, p)
    else:
        p = np.ones(a.mean.shape[0])
    mask = (np.abs(lfc) >= options.deg_lfc) & (p <= options.deg_pval)
    if not mask.any():
        mask = np.ones(a.mean.shape[0], dtype=bool)
    return mask


# ------------------------------------------------------------------ 1-D, per feature


def paired_or_mean_correlation(real: np.ndarray, pred: np.ndarray, method: str = "pearson") -> float:
    """gge-eval's Pearson / Spearman "correlation" of two cell sets.

    Equal set sizes: per-feature correlation across index-paired cells, averaged over features
    (NaN features skipped; a feature constant in either set is NaN). Otherwise: one
    correlation between the two mean profiles.

    Parameters
    ----------
    real, pred
        ``[n, k]`` and ``[m, k]``.
    method
        ``"pearson"`` or ``"spearman"``.

    Returns
    -------
    float
    """
    real = np.asarray(real)
    pred = np.asarray(pred)
    if real.shape[0] == pred.shape[0]:
        real = real.astype(np.float64, copy=False)
        pred = pred.astype(np.float64, copy=False)
        # constant features are NaN (as scipy's pearsonr / spearmanr return for them)
        const = (np.ptp(real, axis=0) == 0) | (np.ptp(pred, axis=0) == 0)
        const |= (np.std(real, axis=0) == 0) | (np.std(pred, axis=0) == 0)
        a, b = real, pred
        if method == "spearman":
            a, b = stats.rankdata(a, axis=0), stats.rankdata(b, axis=0)
        ac, bc = a - a.mean(axis=0), b - b.mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (ac * bc).sum(axis=0) / np.sqrt((ac * ac).sum(axis=0) * (bc * bc).sum(axis=0))
        r = np.clip(r, -1.0, 1.0)
        r[const] = np.nan
        if np.all(np.isnan(r)):
            return math.nan
        return float(np.nanmean(r))
    # mean profiles in the arrays' own precision, as gge-eval computes them
    rm, pm = real.mean(axis=0), pred.mean(axis=0)
    if np.std(rm) == 0 or np.std(pm) == 0:
        return math.nan
    f = stats.pearsonr if method == "pearson" else stats.spearmanr
    return float(f(rm, pm)[0])


# --------------------------------------------------------------------- one group


def gge_group_metrics(
    preds: Mapping[str, np.ndarray],
    real: np.ndarray,
    reference: GGEReference,
) -> dict[str, dict[str, object]]:
    """gge-eval's metrics of one condition, for every model.

    Parameters
    ----------
    preds
        ``{model: [n_pred, n_genes] predicted cells}`` (in the prediction file's order).
    real
        ``[n_real, n_genes]`` observed cells of the condition (in the data file's order).
    reference
        PCA and DEG selection fit on the first condition.

    Returns
    -------
    dict
        ``{model: {metric: value, "n_pred", "n_real", "n_deg", "reason"}}``.
    """
    real_raw = np.asarray(real)
    real = real_raw.astype(np.float64)
    mask = reference.deg_mask
    real_z = reference.transform(real)
    real_mean = real.mean(axis=0)
    out: dict[str, dict[str, object]] = {}
    for mo, p_raw in preds.items():
        p_raw = np.asarray(p_raw)
        p = p_raw.astype(np.float64)
        d = p.mean(axis=0) - real_mean
        mse = float(np.mean(d * d))
        pz = reference.transform(p)
        dz = pz.mean(axis=0) - real_z.mean(axis=0)
        reasons = []
        if len(p) != len(real):
            reasons.append("set sizes differ: correlations of mean profiles")
        if reference.condition:
            reasons.append(f"PCA and DEGs fit on {reference.condition}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            row: dict[str, object] = {
                "pearson_deg": paired_or_mean_correlation(real_raw[:, mask], p_raw[:, mask], "pearson"),
                "spearman_deg": paired_or_mean_correlation(real_raw[:, mask], p_raw[:, mask], "spearman"),
                "mse": mse,
                "rmse": math.sqrt(mse),
                "mae": float(np.mean(np.abs(d))),
                "mse_pca50": float(np.mean(dz * dz)),
                "w1": float(np.nanmean(wasserstein1_per_feature(real_z, pz))),
                "w2": float(np.nanmean(sinkhorn_w2_per_feature(real_z, pz))),
                "energy": float(np.nanmean(energy_per_feature(real_z, pz))),
                "mmd": float(np.nanmean(mmd_per_feature(real_z, pz))),
            }
        row.update({"n_pred": len(p), "n_real": len(real), "n_deg": int(mask.sum()), "reason": "; ".join(reasons)})
        out[mo] = row
    return out
