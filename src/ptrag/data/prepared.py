"""Run-ready files: a Perturb-seq matrix rewritten once for fast on-disk (``--backed``) reading.

``ptrag prepare`` (:func:`ptrag.data.prepare_write.write_prepared`) writes, beside the source
``.h5ad`` (``NAME.h5ad`` -> ``NAME.h5ad.ptrag.h5``, or in ``$PTRAG_PREPARED_DIR``), an HDF5
file holding the expression that training reads: log-normalised (counts normalised as
:class:`~ptrag.data.io.PerturbData` does), restricted to the run's genes, its cells ordered by
group (controls of each cell type, then each (cell type, perturbation)), as an AnnData
``csr_matrix`` group ``X`` whose ``data`` / ``indices`` / ``indptr`` are contiguous (unchunked,
uncompressed) datasets; ``indices`` are ``uint16`` when there are fewer than 65,536 genes.

:class:`PreparedMatrix` reads it through a read-only memory map: a batch of rows is gathered
into a dense block by one compiled loop over the rows' non-zeros, with no HDF5 call per read.
The operating system's page cache holds the file between reads; the pages this process has
mapped are released from its resident memory (``madvise(MADV_DONTNEED)``) once they exceed
``touch_budget_mib``, so its memory stays bounded whatever the file's size.

:func:`find_prepared` is what ``read_perturbseq(..., backed=True)`` calls: a prepared file
whose recorded source size, modification time, layer and cell count match the source is used
transparently (and the source's validation pass is skipped: it was done at preparation); a
stale one is ignored with a warning.
"""

from __future__ import annotations

import functools
import logging
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from ptrag.errors import PtragError

log = logging.getLogger("ptrag")

#: Value of the ``format`` attribute of a prepared file.
PREPARED_FORMAT = "ptrag-prepared"
#: Layout version; files of another version are ignored (prepare them again).
PREPARED_VERSION = 1
#: Suffix appended to the source's file name.
PREPARED_SUFFIX = ".ptrag.h5"
#: Environment variable naming another folder for prepared files (read-only data folders).
PREPARED_DIR_ENV = "PTRAG_PREPARED_DIR"
#: Environment variable setting :class:`PreparedMatrix`'s resident budget in MiB (default 256).
MAP_BUDGET_ENV = "PTRAG_PREPARED_MAP_MIB"


def prepared_path(source: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Where the prepared file of ``source`` lives: beside it, or in ``out_dir``.

    Parameters
    ----------
    source
        The ``.h5ad`` file.
    out_dir
        Another folder (``$PTRAG_PREPARED_DIR`` is looked in by :func:`find_prepared`).

    Returns
    -------
    pathlib.Path
        ``SOURCE_NAME.ptrag.h5`` in ``out_dir`` or in the source's folder.
    """
    source = Path(source)
    folder = Path(out_dir) if out_dir is not None else source.parent
    return folder / (source.name + PREPARED_SUFFIX)


def source_fingerprint(source: str | os.PathLike) -> dict[str, int]:
    """Size and modification time (ns) of ``source``: what a prepared file records of it."""
    st = Path(source).stat()
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}


def _stale_reason(f: h5py.File, source: Path, layer: str | None, n_cells: int) -> str | None:
    """Why the open prepared file ``f`` does not belong to ``source`` (``None``: it does)."""
    a = f.attrs
    if a.get("format") != PREPARED_FORMAT or int(a.get("version", -1)) != PREPARED_VERSION:
        return "it is not a prepared file of this ptrag version"
    for key, value in source_fingerprint(source).items():
        if int(a.get(key, -1)) != value:
            return f"{source.name} changed since it was prepared ({key.removeprefix('source_')})"
    if str(a.get("layer", "")) != (layer or ""):
        return f"it holds layer {a.get('layer', '') or 'X'!r}, not {layer or 'X'!r}"
    if int(a.get("n_cells", -1)) != n_cells:
        return f"it holds {int(a.get('n_cells', -1))} cells, the source {n_cells}"
    return None


def find_prepared(source: str | os.PathLike, layer: str | None, n_cells: int) -> PreparedMatrix | None:
    """The prepared file of ``source`` if one matches it, else ``None``.

    Looks beside the source, then in ``$PTRAG_PREPARED_DIR``. A file that no longer matches
    (the source was rewritten, another layer) is ignored with a warning saying to run
    ``ptrag prepare`` again.

    Parameters
    ----------
    source
        The ``.h5ad`` file read backed.
    layer
        The layer read (``None``: ``X``).
    n_cells
        The source's number of cells.

    Returns
    -------
    PreparedMatrix or None
    """
    source = Path(source)
    candidates = [prepared_path(source)]
    if os.environ.get(PREPARED_DIR_ENV):
        candidates.append(prepared_path(source, os.environ[PREPARED_DIR_ENV]))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            with h5py.File(path, "r") as f:
                reason = _stale_reason(f, source, layer, n_cells)
        except OSError as e:
            reason = f"it cannot be read ({e})"
        if reason is None:
            return PreparedMatrix(path)
        log.warning("ignoring the prepared file %s: %s; run `ptrag prepare` again to use one.", path, reason)
    return None


#: Rows gathered between two checks of the resident memory.
_ROWS_PER_GATHER = 512
#: Resident growth per row read assumed where ``/proc/self/statm`` is missing (fault-around).
_BYTES_PER_ROW_ESTIMATE = 72 * 2**10
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _page_range(start: int, end: int) -> tuple[int, int]:
    """``(offset, length)`` of the whole pages inside bytes ``[start, end)`` (madvise needs
    page-aligned offsets)."""
    first = -(-start // _PAGE) * _PAGE
    return first, max(end - first, 0)


def _file_resident_bytes() -> int | None:
    """Resident shared (file-backed) bytes of this process, from ``/proc/self/statm``."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


@functools.cache
def _gather_kernel():
    """The compiled gather (numba is imported on first use, not with ``ptrag.data.io``)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def gather(indptr, data, indices, prep_rows, out_rows, col_map, out):  # pragma: no cover - compiled
        """``out[out_rows[i], col_map[indices[j]]] = data[j]`` for the non-zeros ``j`` of row
        ``prep_rows[i]`` (``col_map`` -1: a column not asked for)."""
        for i in range(prep_rows.shape[0]):
            r = prep_rows[i]
            o = out_rows[i]
            for j in range(indptr[r], indptr[r + 1]):
                c = col_map[indices[j]]
                if c >= 0:
                    out[o, c] = data[j]

    return gather


class PreparedMatrix:
    """Row access to a prepared file (see the module docstring).

    Parameters
    ----------
    path
        The prepared file.
    touch_budget_mib
        MiB of the file's pages resident in this process (checked every 512 rows read)
        past which they are released (they stay in the page cache); default
        ``$PTRAG_PREPARED_MAP_MIB``, else 256. A release makes the next reads fault their
        pages in again: a larger budget reads faster and holds more memory.

    Attributes
    ----------
    path
        The file.
    genes
        Its genes, in column order.
    attrs
        Its attributes (source fingerprint, layer, ``is_counts``, ``target_sum``, ...).
    totals
        Each source cell's total over all genes (counts data; ``None`` otherwise), so that
        the source's totals pass is not repeated.
    """

    def __init__(self, path: str | os.PathLike, touch_budget_mib: int | None = None) -> None:
        self.path = Path(path)
        if touch_budget_mib is None:  # checked before anything is opened
            value = os.environ.get(MAP_BUDGET_ENV, "256")
            if not value.strip().isdigit():
                raise PtragError(f"{MAP_BUDGET_ENV}={value!r}: give a whole number of MiB (e.g. 256), or unset it.")
            touch_budget_mib = int(value)
        with h5py.File(self.path, "r") as f:
            self.attrs = dict(f.attrs)
            self.genes = [g.decode() if isinstance(g, bytes) else str(g) for g in f["var_names"][:]]
            self._position = f["position"][:]  # source row -> prepared row
            self._indptr = f["X/indptr"][:]
            self.totals = f["totals"][:] if "totals" in f else None
            views = [(f[k].id.get_offset(), f[k].dtype) for k in ("X/data", "X/indices")]
        nnz = int(self._indptr[-1])
        self._file = open(self.path, "rb")  # noqa: SIM115 -- held until close()
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if nnz else None
        if self._map is not None and hasattr(mmap, "MADV_RANDOM"):
            self._map.madvise(mmap.MADV_RANDOM)  # rows are read scattered: no read-ahead per page fault
        (off_d, dt_d), (off_i, dt_i) = views
        # released ranges: everything after the controls (the first rows: reused by every set)
        kept = int(self._indptr[min(int(self.attrs.get("n_controls", 0)), len(self._indptr) - 1)])
        self._release = (
            [_page_range(off + kept * dt.itemsize, off + nnz * dt.itemsize) for off, dt in views] if nnz else []
        )
        self._data = np.frombuffer(self._map, dt_d, nnz, off_d) if nnz else np.zeros(0, dt_d)
        self._indices = np.frombuffer(self._map, dt_i, nnz, off_i) if nnz else np.zeros(0, dt_i)
        self._budget = int(touch_budget_mib) * 2**20
        self._touched = 0  # estimated growth since the last release (no /proc/self/statm)
        self._baseline = _file_resident_bytes() or 0  # file-backed resident bytes after it

    @property
    def n_cells(self) -> int:
        """Cells (rows) in the file."""
        return len(self._position)

    def column_map(self, source_columns: Sequence[int], source_genes: Sequence[str]) -> np.ndarray | None:
        """Map this file's columns to the output columns of a read of ``source_columns``.

        Parameters
        ----------
        source_columns
            Positions, in the source's genes ``source_genes``, of the genes to read, in order.
        source_genes
            The source's genes.

        Returns
        -------
        numpy.ndarray or None
            ``[len(genes)]`` int64: output column of each of this file's columns (-1: not
            read); ``None`` when some requested gene is not in this file, or one repeats.
        """
        col = {g: j for j, g in enumerate(self.genes)}
        wanted = [col.get(source_genes[i], -1) for i in source_columns]
        if min(wanted, default=0) < 0 or len(set(wanted)) != len(wanted):
            return None
        out = np.full(len(self.genes), -1, dtype=np.int64)
        out[np.asarray(wanted, dtype=np.int64)] = np.arange(len(wanted))
        return out

    def dense(self, rows: np.ndarray, col_map: np.ndarray, n_out: int) -> np.ndarray:
        """Dense float32 ``[len(rows), n_out]`` expression of source ``rows`` (any order, repeats
        allowed), columns placed by ``col_map`` (:meth:`column_map`)."""
        prep = self._position[np.asarray(rows, dtype=np.int64)]
        order = np.argsort(prep, kind="stable")  # read in file order
        out = np.zeros((len(prep), n_out), dtype=np.float32)
        for start in range(0, len(order), _ROWS_PER_GATHER):
            part = order[start : start + _ROWS_PER_GATHER]
            _gather_kernel()(self._indptr, self._data, self._indices, prep[part], part, col_map, out)
            self._release_if_over_budget(len(part))
        return out

    def _release_if_over_budget(self, n_rows: int) -> None:
        """Drop the file's pages from this process's resident memory once they exceed the
        budget (they stay in the page cache), except the controls' (every set reads some).
        Each row read maps the kernel's fault-around window (64 KiB by default), far more
        than its bytes: the growth is read from ``/proc/self/statm`` where there is one,
        else estimated per row."""
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        resident = _file_resident_bytes()
        if resident is None:
            self._touched += n_rows * _BYTES_PER_ROW_ESTIMATE
            grown = self._touched
        else:
            grown = resident - self._baseline
        if grown > self._budget:
            for start, length in self._release:
                if length > 0:
                    self._map.madvise(mmap.MADV_DONTNEED, start, length)
            self._baseline = _file_resident_bytes() or 0
            self._touched = 0

    def close(self) -> None:
        """Release the memory map and the file."""
        self._data = self._indices = None
        if self._map is not None:
            self._map.close()
            self._map = None
        self._file.close()

    def __repr__(self) -> str:
        return f"PreparedMatrix({self.path.name}: {self.n_cells} cells x {len(self.genes)} genes)"


def check_prepared_genes(genes: Sequence[str], source_genes: Sequence[str], where: str) -> list[str]:
    """The genes to prepare: ``genes`` (all of ``source_genes`` when empty), each in the source.

    Raises
    ------
    PtragError
        Naming the genes absent from the source, and ``where`` they came from.
    """
    if not genes:
        return list(source_genes)
    present = set(source_genes)
    missing = [g for g in genes if g not in present]
    if missing:
        raise PtragError(
            f"{where}: {len(missing)} genes are not in the data (e.g. {', '.join(missing[:5])}); "
            "list genes of the file's var_names (a run's genes.txt works)."
        )
    if len(set(genes)) != len(genes):
        raise PtragError(f"{where}: some genes are listed twice; list each gene once.")
    return list(genes)
