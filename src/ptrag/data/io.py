"""Reading and validating Perturb-seq AnnData files.

One function, :func:`read_perturbseq`, turns a user's ``.h5ad`` file or in-memory AnnData
(:data:`~ptrag.data.sources.DataSource`) into a :class:`PerturbData`: normalised cell metadata
(perturbation, cell type, batch, control flag) plus row access to log-normalised expression,
either in memory or streamed from disk (``backed=True``) for files larger than RAM. Every
problem a user can fix is raised as a :class:`~ptrag.errors.PtragError` that names the file
(or the AnnData), column or label at fault.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.checks import available_memory, check_names, check_values, detect_counts
from ptrag.data.columns import DEFAULT_SPEC, ColumnSpec, normalised_obs, resolve_columns
from ptrag.data.prepared import PreparedMatrix, find_prepared
from ptrag.data.sources import AnnDataLabel, DataSource, expression_source, open_source
from ptrag.errors import PtragError

log = logging.getLogger("ptrag")

#: Cells read per chunk when streaming a backed file.
CHUNK_CELLS = 20_000


class PerturbData:
    """A validated Perturb-seq data set.

    Attributes
    ----------
    path
        The file it was read from, or for an in-memory AnnData its label
        (:class:`~ptrag.data.sources.AnnDataLabel`, e.g. ``<AnnData 1200 x 500>``).
    spec
        The column spec used.
    obs
        DataFrame indexed like the file's cells, with normalised columns ``perturbation``,
        ``cell_type``, ``batch`` and ``is_control``. Cells with combination perturbations
        (``A+B``) are excluded from :attr:`rows`, the cells this object exposes.
    var_names
        The genes of the expression matrix, in file order.
    is_counts
        Whether the source holds raw counts (normalised on the fly with scanpy's
        ``normalize_total`` + ``log1p`` definitions).
    """

    def __init__(
        self,
        path: Path | AnnDataLabel,
        spec: ColumnSpec,
        obs: pd.DataFrame,
        var_names: list[str],
        matrix,
        is_counts: bool,
        backed: bool,
        h5file: h5py.File | None = None,
        totals: np.ndarray | None = None,
    ) -> None:
        self.path = path
        self.spec = spec
        self.obs = obs
        self.var_names = var_names
        self._matrix = matrix
        self.is_counts = is_counts
        self.backed = backed
        self._h5 = h5file
        self._obsm = None
        self._columns_cache: tuple[np.ndarray, sp.csr_matrix] | None = None
        self._gene_pos = {g: i for i, g in enumerate(var_names)}
        self._size_factors: np.ndarray | None = None
        self.target_sum: float | None = None
        self._totals: np.ndarray | None = None
        self._prepared: PreparedMatrix | None = None  # a run-ready copy (ptrag prepare), backed only
        self._prepared_maps: dict[bytes, np.ndarray | None] = {}
        if is_counts:
            totals = self._row_totals() if totals is None else totals
            self._totals = totals
            if np.any(totals <= 0):
                n = int(np.sum(totals <= 0))
                raise PtragError(f"{path}: {n} cells have zero total counts; remove empty cells before use.")
            self.target_sum = float(np.median(totals))
            self._size_factors = (self.target_sum / totals).astype(np.float32)
            log.info(
                "%s holds raw counts: normalising with scanpy's definition "
                "(normalize_total, target_sum = median total = %.1f, then log1p).",
                path.name,
                self.target_sum,
            )

    # ------------------------------------------------------------------ metadata
    @property
    def n_cells(self) -> int:
        """Number of cells in the file (including excluded combination cells)."""
        return len(self.obs)

    @property
    def cell_types(self) -> list[str]:
        """Sorted cell types."""
        return sorted(self.obs["cell_type"].unique())

    def groups(self) -> pd.DataFrame:
        """Non-control (cell type, perturbation) groups with their cell counts.

        Returns
        -------
        pandas.DataFrame
            Columns ``cell_type``, ``perturbation``, ``n_cells``, sorted.
        """
        obs = self.obs[~self.obs["is_control"] & self.obs["keep"]]
        g = obs.groupby(["cell_type", "perturbation"], observed=True).size()
        return g.rename("n_cells").reset_index().sort_values(["cell_type", "perturbation"], ignore_index=True)

    def control_counts(self) -> pd.Series:
        """Number of control cells per cell type."""
        obs = self.obs[self.obs["is_control"]]
        return obs.groupby("cell_type", observed=True).size()

    def rows_of(self, cell_type: str, perturbation: str) -> np.ndarray:
        """Row indices of the cells of one group (``perturbation`` may be the control label)."""
        o = self.obs
        if perturbation == self.spec.control:
            m = o["is_control"].to_numpy() & (o["cell_type"].to_numpy() == cell_type)
        else:
            m = (o["perturbation"].to_numpy() == perturbation) & (o["cell_type"].to_numpy() == cell_type)
        return np.flatnonzero(m & o["keep"].to_numpy())

    # ---------------------------------------------------------------- expression
    def gene_index(self, genes: Sequence[str] | None) -> np.ndarray | None:
        """Column positions of ``genes`` in the matrix (``None`` for all genes)."""
        if genes is None:
            return None
        if isinstance(genes, np.ndarray) and genes.dtype.kind in "iu":
            return genes
        missing = [g for g in genes if g not in self._gene_pos]
        if missing:
            raise PtragError(
                f"{self.path}: {len(missing)} genes of the run are absent from this file "
                f"(e.g. {', '.join(missing[:5])}); predict and evaluate on data with the genes the "
                "model was trained on."
            )
        return np.array([self._gene_pos[g] for g in genes], dtype=np.int64)

    def expression(self, rows: np.ndarray, genes: Sequence[str] | None = None) -> np.ndarray:
        """Log-normalised expression of ``rows`` (in the given order) as dense float32.

        Parameters
        ----------
        rows
            Cell row indices; may repeat and need not be sorted.
        genes
            Gene names to return, in this order (or their positions from
            :meth:`gene_index`); all genes when ``None``.

        Returns
        -------
        numpy.ndarray
            ``[len(rows), n_genes]`` float32.
        """
        rows = np.asarray(rows, dtype=np.int64)
        gidx = self.gene_index(genes)
        sub = self._gene_columns(gidx)
        if sub is not None:  # in memory: rows of the matrix already restricted to these genes
            block = sub[rows]
            if self._size_factors is not None:
                block = _scale_rows(block, self._size_factors[rows]).log1p()
            return block.toarray().astype(np.float32, copy=False)
        fast = self._from_prepared(rows, gidx)
        if fast is not None:
            return fast
        uniq, inverse = np.unique(rows, return_inverse=True)
        block = self.normalised_rows(uniq)
        if gidx is not None:
            block = block[:, gidx]
        dense = block.toarray() if sp.issparse(block) else np.asarray(block)
        return dense.astype(np.float32, copy=False)[inverse]

    def normalised_rows(self, sorted_rows: np.ndarray):
        """Log-normalised expression of sorted unique ``sorted_rows`` over all genes, as read
        (sparse or dense): counts scaled by their size factors and ``log1p``-transformed."""
        block = self._read_rows(sorted_rows)
        if self._size_factors is not None:
            block = _scale_rows(block, self._size_factors[sorted_rows])
            block = block.log1p() if sp.issparse(block) else np.log1p(block)
        return block

    def _from_prepared(self, rows: np.ndarray, gidx: np.ndarray | None) -> np.ndarray | None:
        """``rows`` x ``gidx`` from the prepared file, or ``None`` when there is none or it
        lacks some of these genes (then the source is read)."""
        if self._prepared is None:
            return None
        cols = np.arange(len(self.var_names)) if gidx is None else gidx
        key = cols.tobytes()
        if key not in self._prepared_maps:
            self._prepared_maps[key] = self._prepared.column_map(cols, self.var_names)
            if self._prepared_maps[key] is None:
                log.info("%s: genes outside its prepared file are read from the source.", self.path)
        col_map = self._prepared_maps[key]
        return None if col_map is None else self._prepared.dense(rows, col_map, len(cols))

    def _gene_columns(self, gidx: np.ndarray | None):
        """An in-memory sparse matrix restricted to the columns ``gidx``, built on first use
        and kept for the next reads of the same genes (a training reads the same genes every
        batch: selecting them once makes a batch read a row lookup and a densification).
        ``None`` (read as before) for backed or dense data, all genes, or when the copy would
        take more than a quarter of the available memory."""
        m = self._matrix
        if gidx is None or self.backed or not sp.issparse(m) or m.format != "csr":
            return None
        cached = self._columns_cache
        if cached is not None and np.array_equal(cached[0], gidx):
            return cached[1]
        nnz = int(np.bincount(m.indices, minlength=m.shape[1])[gidx].sum())
        avail = available_memory()
        if avail is not None and nnz * (m.data.itemsize + m.indices.itemsize) > avail // 4:
            return None
        sub = m[:, gidx].tocsr()
        self._columns_cache = (np.array(gidx, copy=True), sub)
        return sub

    def iter_chunks(self, rows: np.ndarray | None = None, chunk: int = CHUNK_CELLS):
        """Yield ``(row_indices, expression)`` blocks of log-normalised expression."""
        rows = np.arange(self.n_cells) if rows is None else np.sort(np.asarray(rows))
        for start in range(0, len(rows), chunk):
            r = rows[start : start + chunk]
            yield r, self.expression(r)

    def _read_rows(self, sorted_rows: np.ndarray):
        m = self._matrix
        if isinstance(m, h5py.Dataset):
            return m[sorted_rows] if len(sorted_rows) else np.zeros((0, m.shape[1]), m.dtype)
        return m[sorted_rows]

    def _row_totals(self) -> np.ndarray:
        totals = np.empty(self.n_cells, dtype=np.float64)
        for start in range(0, self.n_cells, CHUNK_CELLS):
            r = np.arange(start, min(start + CHUNK_CELLS, self.n_cells))
            totals[r] = np.asarray(self._read_rows(r).sum(axis=1)).ravel()
        return totals

    def cell_embedding(self, key: str) -> np.ndarray:
        """Precomputed per-cell embeddings ``obsm[key]`` (e.g. SE-600M ``X_state``) as float32."""
        if self._obsm is None or key not in self._obsm:
            keys = ", ".join(self._obsm.keys()) if self._obsm is not None else "none"
            raise PtragError(f"{self.path}: obsm key {key!r} (cell embeddings) not found; available: {keys or 'none'}.")
        m = self._obsm[key]
        m = m.to_numpy() if isinstance(m, pd.DataFrame) else m
        m = m.toarray() if sp.issparse(m) else np.asarray(m)
        if m.ndim != 2 or not np.all(np.isfinite(m)):
            raise PtragError(f"{self.path}: obsm[{key!r}] must be a finite cells x dims matrix.")
        return m.astype(np.float32, copy=False)

    def close(self) -> None:
        """Close the backing file (backed mode)."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
        if self._prepared is not None:
            self._prepared.close()
            self._prepared = None

    def __repr__(self) -> str:
        g = self.groups()
        return (
            f"PerturbData({self.path.name}: {self.n_cells} cells x {len(self.var_names)} genes, "
            f"{len(self.cell_types)} cell types, {g['perturbation'].nunique()} perturbations, "
            f"{int(self.obs['is_control'].sum())} controls, "
            f"{'counts' if self.is_counts else 'log-normalised'}, {'backed' if self.backed else 'in memory'})"
        )


def _scale_rows(block, factors: np.ndarray):
    if sp.issparse(block):
        return sp.csr_matrix(sp.diags(factors) @ block)
    return block * factors[:, None]


# ---------------------------------------------------------------------- reading
def read_perturbseq(
    path: DataSource,
    spec: ColumnSpec | None = None,
    backed: bool = False,
    spec_is_default: Sequence[str] | None = None,
) -> PerturbData:
    """Read and validate a Perturb-seq data set: an ``.h5ad`` file or an in-memory AnnData.

    Parameters
    ----------
    path
        The ``.h5ad`` file, or an :class:`anndata.AnnData` (used as it is, not copied; see
        :mod:`ptrag.data.sources`). :attr:`PerturbData.path` is then a label such as
        ``<AnnData 1200 x 500>``.
    spec
        Where perturbation, cell type, batch, control label and expression are.
    backed
        Stream expression from disk instead of loading it (for files larger than memory);
        ignored, with a note, for an in-memory AnnData.
    spec_is_default
        Names of the spec fields the user left at their defaults; a default column that is
        absent is then tolerated (cell type, batch) or explained (perturbation). When
        ``None``, every field equal to :class:`ColumnSpec`'s default counts as a default.

    Returns
    -------
    PerturbData
        The validated data set.

    Raises
    ------
    PtragError
        For a source that is neither a path nor an AnnData, a missing or unreadable file, a
        missing column, an absent control label, or NaN / Inf / negative expression.
    """
    spec = spec or ColumnSpec()
    if spec_is_default is None:
        spec_is_default = [f for f in ColumnSpec.__dataclass_fields__ if getattr(spec, f) == getattr(DEFAULT_SPEC, f)]
    adata, path, backed = open_source(path, backed)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise PtragError(f"{path} holds no cells or no genes ({adata.n_obs} x {adata.n_vars}).")
    check_names(adata.obs_names, None if spec.obsm_key else adata.var_names, path)

    spec = resolve_columns(adata.obs, spec, set(spec_is_default), path)
    obs = normalised_obs(adata.obs, spec, path)

    var_names, matrix, h5file = expression_source(adata, spec, path, backed)
    is_counts = detect_counts(matrix, adata.uns if not backed else _backed_uns(adata), obsm=spec.obsm_key is not None)
    prepared = find_prepared(path, spec.layer, adata.n_obs) if backed and spec.obsm_key is None else None
    if prepared is not None and bool(prepared.attrs.get("is_counts")) != is_counts:
        prepared.close()
        prepared = None
    totals = prepared.totals if prepared is not None else None
    data = PerturbData(path, spec, obs, var_names, matrix, is_counts, backed, h5file, totals=totals)
    data._obsm = adata.obsm
    if prepared is None:
        check_values(data)  # a prepared file's source was checked when it was prepared
    else:
        data._prepared = prepared
        log.info("%s: reading expression from its prepared file %s.", path, prepared.path)
    return data


def _backed_uns(adata) -> dict:
    try:
        return dict(adata.uns)
    except Exception:  # noqa: BLE001 -- uns is optional metadata
        return {}


def raw_chunks(data: PerturbData):
    """``(rows, block)`` over the raw expression: the whole matrix in memory, chunks when backed."""
    m = data._matrix
    if not data.backed:
        yield None, m
        return
    for start in range(0, data.n_cells, CHUNK_CELLS):
        r = np.arange(start, min(start + CHUNK_CELLS, data.n_cells))
        yield r, data._read_rows(r)
