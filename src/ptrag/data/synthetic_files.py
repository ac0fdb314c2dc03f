"""Files of the synthetic benchmark: the benchmark's three files and a large streaming ``.h5ad``.

:func:`write_benchmark` writes a :class:`~ptrag.data.synthetic.SyntheticBenchmark` to disk;
:func:`write_large_h5ad` writes a much larger, simpler Perturb-seq-like file chunk by chunk (for
streaming benchmarks) without ever holding the whole matrix in memory.
"""

from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.synthetic_constants import CONTROL_LABEL, DATA_FILE, GENES_FILE, GROUND_TRUTH_FILE, GT_COLUMNS
from ptrag.data.synthetic_draws import cell_type_names, nb_counts
from ptrag.errors import PtragError, atomic_path

if TYPE_CHECKING:
    from ptrag.data.synthetic import SyntheticBenchmark

log = logging.getLogger("ptrag")


def write_benchmark(bench: SyntheticBenchmark, out_dir: str | Path) -> dict[str, Path]:
    """Write the benchmark's three files atomically.

    Parameters
    ----------
    bench
        The output of :func:`simulate`.
    out_dir
        Folder to write into (created if missing); existing files of the same names are
        replaced.

    Returns
    -------
    dict[str, pathlib.Path]
        ``"data"`` -> ``out_dir/perturbseq.h5ad``, ``"genes"`` -> ``out_dir/genept.pkl`` (GenePT
        pickle: dict symbol -> list of floats), ``"ground_truth"`` -> ``out_dir/ground_truth.csv``
        (columns ``cell_type``, ``query``, ``informative``: one row per informative pair).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PtragError(f"--out {out} exists and is not a folder: pass a folder path.")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "data": out / DATA_FILE,
        "genes": out / GENES_FILE,
        "ground_truth": out / GROUND_TRUTH_FILE,
    }
    with atomic_path(paths["data"]) as tmp:
        bench.adata.write_h5ad(tmp, compression="gzip")
    table = {g: [float(x) for x in np.asarray(v, dtype=np.float32)] for g, v in bench.gene_table.items()}
    with atomic_path(paths["genes"]) as tmp, open(tmp, "wb") as fh:
        pickle.dump(table, fh, protocol=4)
    with atomic_path(paths["ground_truth"]) as tmp:
        bench.ground_truth[list(GT_COLUMNS)].to_csv(tmp, index=False, lineterminator="\n")
    return paths


# --------------------------------------------------------------------------------------------
# large streaming file

_LARGE_BLOCK = 4096  # cells per random block; values do not depend on chunk_cells
_LARGE_SALT = 0x1A46E  # mixed into the seed of every draw of write_large_h5ad


def _check_large_options(**options: int) -> None:
    """Raise :class:`~ptrag.errors.PtragError` naming the first invalid option of :func:`write_large_h5ad`."""
    for name, value in options.items():
        lo = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise PtragError(f"option {name} must be an integer >= {lo}, got {value!r}.")
    if options["n_cell_types"] > 26:
        raise PtragError(f"option n_cell_types must be at most 26, got {options['n_cell_types']}.")


@dataclass
class _LargeDesign:
    """Everything :func:`write_large_h5ad` draws up front; :meth:`block` draws the values.

    Attributes
    ----------
    seed
        The random seed.
    log_prop
        Cell types x genes log expression proportions.
    theta
        Per-gene negative-binomial inverse dispersion.
    effect_idx, effect_val
        Genes each perturbation shifts (perturbations x k) and the shifts (cell types x
        perturbations x k).
    lib_mean
        Mean log library size.
    ct_code, pert_code
        Per cell, its cell type and its perturbation (0 = control, ``p + 1`` = perturbation p).
    """

    seed: int
    log_prop: np.ndarray
    theta: np.ndarray
    effect_idx: np.ndarray
    effect_val: np.ndarray
    lib_mean: float
    ct_code: np.ndarray
    pert_code: np.ndarray

    def block(self, b: int) -> sp.csr_matrix:
        """The ``log1p``-normalised float32 values of cells ``[b * 4096, (b + 1) * 4096)``."""
        n_cells = self.ct_code.size
        lo, hi = b * _LARGE_BLOCK, min(n_cells, (b + 1) * _LARGE_BLOCK)
        rng = np.random.default_rng([self.seed, _LARGE_SALT, b + 1])
        ct, pc = self.ct_code[lo:hi], self.pert_code[lo:hi]
        log_mu = self.log_prop[ct] + rng.normal(self.lib_mean, 0.35, hi - lo)[:, None]
        rows = np.nonzero(pc > 0)[0]
        if rows.size:
            p = pc[rows] - 1
            np.add.at(log_mu, (rows[:, None], self.effect_idx[p]), self.effect_val[ct[rows], p])
        counts = nb_counts(rng, np.exp(log_mu), self.theta[None, :]).astype(np.float32)
        totals = counts.sum(axis=1, keepdims=True)
        values = np.log1p(counts * (1e4 / np.maximum(totals, 1.0)))
        return sp.csr_matrix(values.astype(np.float32))


def _large_design(
    seed: int, n_cells: int, n_genes: int, n_cell_types: int, n_perturbations: int
) -> tuple[_LargeDesign, pd.DataFrame, pd.DataFrame]:
    """Name the genes, draw their parameters, the perturbation effects and the interleaved cells.

    Returns
    -------
    design : _LargeDesign
        The parameters the value blocks are drawn from.
    obs : pandas.DataFrame
        Categorical ``gene``, ``cell_type``, ``gem_group`` (two batches per cell type).
    var : pandas.DataFrame
        Gene names (``GENE00001``, ...) as index, no columns.
    """
    cell_types = cell_type_names(n_cell_types)
    pwidth = max(4, len(str(n_perturbations)))
    perts = [f"PERT{i:0{pwidth}d}" for i in range(1, n_perturbations + 1)]
    gwidth = max(5, len(str(n_genes)))
    var = pd.DataFrame(index=pd.Index([f"GENE{i:0{gwidth}d}" for i in range(1, n_genes + 1)]))
    rng_meta = np.random.default_rng(np.random.SeedSequence([seed, _LARGE_SALT]).spawn(1)[0])
    # gene parameters
    log_prop = rng_meta.normal(0.0, 1.6, (n_cell_types, n_genes))
    log_prop -= np.log(np.exp(log_prop).sum(axis=1, keepdims=True))
    theta = np.exp(rng_meta.normal(math.log(1.5), 0.5, n_genes))
    k = max(1, n_genes // 20)
    effect_idx = np.stack([rng_meta.choice(n_genes, k, replace=False) for _ in range(n_perturbations)])
    effect_val = rng_meta.normal(0.0, 0.7, (n_cell_types, n_perturbations, k))
    lib_mean = math.log(0.25 * n_genes)
    # obs: interleaved cells
    ct_code = rng_meta.integers(0, n_cell_types, n_cells)
    is_ctrl = rng_meta.random(n_cells) < 0.05
    pert_code = np.where(is_ctrl, 0, rng_meta.integers(1, n_perturbations + 1, n_cells))
    batch = rng_meta.integers(0, 2, n_cells)
    gem_cats = [f"{ct}_{b + 1}" for ct in cell_types for b in range(2)]
    obs = pd.DataFrame(
        {
            "gene": pd.Categorical.from_codes(pert_code, categories=[CONTROL_LABEL, *perts]),
            "cell_type": pd.Categorical.from_codes(ct_code, categories=cell_types),
            "gem_group": pd.Categorical.from_codes(ct_code * 2 + batch, categories=gem_cats),
        },
        index=pd.Index([f"cell{i:08d}" for i in range(n_cells)]),
    )
    design = _LargeDesign(seed, log_prop, theta, effect_idx, effect_val, lib_mean, ct_code, pert_code)
    return design, obs, var


class _CsrAppender:
    """The ``X`` group of an open ``.h5ad``: CSR rows appended in chunks of ``chunk_cells`` cells.

    ``data`` and ``indices`` are resizable datasets grown at every flush; ``indptr`` is written
    in place. Rows are buffered by :meth:`append` and written by :meth:`flush`.
    """

    def __init__(self, f: h5py.File, n_cells: int, n_genes: int, chunk_cells: int) -> None:
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        chunk = max(1, min(1 << 20, chunk_cells * max(1, n_genes // 8)))
        self.data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(chunk,))
        self.indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,))
        self.indptr = g.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        self.indptr[0] = 0
        self.chunk_cells = chunk_cells
        self.nnz = 0
        self.row = 0
        self.pending: list[sp.csr_matrix] = []
        self.pending_rows = 0

    def append(self, m: sp.csr_matrix) -> None:
        """Buffer the rows of ``m``, flushing whenever ``chunk_cells`` rows are pending."""
        start = 0
        while start < m.shape[0]:
            take = min(m.shape[0] - start, self.chunk_cells - self.pending_rows)
            self.pending.append(m[start : start + take])
            self.pending_rows += take
            start += take
            if self.pending_rows >= self.chunk_cells:
                self.flush()

    def flush(self) -> None:
        """Write the pending rows to the file."""
        if not self.pending:
            return
        nnz = self.nnz
        total = nnz + sum(m.nnz for m in self.pending)
        self.data.resize((total,))
        self.indices.resize((total,))
        for m in self.pending:
            self.data[nnz : nnz + m.nnz] = m.data
            self.indices[nnz : nnz + m.nnz] = m.indices.astype(np.int32)
            self.indptr[self.row + 1 : self.row + m.shape[0] + 1] = m.indptr[1:].astype(np.int64) + nnz
            nnz += m.nnz
            self.row += m.shape[0]
        self.nnz = nnz
        self.pending, self.pending_rows = [], 0


def _write_large_header(f: h5py.File, obs: pd.DataFrame, var: pd.DataFrame) -> None:
    """Write the file attributes and every element of the ``.h5ad`` but ``X``."""
    f.attrs["encoding-type"] = "anndata"
    f.attrs["encoding-version"] = "0.1.0"
    ad.io.write_elem(f, "obs", obs)
    ad.io.write_elem(f, "var", var)
    for key in ("layers", "obsm", "obsp", "varm", "varp"):
        ad.io.write_elem(f, key, {})
    ad.io.write_elem(f, "uns", {"log1p": {"base": None}})


def write_large_h5ad(
    path: str | Path,
    n_cells: int,
    n_genes: int,
    seed: int = 0,
    chunk_cells: int = 50_000,
    n_cell_types: int = 4,
    n_perturbations: int = 200,
) -> Path:
    """Write a large Perturb-seq-like CSR ``.h5ad`` chunk by chunk, never holding the whole matrix.

    ``obs`` (``gene``, ``cell_type``, ``gem_group``; cells interleaved at random, about 5% of
    them ``non-targeting``) and ``var`` are written with :func:`anndata.io.write_elem`; ``X`` is a
    ``csr_matrix`` group whose ``data`` / ``indices`` / ``indptr`` are resizable HDF5 datasets
    appended to per chunk. Values are ``log1p`` of counts normalised to 10,000 per cell
    (negative-binomial counts, about 85% zeros), float32. The values depend only on ``seed``
    and the sizes, not on ``chunk_cells``.

    Parameters
    ----------
    path
        Output ``.h5ad`` (written atomically).
    n_cells, n_genes
        Matrix shape.
    seed
        Random seed.
    chunk_cells
        Cells appended to the file per write. Peak memory is a dense generation block of 4096
        cells (a few arrays of ``4096 * n_genes`` float64) plus the non-zeros of one pending
        chunk (about ``chunk_cells * n_genes * 0.15 * 8`` bytes); ``obs`` is held in memory.
    n_cell_types, n_perturbations
        Number of cell types and of perturbed genes.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    _check_large_options(
        n_cells=n_cells,
        n_genes=n_genes,
        chunk_cells=chunk_cells,
        n_cell_types=n_cell_types,
        n_perturbations=n_perturbations,
        seed=seed,
    )
    path = Path(path)
    design, obs, var = _large_design(seed, n_cells, n_genes, n_cell_types, n_perturbations)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_large_header(f, obs, var)
        writer = _CsrAppender(f, n_cells, n_genes, chunk_cells)
        for b in range(-(-n_cells // _LARGE_BLOCK)):
            # blocks of 4096 cells; written whenever chunk_cells cells are pending
            writer.append(design.block(b))
        writer.flush()
        log.info("wrote %d cells x %d genes (%d non-zeros) to %s", n_cells, n_genes, writer.nnz, path)
    return path
