"""Small numeric and random-draw helpers shared by the synthetic-benchmark modules."""

from __future__ import annotations

import math

import numpy as np


def unit(v: np.ndarray) -> np.ndarray:
    """``v`` scaled to unit L2 norm along the last axis (zero vectors stay zero).

    Parameters
    ----------
    v
        Vector or stack of vectors.

    Returns
    -------
    numpy.ndarray
        The normalised vectors.
    """
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def sparse_unit(rng: np.random.Generator, n_genes: int, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """A unit-norm vector over ``n_genes`` with ``size`` non-zero Gaussian entries.

    The non-zero genes are drawn without replacement with probabilities ``weights``.
    """
    v = np.zeros(n_genes)
    idx = rng.choice(n_genes, size=min(size, n_genes), replace=False, p=weights)
    v[idx] = rng.normal(size=idx.size)
    return unit(v)


def mix(
    rng: np.random.Generator, base: np.ndarray, rho: float, size: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """A unit vector with correlation about ``rho`` to the unit vector ``base``."""
    other = sparse_unit(rng, base.size, size, weights)
    return unit(rho * base + math.sqrt(max(0.0, 1.0 - rho**2)) * other)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarities of the rows of ``x`` (float64)."""
    u = unit(np.asarray(x, dtype=np.float64))
    return u @ u.T


def cell_type_names(n: int) -> list[str]:
    """The names of ``n`` cell types: ``cellA``, ``cellB``, ..."""
    return [f"cell{chr(ord('A') + i)}" for i in range(n)]


def nb_counts(rng: np.random.Generator, mean: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Negative-binomial counts (gamma-Poisson) with the given means and inverse dispersions."""
    lam = rng.gamma(shape=theta, scale=mean / theta)
    return rng.poisson(lam)


def split_sizes(rng: np.random.Generator, total: int, n_parts: int, minimum: int) -> np.ndarray:
    """``n_parts`` positive sizes summing to ``total``, each >= ``minimum``, uneven at random."""
    extra = total - n_parts * minimum
    weights = rng.dirichlet(np.full(n_parts, 3.0))
    return minimum + rng.multinomial(extra, weights)
