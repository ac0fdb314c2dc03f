"""Reading and validating Perturb-seq AnnData files.

One function, :func:`read_perturbseq`, turns a user's ``.h5ad`` file into a
:class:`PerturbData`: normalised cell metadata (perturbation, cell type, batch, control flag)
plus row access to log-normalised expression, either in memory or streamed from disk
(``backed=True``) for files larger than RAM. Every problem a user can fix is raised as a
:class:`~ptrag.errors.PtragError` that names the file, column or label at fault.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.checks import available_memory, check_fits_in_memory, check_labels, check_names
from ptrag.errors import PtragError

log = logging.getLogger("ptrag")

#: Alternatives that users' files often carry instead of the defaults.
_ALTERNATIVES = {
    "pert_col": ("target_gene", "perturbation", "gene_symbol", "condition", "guide_target", "gene"),
    "cell_type_col": ("cell_line", "celltype", "cell_type", "cell_type_name"),
    "batch_col": ("batch", "gem_group", "gemgroup", "plate"),
    "control": ("non-targeting", "control", "ctrl", "non_targeting", "NT", "nontargeting"),
}

#: Cells read per chunk when streaming a backed file.
CHUNK_CELLS = 20_000


@dataclass(frozen=True)
class ColumnSpec:
    """Where the metadata and the expression of a Perturb-seq file are.

    Parameters
    ----------
    pert_col
        obs column with the perturbed gene of each cell.
    cell_type_col
        obs column with the cell type; ``None`` for a data set with one cell type.
    batch_col
        obs column with the batch (gem group); ``None`` for none.
    control
        Label of control cells in ``pert_col``.
    layer
        Read expression from ``adata.layers[layer]`` instead of ``X``.
    obsm_key
        Read expression from ``adata.obsm[obsm_key]`` instead of ``X``.
    """

    pert_col: str = "gene"
    cell_type_col: str | None = "cell_type"
    batch_col: str | None = "gem_group"
    control: str = "non-targeting"
    layer: str | None = None
    obsm_key: str | None = None

    def to_dict(self) -> dict:
        """The spec as a TOML-friendly dict (``None`` written as ``""``)."""
        return {k: ("" if v is None else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ColumnSpec:
        """Inverse of :meth:`to_dict`."""
        fields = {f: d.get(f, getattr(cls(), f)) for f in cls.__dataclass_fields__}
        for k in ("cell_type_col", "batch_col", "layer", "obsm_key"):
            if fields[k] == "":
                fields[k] = None
        return cls(**fields)


#: Column defaults that are silently dropped when absent (optional metadata).
_DEFAULT = ColumnSpec()


class PerturbData:
    """A validated Perturb-seq data set.

    Attributes
    ----------
    path
        The file it was read from.
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
        path: Path,
        spec: ColumnSpec,
        obs: pd.DataFrame,
        var_names: list[str],
        matrix,
        is_counts: bool,
        backed: bool,
        h5file: h5py.File | None = None,
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
        if is_counts:
            totals = self._row_totals()
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
        uniq, inverse = np.unique(rows, return_inverse=True)
        block = self._read_rows(uniq)
        if self._size_factors is not None:
            block = _scale_rows(block, self._size_factors[uniq])
            block = block.log1p() if sp.issparse(block) else np.log1p(block)
        if gidx is not None:
            block = block[:, gidx]
        dense = block.toarray() if sp.issparse(block) else np.asarray(block)
        return dense.astype(np.float32, copy=False)[inverse]

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
    path: str | Path,
    spec: ColumnSpec | None = None,
    backed: bool = False,
    spec_is_default: Sequence[str] | None = None,
) -> PerturbData:
    """Read and validate a Perturb-seq ``.h5ad`` file.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    spec
        Where perturbation, cell type, batch, control label and expression are.
    backed
        Stream expression from disk instead of loading it (for files larger than memory).
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
        For a missing or unreadable file, a missing column, an absent control label, or
        NaN / Inf / negative expression.
    """
    spec = spec or ColumnSpec()
    path = Path(path)
    if spec_is_default is None:
        spec_is_default = [f for f in ColumnSpec.__dataclass_fields__ if getattr(spec, f) == getattr(_DEFAULT, f)]
    if not path.exists():
        raise PtragError(f"data file not found: {path}. Check the path given to --data.")
    if path.is_dir():
        raise PtragError(f"{path} is a folder; --data takes an .h5ad file.")
    if not h5py.is_hdf5(path):
        raise PtragError(
            f"{path} is not an .h5ad (HDF5) file. Convert it to AnnData first "
            "(e.g. scanpy.read_10x_h5 / anndata.read_csv, then .write_h5ad)."
        )
    if not backed:
        check_fits_in_memory(path)
    h5file = None
    try:
        adata = ad.read_h5ad(path, backed="r") if backed else ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise PtragError(f"{path} could not be read as AnnData ({exc}); is the file complete?") from exc
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise PtragError(f"{path} holds no cells or no genes ({adata.n_obs} x {adata.n_vars}).")
    check_names(adata.obs_names, None if spec.obsm_key else adata.var_names, path)

    spec = _resolve_columns(adata.obs, spec, set(spec_is_default), path)
    obs = _normalised_obs(adata.obs, spec, path)

    var_names, matrix, h5file = _expression_source(adata, spec, path, backed)
    is_counts = detect_counts(matrix, adata.uns if not backed else _backed_uns(adata), obsm=spec.obsm_key is not None)
    data = PerturbData(path, spec, obs, var_names, matrix, is_counts, backed, h5file)
    data._obsm = adata.obsm
    _check_values(data)
    return data


def _backed_uns(adata) -> dict:
    try:
        return dict(adata.uns)
    except Exception:  # noqa: BLE001 -- uns is optional metadata
        return {}


def _resolve_columns(obs: pd.DataFrame, spec: ColumnSpec, defaults: set[str], path: Path) -> ColumnSpec:
    cols = list(obs.columns)

    def suggest(kind: str, current: str | None) -> list[str]:
        return [c for c in _ALTERNATIVES[kind] if c in cols and c != current]

    if spec.pert_col not in cols:
        alt = suggest("pert_col", spec.pert_col)
        hint = (
            f" This file has {alt[0]!r}: pass --pert-col {alt[0]}."
            if alt
            else f" Its obs columns are: {', '.join(cols)}."
        )
        raise PtragError(f"{path}: obs column {spec.pert_col!r} (perturbation) not found.{hint}")
    changes = {}
    if spec.cell_type_col is not None and spec.cell_type_col not in cols:
        alt = suggest("cell_type_col", spec.cell_type_col)
        if "cell_type_col" in defaults and not alt:
            log.info("%s has no %r column: treating it as one cell type.", path.name, spec.cell_type_col)
            changes["cell_type_col"] = None
        else:
            hint = (
                f" This file has {alt[0]!r}: pass --cell-type-col {alt[0]}."
                if alt
                else f" Pass --cell-type-col '' for a single cell type; obs columns are: {', '.join(cols)}."
            )
            raise PtragError(f"{path}: obs column {spec.cell_type_col!r} (cell type) not found.{hint}")
    if spec.batch_col is not None and spec.batch_col not in cols:
        if "batch_col" in defaults:
            changes["batch_col"] = None
        else:
            raise PtragError(
                f"{path}: obs column {spec.batch_col!r} (batch) not found; pass --batch-col '' for none "
                f"or one of: {', '.join(cols)}."
            )
    check_labels(obs, ColumnSpec(**{**asdict(spec), **changes}), path)
    labels = obs[spec.pert_col].astype(str).str.strip()  # labels are compared stripped
    if not (labels == spec.control).any():
        alt = [c for c in labels.unique() if c.lower() == spec.control.strip().lower()]
        alt += [c for c in _ALTERNATIVES["control"] if (labels == c).any() and c != spec.control]
        common = labels.value_counts().index[:5].tolist()
        hint = (
            f" This file labels controls {alt[0]!r}: pass --control {alt[0]}."
            if alt
            else f" Most common labels: {', '.join(common)}."
        )
        raise PtragError(
            f"{path}: control label {spec.control!r} does not occur in obs column {spec.pert_col!r}.{hint}"
        )
    if changes:
        spec = ColumnSpec(**{**asdict(spec), **changes})
    return spec


def _normalised_obs(obs: pd.DataFrame, spec: ColumnSpec, path: Path) -> pd.DataFrame:
    pert = obs[spec.pert_col].astype(str).str.strip().to_numpy()
    if spec.cell_type_col is not None:
        ct = obs[spec.cell_type_col].astype(str).to_numpy()
    else:
        ct = np.full(len(obs), "all", dtype=object)
    is_control = pert == spec.control
    combo = np.array(["+" in p for p in pert]) & ~is_control
    # GEARS style "A+ctrl": a single perturbation written as a combination with the control.
    single = pert.copy()
    for i in np.flatnonzero(combo):
        parts = [p for p in pert[i].split("+") if p and p not in (spec.control, "ctrl")]
        if len(parts) == 1:
            single[i] = parts[0]
            combo[i] = False
        elif not parts:
            is_control[i] = True
            combo[i] = False
    if combo.any():
        n_pert = len(set(pert[combo]))
        log.warning(
            "%s: excluded %d cells of %d combination perturbations (e.g. %s): ptrag predicts "
            "single-gene perturbations.",
            path.name,
            int(combo.sum()),
            n_pert,
            pert[combo][0],
        )
    out = pd.DataFrame(
        {
            "perturbation": np.where(is_control, spec.control, single),
            "cell_type": ct,
            "batch": obs[spec.batch_col].astype(str).to_numpy() if spec.batch_col else None,
            "is_control": is_control,
            "keep": ~combo,
        },
        index=obs.index.astype(str),
    )
    return out


def _expression_source(adata, spec: ColumnSpec, path: Path, backed: bool):
    if spec.layer is not None and spec.obsm_key is not None:
        raise PtragError("pass at most one of --layer and --obsm-key.")
    h5file = None
    if spec.obsm_key is not None:
        if spec.obsm_key not in adata.obsm:
            raise PtragError(
                f"{path}: obsm key {spec.obsm_key!r} not found; available: {', '.join(adata.obsm.keys()) or 'none'}."
            )
        m = adata.obsm[spec.obsm_key]
        m = m.to_numpy() if isinstance(m, pd.DataFrame) else m
        n = m.shape[1]
        hv = adata.var.get("highly_variable")
        if n == adata.n_vars:
            names = list(map(str, adata.var_names))
        elif hv is not None and int(np.sum(hv)) == n:
            names = list(map(str, adata.var_names[np.asarray(hv, bool)]))
        else:
            names = [f"{spec.obsm_key}_{i}" for i in range(n)]
        matrix = sp.csr_matrix(m) if sp.issparse(m) else np.asarray(m)
        return names, matrix, None
    names = list(map(str, adata.var_names))
    if spec.layer is not None:
        if spec.layer not in adata.layers:
            raise PtragError(
                f"{path}: layer {spec.layer!r} not found; available: {', '.join(adata.layers.keys()) or 'none'}."
            )
        if not backed:
            return names, _as_row_matrix(adata.layers[spec.layer]), None
        h5file = h5py.File(path, "r")
        return names, _h5_matrix(h5file[f"layers/{spec.layer}"]), h5file
    if adata.X is None:
        raise PtragError(f"{path}: X is empty; pass --layer or --obsm-key to say where the expression is.")
    if not backed:
        return names, _as_row_matrix(adata.X), None
    h5file = h5py.File(path, "r")
    return names, _h5_matrix(h5file["X"]), h5file


def _as_row_matrix(m):
    if sp.issparse(m):
        return m.tocsr() if not isinstance(m, sp.csr_matrix) else m
    return np.asarray(m)


def _h5_matrix(node):
    if isinstance(node, h5py.Dataset):
        return node
    enc = node.attrs.get("encoding-type", "")
    if enc != "csr_matrix":
        raise PtragError(
            f"backed reading needs CSR or dense expression, found {enc!r}; rewrite the file with "
            "X as CSR (adata.X = scipy.sparse.csr_matrix(adata.X)) or use --in-memory."
        )
    return ad.io.sparse_dataset(node)


def detect_counts(matrix, uns, obsm: bool = False, n_rows: int = 2000) -> bool:
    """Decide whether a matrix holds raw counts rather than log-normalised values.

    Counts: all sampled non-zero values are integers and ``uns`` has no ``log1p`` entry.
    ``obsm`` embeddings are never counts.

    Parameters
    ----------
    matrix
        In-memory or backed cells x genes matrix.
    uns
        The file's ``uns`` mapping.
    obsm
        Whether the matrix comes from ``obsm``.
    n_rows
        How many leading rows to sample.

    Returns
    -------
    bool
    """
    if obsm or "log1p" in uns:
        return False
    n = min(n_rows, matrix.shape[0])
    block = matrix[np.arange(n)] if isinstance(matrix, h5py.Dataset) else matrix[:n]
    vals = block.data if sp.issparse(block) else np.asarray(block).ravel()
    vals = vals[np.isfinite(vals) & (vals != 0)]
    if vals.size == 0:
        return False
    return bool(np.all(np.equal(np.mod(vals, 1), 0)) and vals.max() > 1)


def _check_values(data: PerturbData) -> None:
    where = (
        f"layer {data.spec.layer!r}"
        if data.spec.layer
        else (f"obsm {data.spec.obsm_key!r}" if data.spec.obsm_key else "X")
    )
    for _, block in _raw_chunks(data):
        vals = block.data if sp.issparse(block) else np.asarray(block)
        if not np.all(np.isfinite(vals)):
            raise PtragError(f"{data.path}: {where} contains NaN or Inf values; fix or drop those cells before use.")
        if data.spec.obsm_key is None and np.any(vals < 0):
            raise PtragError(
                f"{data.path}: {where} contains negative expression values; ptrag expects counts or "
                "log1p-normalised expression (scaled / centred data cannot be used: pass --layer with "
                "the unscaled values)."
            )


def _raw_chunks(data: PerturbData):
    m = data._matrix
    if not data.backed:
        yield None, m
        return
    for start in range(0, data.n_cells, CHUNK_CELLS):
        r = np.arange(start, min(start + CHUNK_CELLS, data.n_cells))
        yield r, data._read_rows(r)


# ------------------------------------------------------------------------- HVGs
def select_hvg(
    data: PerturbData,
    rows: np.ndarray,
    n_top: int = 2000,
    max_cells: int = 100_000,
    seed: int = 0,
) -> list[str]:
    """Highly variable genes (scanpy, ``seurat`` flavour) on the given (training) cells.

    Parameters
    ----------
    data
        The data set.
    rows
        Cells to compute dispersions on (training cells only, so that held-out data do not
        leak into the gene choice).
    n_top
        Number of genes; all genes (file order) when the file has at most ``n_top``.
    max_cells
        Subsample the rows (seeded) beyond this number.
    seed
        Seed of the subsample.

    Returns
    -------
    list of str
        Selected genes in file order.
    """
    import scanpy as sc

    if n_top < 1:
        raise PtragError(f"--n-genes must be at least 1 (got {n_top}).")
    if len(data.var_names) <= n_top:
        return list(data.var_names)
    rows = np.asarray(rows)
    if len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
    x = np.concatenate([e for _, e in data.iter_chunks(rows)]) if data.backed else data.expression(rows)
    sub = ad.AnnData(x, var=pd.DataFrame(index=data.var_names))
    sc.pp.highly_variable_genes(sub, n_top_genes=n_top, flavor="seurat")
    # scanpy may return more than n_top genes on ties; keep exactly n_top by rank.
    disp = np.nan_to_num(sub.var["dispersions_norm"].to_numpy(dtype=float), nan=-np.inf)
    top = np.sort(np.argsort(-disp, kind="stable")[:n_top])
    return [data.var_names[i] for i in top]
