"""Writing a prepared file (``ptrag prepare``): see :mod:`ptrag.data.prepared` for the layout.

The source is read once, in file order, chunk by chunk (normalised and restricted to the genes
exactly as :meth:`PerturbData.expression` does, so a prepared read equals a source read). Each
chunk's rows go to the temporary bucket file of the range of prepared rows they land in; each
bucket (at most about ``bucket_mib``) is then loaded, put in prepared order and written into the
contiguous ``data`` / ``indices`` datasets. Memory: one source chunk plus one bucket, plus a few
integers per cell; the output appears only when complete (written to a temporary file first).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from ptrag.data.io import CHUNK_CELLS, PerturbData
from ptrag.data.prepared import PREPARED_FORMAT, PREPARED_VERSION, check_prepared_genes, source_fingerprint
from ptrag.errors import PtragError, atomic_path

log = logging.getLogger("ptrag")

#: Files of one bucket: what each holds per row or per non-zero, and its dtype (indices: set later).
_BUCKET_PARTS = ("position", "nnz", "indices", "data")


def group_order(data: PerturbData) -> np.ndarray:
    """Source rows in prepared order: every cell type's controls, then each (cell type,
    perturbation) group, sorted; excluded cells (combinations) last; file order within."""
    o = data.obs
    kind = np.where(o["is_control"].to_numpy(), 0, np.where(o["keep"].to_numpy(), 1, 2))
    ct = o["cell_type"].astype(str).to_numpy()
    pert = np.where(kind == 0, "", o["perturbation"].astype(str).to_numpy())
    return np.lexsort((np.arange(len(o)), pert, ct, kind)).astype(np.int64)


def write_prepared(
    data: PerturbData,
    out: str | Path,
    genes: Sequence[str] = (),
    bucket_mib: int = 256,
    chunk: int = CHUNK_CELLS,
) -> Path:
    """Write the prepared file of a backed data set (see the module docstring).

    Parameters
    ----------
    data
        The source, read with ``backed=True`` from an ``.h5ad`` file.
    out
        The prepared file (:func:`ptrag.data.prepared.prepared_path` is where ``--backed``
        reads look for it).
    genes
        Genes to keep, in order (all of the source's when empty).
    bucket_mib
        Size of one reordering bucket (the writer's memory beyond one chunk).
    chunk
        Source cells read at a time.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    PtragError
        For a source that is not a backed ``.h5ad`` file, or genes absent from it.
    """
    if not data.backed or not isinstance(data.path, Path) or data.spec.obsm_key is not None:
        raise PtragError("ptrag prepare reads an .h5ad file backed (its X or a --layer), not obsm or an AnnData.")
    genes = check_prepared_genes(list(genes), data.var_names, str(data.path))
    gidx = data.gene_index(genes)
    order = group_order(data)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    idx_dtype = np.uint16 if len(genes) < 2**16 else np.int32
    out = Path(out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".ptrag-prepare-", dir=out.parent) as tmp:
        rows_per_bucket = _rows_per_bucket(data, len(genes), bucket_mib)
        row_nnz = _write_buckets(data, gidx, position, rows_per_bucket, Path(tmp), idx_dtype, chunk)
        indptr = np.concatenate([[0], np.cumsum(row_nnz)]).astype(np.int64)
        with atomic_path(out) as part, h5py.File(part, "w") as f:
            _write_header(f, data, genes, position, indptr, idx_dtype)
            for b, start in enumerate(range(0, data.n_cells, rows_per_bucket)):
                _write_bucket(f, Path(tmp), b, start, indptr, len(genes), idx_dtype)
    log.info(
        "prepared %s: %d cells x %d genes, %d non-zeros, in %.1f s -> %s",
        data.path.name,
        data.n_cells,
        len(genes),
        int(indptr[-1]),
        time.perf_counter() - t0,
        out,
    )
    return out


def _rows_per_bucket(data: PerturbData, n_genes: int, bucket_mib: int) -> int:
    """Prepared rows per bucket so that one bucket holds about ``bucket_mib`` of non-zeros
    (estimated from the source's non-zeros and the share of its genes kept)."""
    nnz = getattr(data._matrix, "nnz", None)
    if nnz is None:  # dense source
        nnz = data.n_cells * len(data.var_names)
    per_row = max(float(nnz) / max(data.n_cells, 1) * n_genes / max(len(data.var_names), 1), 1.0) * 6 + 12
    return max(int(bucket_mib * 2**20 / per_row), 1024)


def _normalised_chunk(data: PerturbData, rows: np.ndarray, gidx: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (sorted) of the source, log-normalised and restricted to ``gidx``, as CSR."""
    block = data.normalised_rows(rows)
    block = block[:, gidx] if sp.issparse(block) else sp.csr_matrix(block[:, gidx])
    block = sp.csr_matrix(block, dtype=np.float32)
    block.eliminate_zeros()
    return block


def _write_buckets(data, gidx, position, rows_per_bucket, tmp: Path, idx_dtype, chunk: int) -> np.ndarray:
    """Read the source once and append each row to its bucket's files; return the non-zeros
    of every prepared row."""
    row_nnz = np.zeros(data.n_cells, dtype=np.int64)
    n_buckets = -(-data.n_cells // rows_per_bucket)
    with contextlib.ExitStack() as stack:
        files = {
            (b, part): stack.enter_context(open(tmp / f"{b}.{part}", "ab"))
            for b in range(n_buckets)
            for part in _BUCKET_PARTS
        }
        for start in range(0, data.n_cells, chunk):
            rows = np.arange(start, min(start + chunk, data.n_cells))
            block = _normalised_chunk(data, rows, gidx)
            pos = position[rows]
            counts = np.diff(block.indptr)
            row_nnz[pos] = counts
            bucket = pos // rows_per_bucket
            for b in np.unique(bucket):
                sel = np.flatnonzero(bucket == b)
                sub = block[sel]
                files[(b, "position")].write(pos[sel].astype(np.int64).tobytes())
                files[(b, "nnz")].write(counts[sel].astype(np.int64).tobytes())
                files[(b, "indices")].write(sub.indices.astype(idx_dtype).tobytes())
                files[(b, "data")].write(sub.data.astype(np.float32).tobytes())
    return row_nnz


def _write_header(f: h5py.File, data: PerturbData, genes, position, indptr, idx_dtype) -> None:
    """Attributes, genes, row positions, totals and the (contiguous) ``X`` datasets."""
    f.attrs.update(
        format=PREPARED_FORMAT,
        version=PREPARED_VERSION,
        source=data.path.name,
        layer=data.spec.layer or "",
        n_cells=data.n_cells,
        n_controls=int(data.obs["is_control"].sum()),
        is_counts=bool(data.is_counts),
        target_sum=float(data.target_sum or 0.0),
        **source_fingerprint(data.path),
    )
    f.create_dataset("var_names", data=np.array(genes, dtype=object), dtype=h5py.string_dtype())
    f.create_dataset("position", data=position)
    if data.is_counts:
        f.create_dataset("totals", data=data._totals)
    x = f.create_group("X")
    x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (data.n_cells, len(genes))})
    x.create_dataset("indptr", data=indptr)
    nnz = int(indptr[-1])
    x.create_dataset("data", shape=(nnz,), dtype=np.float32)  # contiguous: read by a memory map
    x.create_dataset("indices", shape=(nnz,), dtype=idx_dtype)


def _write_bucket(f: h5py.File, tmp: Path, b: int, start: int, indptr: np.ndarray, n_genes: int, idx_dtype) -> None:
    """Load bucket ``b`` (prepared rows from ``start``), order its rows and write them."""
    pos = np.fromfile(tmp / f"{b}.position", dtype=np.int64)
    if len(pos) == 0:
        return
    nnz = np.fromfile(tmp / f"{b}.nnz", dtype=np.int64)
    block = sp.csr_matrix(
        (
            np.fromfile(tmp / f"{b}.data", dtype=np.float32),
            np.fromfile(tmp / f"{b}.indices", dtype=idx_dtype).astype(np.int64),
            np.concatenate([[0], np.cumsum(nnz)]),
        ),
        shape=(len(pos), n_genes),
    )
    block = block[np.argsort(pos)]
    lo, hi = int(indptr[start]), int(indptr[start + len(pos)])
    if hi - lo != block.nnz:
        raise PtragError(f"internal error: bucket {b} holds {block.nnz} non-zeros, {hi - lo} expected.")
    if hi > lo:
        f["X/data"][lo:hi] = block.data
        f["X/indices"][lo:hi] = block.indices.astype(idx_dtype)
    for part in _BUCKET_PARTS:
        (tmp / f"{b}.{part}").unlink()
