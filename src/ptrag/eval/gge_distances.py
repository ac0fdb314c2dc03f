"""gge-eval 1.0.1's per-feature distribution distances (``ptrag.eval.gge``'s compatibility
mode): each feature (PCA component or DEG) is compared on its own, as gge-eval does, and the
per-feature values are averaged by :func:`ptrag.eval.gge.gge_group_metrics`."""

from __future__ import annotations

import warnings

import numpy as np


def wasserstein1_per_feature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1-D Wasserstein-1 distance of every column (exact, vectorised CDF formula).

    ``W1 = ∫ |F_x(t) - F_y(t)| dt``, the definition of ``scipy.stats.wasserstein_distance``.

    Parameters
    ----------
    x, y
        ``[n, k]`` and ``[m, k]``.

    Returns
    -------
    numpy.ndarray
        ``[k]``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    z = np.concatenate([x, y])
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    order = np.argsort(z, axis=0, kind="stable")
    zs = np.take_along_axis(z, order, axis=0)
    cdf_diff = np.cumsum(w[order], axis=0)[:-1]
    return np.sum(np.abs(cdf_diff) * np.diff(zs, axis=0), axis=0)


def _column_blocks(k: int, n_rows: int, budget: int = 4_000_000) -> list[slice]:
    """Slices of ``k`` columns such that an ``[n_rows, n_rows, block]`` pairwise array stays
    within ``budget`` elements."""
    step = max(1, int(budget // (n_rows**2)))
    return [slice(s, s + step) for s in range(0, k, step)]


def mmd_per_feature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """gge-eval's 1-D squared MMD of every column (RBF, median heuristic, unbiased, ≥ 0).

    Parameters
    ----------
    x, y
        ``[n, k]`` and ``[m, k]``.

    Returns
    -------
    numpy.ndarray
        ``[k]`` (NaN where a set has fewer than 2 cells).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    k = x.shape[1]
    if n < 2 or m < 2:
        return np.full(k, np.nan)
    z = np.concatenate([x, y])
    out = np.empty(k)
    for cols in _column_blocks(k, n + m):
        zc = z[:, cols]
        d = np.abs(zc[:, None, :] - zc[None, :, :])  # [N, N, c]
        pos = np.where(d > 0, d, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            sigma = np.nanmedian(pos.reshape(-1, zc.shape[1]), axis=0)
        sigma = np.where(sigma == 0, 1.0, sigma)
        kern = np.exp(-(d * d) / (2 * sigma**2))
        kxx, kyy, kxy = kern[:n, :n], kern[n:, n:], kern[:n, n:]
        tr = np.arange(n)
        tr_y = np.arange(m)
        mmd = (
            (kxx.sum(axis=(0, 1)) - kxx[tr, tr].sum(axis=0)) / (n * (n - 1))
            + (kyy.sum(axis=(0, 1)) - kyy[tr_y, tr_y].sum(axis=0)) / (m * (m - 1))
            - 2 * kxy.sum(axis=(0, 1)) / (n * m)
        )
        # NaN (no positive distance at all) becomes 0, as max(0, nan) does in gge-eval.
        out[cols] = np.where(np.isnan(mmd), 0.0, np.maximum(mmd, 0.0))
    return out


def energy_per_feature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """gge-eval's 1-D energy of every column: ``geomloss.SamplesLoss("energy")``.

    That loss is ``E|X-Y| - E|X-X'|/2 - E|Y-Y'|/2`` (all pairs, self-pairs included), half the
    V-statistic energy distance; it is computed here in closed form (float64, vectorised over
    columns) rather than through geomloss's float32 kernels.

    Parameters
    ----------
    x, y
        ``[n, k]`` and ``[m, k]``.

    Returns
    -------
    numpy.ndarray
        ``[k]``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m, k = len(x), len(y), x.shape[1]
    out = np.empty(k)
    for cols in _column_blocks(k, n + m):
        xs, ys = x[:, cols], y[:, cols]
        exy = np.abs(xs[:, None, :] - ys[None, :, :]).mean(axis=(0, 1))
        exx = np.abs(xs[:, None, :] - xs[None, :, :]).mean(axis=(0, 1))
        eyy = np.abs(ys[:, None, :] - ys[None, :, :]).mean(axis=(0, 1))
        out[cols] = exy - 0.5 * exx - 0.5 * eyy
    return out


def sinkhorn_w2_per_feature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``geomloss.SamplesLoss("sinkhorn", p=2, blur=0.01)`` of every column, one at a time.

    Each column is its own problem (geomloss's ε-schedule depends on the problem's diameter,
    so batching columns would change the result).

    Parameters
    ----------
    x, y
        ``[n, k]`` and ``[m, k]``.

    Returns
    -------
    numpy.ndarray
        ``[k]``.
    """
    import torch
    from geomloss import SamplesLoss

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    loss = SamplesLoss(loss="sinkhorn", p=2, blur=0.01, backend="tensorized")
    out = np.empty(x.shape[1])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: threads only add overhead
    try:
        with torch.no_grad():
            for j in range(x.shape[1]):
                xt = torch.tensor(x[:, j : j + 1], dtype=torch.float32)
                yt = torch.tensor(y[:, j : j + 1], dtype=torch.float32)
                out[j] = loss(xt, yt).item()
    finally:
        torch.set_num_threads(threads)
    return out
