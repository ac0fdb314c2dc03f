"""cell-eval's metrics (cell-eval 0.8.2 definitions), computed group by group and fast.

cell-eval (Arc Institute) scores a prediction file against the observed one per cell type. Its
definitions, restated here for one cell type with observed control cells ``C``:

* **DE** (``pdex``, as cell-eval calls it): for every perturbation, each gene's two-sided
  Mann–Whitney U test of the perturbed cells against ``C`` (asymptotic, tie- and
  continuity-corrected), Benjamini–Hochberg FDR over the genes, and the log2 fold change of the
  geometric-mean pseudobulks ``log2(expm1(mean X_pert) / expm1(mean X_ctrl))`` (log1p data,
  no pseudocount; ``0/0`` is 0). The predicted cells get the same test, against the prediction
  file's controls (ptrag's prediction files carry the observed controls). FDR < 0.05 is
  significant. Fold changes are compared as float32, as cell-eval stores them.
* ``overlap_at_k`` / ``precision_at_k``: the significant genes of each side ordered by
  ``|log2 FC|`` (descending, ties in gene order); ``|top-k real ∩ top-k pred| / k`` with
  ``k = min(k, #real)`` (overlap) or ``min(k, #pred)`` (precision); ``_at_N`` uses all of them.
  No significant gene on the side that sets ``k``: 0.
* ``de_spearman_lfc_sig``: Spearman correlation of the real and predicted fold changes over the
  real significant genes; ``de_direction_match``: the fraction of those genes whose fold changes
  have the same sign. Undefined (NaN) without real significant genes.
* ``mae_delta`` / ``mse_delta``: errors between the predicted and the observed change
  ``mean(pert) - mean(ctrl)`` over all genes.
* ``discrimination_score_<d>`` (PDS), ``d`` in l1, l2, cosine: rank the observed changes of all
  the cell type's evaluated perturbations by their distance ``d`` to the predicted change of
  perturbation ``p`` (genes named ``p`` left out); the score is ``1 - rank(p) / n_perts`` (1:
  the true perturbation is the closest).
* ``pearson_edistance``: Pearson correlation, over the cell type's perturbations, between the
  energy distance of the observed perturbed cells to ``C`` and that of the predicted cells to
  the prediction's controls (Euclidean, all genes, V-statistic) — one value per cell type.

The Mann–Whitney test against a shared reference set uses the reference's values sorted once
per cell type (``RankedReference``): a group's U statistic and pooled tie term follow from a
merge of its sorted values into the reference's (a numba kernel, genes in parallel), with no
re-ranking of the pooled sample per test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from scipy import special, stats
from scipy.spatial.distance import cdist

from ptrag.errors import PtragError

FDR_THRESHOLD = 0.05


@numba.njit(cache=True)
def _gallop(r: np.ndarray, start: int, v: float, right: bool) -> int:  # pragma: no cover (jit)
    """First index ``i >= start`` of the sorted ``r`` with ``r[i] >= v`` (``> v`` when
    ``right``): exponential then binary search, so a merge of sorted values costs
    ``O(n log(m / n))``."""
    m = r.shape[0]
    if start >= m or (r[start] > v if right else r[start] >= v):
        return start
    step = 1
    while start + step < m and (r[start + step] <= v if right else r[start + step] < v):
        step *= 2
    lo, hi = start + step // 2 + 1, min(start + step, m)
    while lo < hi:
        mid = (lo + hi) // 2
        if r[mid] <= v if right else r[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, parallel=True)
def _rank_counts(
    ref: np.ndarray, xs: np.ndarray, bounds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover (jit)
    """Per gene (row) and set ``s`` (columns ``bounds[s]:bounds[s+1]`` of ``xs``, each sorted):
    the U statistic of the set against the sorted ``ref[g]`` and the change of the pooled tie
    term ``Σ (t³ - t)`` that the set brings. Each reference row is read once for all sets."""
    n_genes = ref.shape[0]
    n_sets = bounds.shape[0] - 1
    u1 = np.zeros((n_sets, n_genes))
    extra = np.zeros((n_sets, n_genes))
    for g in numba.prange(n_genes):
        r = ref[g]
        for s in range(n_sets):
            x = xs[g, bounds[s] : bounds[s + 1]]
            n = x.shape[0]
            lo = 0
            i = 0
            while i < n:
                v = x[i]
                k = i
                while k + 1 < n and x[k + 1] == v:
                    k += 1
                tg = k - i + 1.0
                lo = _gallop(r, lo, v, False)
                tc = _gallop(r, lo, v, True) - lo + 0.0
                u1[s, g] += tg * (lo + 0.5 * tc)
                t = tc + tg
                extra[s, g] += t * t * t - t - (tc * tc * tc - tc)
                i = k + 1
    return u1, extra


def _tie_term(sorted_cols: np.ndarray) -> np.ndarray:
    """``Σ (t³ - t)`` over the tie groups of each row of a row-sorted array."""
    n_genes, m = sorted_cols.shape
    new = np.ones((n_genes, m), dtype=bool)
    new[:, 1:] = sorted_cols[:, 1:] != sorted_cols[:, :-1]
    starts = np.flatnonzero(new.ravel())
    lengths = np.diff(np.append(starts, new.size)).astype(np.float64)
    return np.bincount(starts // m, weights=lengths**3 - lengths, minlength=n_genes)


def _sorted_columns(X: np.ndarray) -> np.ndarray:
    """``[n_genes, n]`` float32, C-ordered: each gene's values sorted (``-0.0`` read as ``0.0``)."""
    return np.sort(np.ascontiguousarray(np.asarray(X, dtype=np.float32).T) + np.float32(0.0), axis=1)


@dataclass(frozen=True)
class RankedReference:
    """A reference cell set (the controls of a cell type), sorted per gene once.

    Attributes
    ----------
    values
        ``[n_genes, n]`` float32, each gene's values sorted.
    tie_term
        ``[n_genes]`` ``Σ (t³ - t)`` over the tie groups of each gene.
    log_mean
        ``[n_genes]`` mean of the (log1p) expression.
    """

    values: np.ndarray
    tie_term: np.ndarray
    log_mean: np.ndarray

    @property
    def n(self) -> int:
        """Number of cells."""
        return self.values.shape[1]

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self.values.shape[0]

    @classmethod
    def of(cls, X: np.ndarray) -> RankedReference:
        """Sort a reference set.

        Parameters
        ----------
        X
            ``[n_cells, n_genes]`` expression (log1p-normalised).

        Returns
        -------
        RankedReference
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] < 1:
            raise PtragError(f"a reference cell set must be a non-empty [cells, genes] array, got {X.shape}.")
        values = _sorted_columns(X)
        return cls(values, _tie_term(values), X.astype(np.float64).mean(axis=0))


def mannwhitney_vs(ref: RankedReference, sets: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-gene two-sided Mann–Whitney U test of each cell set against the reference.

    The asymptotic test with tie and continuity corrections of ``scipy.stats.mannwhitneyu``
    (``method="asymptotic"``) and of ``numba_mwu`` (pdex's); a gene constant over both sets
    gets p = 1. Several sets are tested in one pass over the reference.

    Parameters
    ----------
    ref
        The sorted reference set.
    sets
        ``[n_s, n_genes]`` cells to test, one array per set.

    Returns
    -------
    list of tuple
        Per set ``(U1, p)``: its U statistic and p-value, per gene.
    """
    sets = [np.asarray(X) for X in sets]
    for X in sets:
        if X.ndim != 2 or X.shape[1] != ref.n_genes or X.shape[0] < 1:
            raise PtragError(f"cells to test have shape {X.shape}, expected [cells >= 1, {ref.n_genes}].")
    bounds = np.cumsum([0] + [len(X) for X in sets]).astype(np.int64)
    xs = np.concatenate([_sorted_columns(X) for X in sets], axis=1)
    u1s, extras = _rank_counts(ref.values, xs, bounds)
    out = []
    for X, u1, extra in zip(sets, u1s, extras, strict=True):
        n1, n2 = X.shape[0], ref.n
        n = n1 + n2
        s_sq = n1 * n2 / 12.0 * ((n + 1.0) - (ref.tie_term + extra) / (n * (n - 1.0)))
        u = np.maximum(u1, n1 * n2 - u1)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (u - n1 * n2 / 2.0 - 0.5) / np.sqrt(s_sq)
        p = np.where(s_sq > 0, special.erfc(z / math.sqrt(2.0)), 1.0)
        out.append((u1, np.clip(p, 0.0, 1.0)))
    return out


@dataclass(frozen=True)
class DETable:
    """cell-eval's DE result of one perturbation (one side: observed or predicted).

    Attributes
    ----------
    lfc
        ``[n_genes]`` float32 log2 fold change of the geometric-mean pseudobulks.
    fdr
        ``[n_genes]`` Benjamini–Hochberg FDR of the Mann–Whitney p-values.
    """

    lfc: np.ndarray
    fdr: np.ndarray

    @property
    def significant(self) -> np.ndarray:
        """Indices of the genes with FDR < 0.05."""
        return np.flatnonzero(self.fdr < FDR_THRESHOLD)

    def ranked_significant(self) -> np.ndarray:
        """Significant genes by ``|lfc|`` (float32), largest first, ties in gene order."""
        sig = self.significant
        order = np.argsort(-np.abs(self.lfc[sig]), kind="stable")
        return sig[order]


def de_tables(sets: Sequence[np.ndarray], ref: RankedReference) -> list[DETable]:
    """cell-eval's DE of cell sets against the reference (pdex with cell-eval's settings).

    Parameters
    ----------
    sets
        ``[n_s, n_genes]`` log1p expression of the perturbed (or predicted) cells, per set.
    ref
        The control cells, sorted.

    Returns
    -------
    list of DETable
        One per set.
    """
    out = []
    for X, (_, p) in zip(sets, mannwhitney_vs(ref, sets), strict=True):
        fdr = stats.false_discovery_control(p)
        with np.errstate(divide="ignore", invalid="ignore"):
            lfc = np.log2(np.expm1(np.asarray(X, dtype=np.float64).mean(axis=0)) / np.expm1(ref.log_mean))
        lfc[np.isnan(lfc)] = 0.0
        out.append(DETable(lfc.astype(np.float32), fdr.astype(np.float32)))
    return out


def de_overlap(real: DETable, pred: DETable, k: int | None = None, metric: str = "overlap") -> float:
    """cell-eval's ``overlap_at_k`` (``metric="overlap"``) or ``precision_at_k``.

    Parameters
    ----------
    real, pred
        DE of the observed and the predicted cells.
    k
        Top-k; ``None`` for ``_at_N`` (all significant genes).
    metric
        ``"overlap"`` (k capped by the observed DE genes) or ``"precision"`` (by the predicted).

    Returns
    -------
    float
    """
    r, q = real.ranked_significant(), pred.ranked_significant()
    cap = r.size if metric == "overlap" else q.size
    k_eff = min(k, cap) if k else cap
    if k_eff == 0:
        return 0.0
    return np.intersect1d(r[:k_eff], q[:k_eff]).size / k_eff


def de_agreement(real: DETable, pred: DETable) -> tuple[float, float]:
    """``de_spearman_lfc_sig`` and ``de_direction_match`` over the observed DE genes.

    Parameters
    ----------
    real, pred
        DE of the observed and the predicted cells.

    Returns
    -------
    tuple of float
        ``(spearman, direction_match)``; NaN without observed DE genes (Spearman also when a
        side is constant or there is one gene).
    """
    sig = real.significant
    if sig.size == 0:
        return math.nan, math.nan
    a, b = real.lfc[sig].astype(np.float64), pred.lfc[sig].astype(np.float64)
    direction = float(np.mean(np.sign(a) == np.sign(b)))
    if sig.size < 2 or np.ptp(stats.rankdata(a)) == 0 or np.ptp(stats.rankdata(b)) == 0:
        return math.nan, direction
    return float(stats.spearmanr(a, b)[0]), direction


def delta_errors(pred_delta: np.ndarray, real_delta: np.ndarray) -> dict[str, float]:
    """``mae_delta`` and ``mse_delta``: errors between predicted and observed changes.

    Parameters
    ----------
    pred_delta, real_delta
        ``[n_genes]`` changes from control.

    Returns
    -------
    dict
    """
    d = np.asarray(pred_delta, dtype=np.float64) - np.asarray(real_delta, dtype=np.float64)
    return {"mae_delta": float(np.mean(np.abs(d))), "mse_delta": float(np.mean(d * d))}


_PDS_DISTANCES = ("l1", "l2", "cosine")


def _pds_distances(real: np.ndarray, pred: np.ndarray, target: np.ndarray, distance: str) -> np.ndarray:
    """``D[i, k]``: distance of predicted change ``i`` to observed change ``k``, leaving out
    gene ``target[i]`` (``-1``: none) — all pairs at once, the left-out gene's share
    subtracted from each row rather than recomputing the row without it."""
    rows = np.flatnonzero(target >= 0)
    j = target[rows]
    if distance == "l1":
        d = cdist(pred, real, "cityblock")
        d[rows] -= np.abs(pred[rows, j][:, None] - real[:, j].T)
        return d
    if distance == "l2":
        d2 = cdist(pred, real, "sqeuclidean")
        d2[rows] -= (pred[rows, j][:, None] - real[:, j].T) ** 2
        return np.sqrt(np.maximum(d2, 0.0))
    dots = pred @ real.T
    pn = np.broadcast_to(np.einsum("ij,ij->i", pred, pred)[:, None], dots.shape).copy()
    rn = np.broadcast_to(np.einsum("ij,ij->i", real, real)[None, :], dots.shape).copy()
    dots[rows] -= pred[rows, j][:, None] * real[:, j].T
    pn[rows] -= (pred[rows, j] ** 2)[:, None]
    rn[rows] -= real[:, j].T ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - dots / np.sqrt(pn * rn)


def discrimination_scores(
    real_effects: np.ndarray,
    pred_effects: np.ndarray,
    perturbations: list[str],
    genes: list[str],
    distance: str = "l1",
) -> np.ndarray:
    """cell-eval's ``discrimination_score_<distance>`` of every perturbation of a cell type.

    Parameters
    ----------
    real_effects, pred_effects
        ``[n_perts, n_genes]`` observed and predicted changes from control, row i for
        ``perturbations[i]``.
    perturbations
        The perturbation names (a gene with the same name is left out of its comparison).
    genes
        Gene names of the columns.
    distance
        ``"l1"``, ``"l2"`` or ``"cosine"``.

    Returns
    -------
    numpy.ndarray
        ``[n_perts]`` scores ``1 - rank / n_perts``; the rank of ``p`` counts the observed
        changes closer to its prediction than its own (ties: those listed before it).
    """
    if distance not in _PDS_DISTANCES:
        raise PtragError(f"unknown discrimination distance {distance!r}; use one of l1, l2, cosine.")
    real = np.asarray(real_effects, dtype=np.float64)
    pred = np.asarray(pred_effects, dtype=np.float64)
    col = {g: i for i, g in enumerate(genes)}
    target = np.array([col.get(p, -1) for p in perturbations], dtype=np.int64)
    d = _pds_distances(real, pred, target, distance)
    if distance == "cosine":
        d = np.nan_to_num(d, nan=np.inf)
    n = len(perturbations)
    own = d[np.arange(n), np.arange(n)][:, None]
    before = np.arange(n)[None, :] < np.arange(n)[:, None]
    rank = (d < own).sum(axis=1) + ((d == own) & before).sum(axis=1)
    return 1.0 - rank / n


def pearson_or_nan(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation, NaN when fewer than 2 values or a side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.pearsonr(a, b)[0])
