"""The run's PCA-50 space: fit once on training cells, stored with the run, reused by evaluation.

The training code calls ``PCASpace.fit(X_train)`` and ``save(RUN_DIR / "pca.npz")``;
``ptrag evaluate`` loads it so that every model of a run is scored in the same space, and the
space never sees held-out cells.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptrag.errors import PtragError, atomic_path

log = logging.getLogger("ptrag")


@dataclass
class PCASpace:
    """A fitted linear PCA projection (centring + orthonormal components).

    Attributes
    ----------
    components
        ``[n_components, n_genes]`` float64, rows orthonormal (sklearn's ``components_``).
    mean
        ``[n_genes]`` float64, the training mean subtracted before projection.
    explained_variance
        ``[n_components]`` variance of the training cells along each component.
    explained_variance_ratio
        ``[n_components]`` fraction of the total variance along each component.
    gene_names
        The genes (columns) the space was fit on, in order; empty when unknown.
    """

    components: np.ndarray
    mean: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gene_names: list[str] = field(default_factory=list)

    @property
    def n_components(self) -> int:
        """Number of components."""
        return int(self.components.shape[0])

    @property
    def n_genes(self) -> int:
        """Number of input genes."""
        return int(self.components.shape[1])

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        n_components: int = 50,
        seed: int = 0,
        max_cells: int = 50_000,
        gene_names: Sequence[str] | None = None,
    ) -> PCASpace:
        """Fit a PCA on cells (rows of ``X``) with scikit-learn.

        The number of components is ``min(n_components, n_cells - 1, n_genes)``. When ``X`` has
        more than ``max_cells`` rows, a seeded random subset of ``max_cells`` rows is used. The
        solver is exact (``covariance_eigh`` when cells outnumber genes, else ``full``), so the
        fit is deterministic.

        Parameters
        ----------
        X
            ``[n_cells, n_genes]`` log-normalised expression of training cells (controls and
            training perturbations).
        n_components
            Requested number of components (50 in the paper).
        seed
            Seed of the cell subsample.
        max_cells
            Most cells used for the fit.
        gene_names
            Names of the columns of ``X``, stored with the space.

        Returns
        -------
        PCASpace
            The fitted space.
        """
        from sklearn.decomposition import PCA

        X = _subsample(_checked_input(X, gene_names), max_cells, seed)
        n_cells, n_genes = X.shape
        k = int(min(n_components, n_cells - 1, n_genes))
        if k < 1:
            raise PtragError(f"PCA: cannot fit {n_components} components on {n_cells} cells x {n_genes} genes.")
        solver = "covariance_eigh" if n_cells > n_genes else "full"
        pca = PCA(n_components=k, svd_solver=solver, random_state=seed)
        pca.fit(X.astype(np.float64, copy=False) if solver == "full" else X)
        log.info(
            "PCA-%d fit on %d cells x %d genes (%.1f%% of the variance).",
            k,
            n_cells,
            n_genes,
            100 * float(np.sum(pca.explained_variance_ratio_)),
        )
        return cls(
            components=np.asarray(pca.components_, dtype=np.float64),
            mean=np.asarray(pca.mean_, dtype=np.float64),
            explained_variance=np.asarray(pca.explained_variance_, dtype=np.float64),
            explained_variance_ratio=np.asarray(pca.explained_variance_ratio_, dtype=np.float64),
            gene_names=list(map(str, gene_names)) if gene_names is not None else [],
        )

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Project cells into the space: ``(X - mean) @ components.T``.

        Parameters
        ----------
        X
            ``[n_cells, n_genes]`` expression, genes in the order of the fit.

        Returns
        -------
        numpy.ndarray
            ``[n_cells, n_components]`` float64 scores.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_genes:
            raise PtragError(f"PCA space expects {self.n_genes} genes per cell, got an array of shape {X.shape}.")
        return (X.astype(np.float64, copy=False) - self.mean) @ self.components.T

    def save(self, path: str | os.PathLike) -> None:
        """Write the space to an ``.npz`` file atomically.

        Parameters
        ----------
        path
            Destination, conventionally ``RUN_DIR / "pca.npz"``.
        """
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                components=self.components,
                mean=self.mean,
                explained_variance=self.explained_variance,
                explained_variance_ratio=self.explained_variance_ratio,
                gene_names=np.asarray(self.gene_names, dtype=str),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCASpace:
        """Read a space written by :meth:`save`.

        Parameters
        ----------
        path
            The ``.npz`` file.

        Returns
        -------
        PCASpace
            The stored space.
        """
        path = Path(path)
        if not path.is_file():
            raise PtragError(
                f"PCA file not found: {path}. It is written by training (RUN_DIR/pca.npz); "
                "check --run, or re-run training to create it."
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("components", "mean", "explained_variance") if k not in z]
                if missing:
                    raise PtragError(f"{path} is not a ptrag PCA file: missing {', '.join(missing)}.")
                comps = np.asarray(z["components"], dtype=np.float64)
                mean = np.asarray(z["mean"], dtype=np.float64)
                ev = np.asarray(z["explained_variance"], dtype=np.float64)
                evr = (
                    np.asarray(z["explained_variance_ratio"], dtype=np.float64)
                    if "explained_variance_ratio" in z
                    else np.zeros(0)
                )
                genes = [str(g) for g in z["gene_names"]] if "gene_names" in z else []
        except PtragError:
            raise
        except (OSError, ValueError, KeyError) as exc:
            raise PtragError(f"{path} could not be read as a PCA file ({exc}).") from exc
        if comps.ndim != 2 or mean.shape != (comps.shape[1],) or ev.shape != (comps.shape[0],):
            raise PtragError(
                f"{path} is inconsistent: components {comps.shape}, mean {mean.shape}, explained variance {ev.shape}."
            )
        if genes and len(genes) != comps.shape[1]:
            raise PtragError(f"{path}: {len(genes)} gene names for {comps.shape[1]} PCA input genes.")
        return cls(comps, mean, ev, evr, genes)


def _checked_input(X: np.ndarray, gene_names: Sequence[str] | None) -> np.ndarray:
    """``X`` as an array, checked for a PCA fit: a finite cells x genes matrix of at least 2
    cells, with one name per gene when names are given."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise PtragError(f"PCA input must be a cells x genes matrix, got shape {X.shape}.")
    n_cells, n_genes = X.shape
    if gene_names is not None and len(gene_names) != n_genes:
        raise PtragError(f"PCA: {len(gene_names)} gene names for a matrix with {n_genes} genes.")
    if n_cells < 2:
        raise PtragError(f"PCA needs at least 2 training cells, got {n_cells}.")
    if not np.all(np.isfinite(X)):
        raise PtragError("PCA input contains NaN or Inf values.")
    return X


def _subsample(X: np.ndarray, max_cells: int, seed: int) -> np.ndarray:
    """A seeded random subset of ``max_cells`` rows of ``X`` (in their order), or ``X`` when it has
    no more rows than that."""
    n_cells = X.shape[0]
    if n_cells <= max_cells:
        return X
    rows = np.sort(np.random.default_rng(seed).choice(n_cells, max_cells, replace=False))
    return X[rows]
