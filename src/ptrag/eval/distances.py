"""Distances between two cell sets (in the run's PCA space): W1, W2², energy, MMD².

* ``w1``: exact optimal transport, Euclidean cost (``ot.emd2``);
* ``w2_sq``: exact OT on the squared Euclidean cost (W2 squared);
* ``energy``: the V-statistic ``2 E|X-Y| - E|X-X'| - E|Y-Y'|``;
* ``mmd``: squared MMD, RBF kernel, median-heuristic bandwidth, unbiased estimator;

and, in expression space for cell-eval's ``pearson_edistance``, the energy distance of a cell
set to the controls (:func:`edistance`, from blocked matrix products).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import cdist

from ptrag.errors import PtragError


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise PtragError(f"a cell set must be a non-empty [cells, features] array, got shape {x.shape}.")
    return x


def _emd(cost: np.ndarray) -> float:
    """Exact optimal transport cost between uniform weights.

    With as many points on both sides the optimum is a permutation (Birkhoff–von Neumann), so
    ``scipy.optimize.linear_sum_assignment`` solves it exactly and faster than the network
    simplex (``ot.emd2``), which handles unequal sizes.
    """
    import ot
    from scipy.optimize import linear_sum_assignment

    n, m = cost.shape
    if n == m:
        rows, cols = linear_sum_assignment(cost)
        return float(cost[rows, cols].mean())
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


# ------------------------------------------------ energy distances in expression space


def row_mean_distances(x: np.ndarray, y: np.ndarray, block: int = 2048) -> np.ndarray:
    """Mean Euclidean distance of each row of ``x`` to all rows of ``y``.

    Blocks of rows of ``x`` with one float32 matrix product each (``|a|² + |b|² - 2 a·b``);
    centre both sets first (e.g. on the controls' mean) to keep the products accurate.

    Parameters
    ----------
    x, y
        ``[n, d]`` and ``[m, d]``.
    block
        Rows of ``x`` per block.

    Returns
    -------
    numpy.ndarray
        ``[n]`` float64.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    yy = np.einsum("ij,ij->i", y, y, dtype=np.float64)
    out = np.empty(len(x))
    for i in range(0, len(x), block):
        xb = x[i : i + block]
        d2 = (xb @ y.T).astype(np.float64)
        d2 *= -2.0
        d2 += np.einsum("ij,ij->i", xb, xb, dtype=np.float64)[:, None]
        d2 += yy[None, :]
        out[i : i + len(xb)] = np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2).mean(axis=1)
    return out


def mean_pairwise_distance(x: np.ndarray, block: int = 2048) -> float:
    """Mean Euclidean distance over all pairs of rows of ``x``, the zero diagonal included.

    By blocks of rows with one matrix product each (``|a|² + |b|² - 2 a·b``; float64 for sets
    of up to 2,048 rows, float32 products beyond), the diagonal set to exactly 0.

    Parameters
    ----------
    x
        ``[n, d]`` (centre it first, e.g. on the controls' mean, for accurate products).
    block
        Rows per block.

    Returns
    -------
    float
    """
    n = len(x)
    x = np.asarray(x, dtype=np.float64 if n <= 2048 else np.float32)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    total = 0.0
    for i in range(0, n, block):
        xb = x[i : i + block]
        d2 = (xb @ x.T).astype(np.float64, copy=False) * -2.0 + sq[i : i + block, None] + sq[None, :]
        d2[np.arange(len(xb)), np.arange(i, i + len(xb))] = 0.0
        total += float(np.sqrt(np.maximum(d2, 0.0, out=d2), out=d2).sum())
    return total / (n * n)


def edistance(
    x: np.ndarray, ctrl: np.ndarray, ctrl_self: float, center: np.ndarray | None = None, cross: float | None = None
) -> float:
    """Energy distance (V-statistic) between a cell set and the controls, Euclidean.

    Parameters
    ----------
    x
        ``[n, n_genes]`` cells.
    ctrl
        ``[m, n_genes]`` control cells (already minus ``center`` when it is given).
    ctrl_self
        ``mean_pairwise_distance(ctrl)``, computed once per cell type.
    center
        Subtracted from ``x`` (the controls' mean: distances do not change, and the float32
        products lose less to cancellation).
    cross
        ``E|X - C|`` when already computed (several sets scored in one product).

    Returns
    -------
    float
        ``2 E|X - C| - E|X - X'| - E|C - C'|``.
    """
    x = np.asarray(x, dtype=np.float64)
    if center is not None:
        x = x - center
    if cross is None:
        cross = float(row_mean_distances(x, ctrl).mean())
    return 2.0 * cross - mean_pairwise_distance(x) - ctrl_self
