"""Checks of a Perturb-seq file at read time: does it fit in memory, are its labels and names
usable. Each problem ends in one :class:`~ptrag.errors.PtragError` naming the file, the column
or names at fault, how many cells or names, and what to do; nothing is dropped silently."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.errors import PtragError

#: ``(ColumnSpec field, what the column holds)`` of the obs columns whose labels are checked.
LABEL_COLUMNS = (("pert_col", "perturbation"), ("cell_type_col", "cell type"), ("batch_col", "batch"))


def check_labels(obs: pd.DataFrame, spec, path: Path) -> None:
    """Refuse cells whose perturbation, cell-type or batch label is missing (NaN / None),
    empty or whitespace only: they would become a group called ``"nan"`` or ``""``.

    Parameters
    ----------
    obs
        The file's ``obs``.
    spec
        Its resolved :class:`~ptrag.data.io.ColumnSpec` (``None`` columns are skipped).
    path
        The file, for the message.

    Raises
    ------
    PtragError
        Naming the column, the number of cells and the first such cell.
    """
    for field, kind in LABEL_COLUMNS:
        col = getattr(spec, field)
        if col is None or col not in obs.columns:
            continue
        values = obs[col]
        bad = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
        if bad.any():
            first = obs.index[np.flatnonzero(bad)[0]]
            raise PtragError(
                f"{path}: obs column {col!r} ({kind}) has no label for {int(bad.sum())} of {len(obs)} cells "
                f"(missing, empty or whitespace only; the first is cell {first!r}). Label them, or drop them "
                f"before training: adata = adata[adata.obs[{col!r}].notna()].copy(), then write the file again."
            )


def check_names(obs_names: Sequence[str], var_names: Sequence[str] | None, path: Path) -> None:
    """Refuse duplicated ``obs_names`` (cells) or ``var_names`` (genes, ``None``: not checked):
    two columns answering to one gene name would be silently confused in genes.txt,
    predictions and metrics.

    Raises
    ------
    PtragError
        Naming how many names repeat, an example, and AnnData's fix.
    """
    for names, what, fix in (
        (obs_names, "obs_names (cell names)", "adata.obs_names_make_unique()"),
        (var_names, "var_names (gene names)", "adata.var_names_make_unique() (or sum the repeated genes' columns)"),
    ):
        if names is None:
            continue
        index = pd.Index(names)
        if not index.is_unique:
            dup = index[index.duplicated()].unique()
            raise PtragError(
                f"{path}: {len(dup)} {what} occur more than once (e.g. {str(dup[0])!r}); they must be unique. "
                f"Call {fix} and write the file again."
            )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), else ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def h5ad_memory_bytes(path: str | Path) -> int:
    """Uncompressed size of every array in an ``.h5ad`` file: what ``anndata.read_h5ad`` loads.

    Parameters
    ----------
    path
        An HDF5 file.

    Returns
    -------
    int
        Sum over datasets of ``size * itemsize`` (string datasets count their element size).
    """
    total = 0

    def visit(_name: str, obj) -> None:
        nonlocal total
        if isinstance(obj, h5py.Dataset):
            total += int(obj.size or 0) * int(obj.dtype.itemsize)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return total


def check_fits_in_memory(path: Path, headroom: float = 0.8) -> None:
    free = available_memory()
    if free is None:
        return
    try:
        need = h5ad_memory_bytes(path)
    except OSError:  # unreadable: anndata's reader below gives the message
        return
    if need > headroom * free:
        gib = 1024**3
        raise PtragError(
            f"{path} needs about {need / gib:.1f} GiB in memory but only {free / gib:.1f} GiB are available: "
            "pass --backed to stream the expression matrix from disk instead of loading it."
        )


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


def check_values(data) -> None:
    """Refuse NaN / Inf expression, and negative values in what should be counts or log-expression."""
    where = (
        f"layer {data.spec.layer!r}"
        if data.spec.layer
        else (f"obsm {data.spec.obsm_key!r}" if data.spec.obsm_key else "X")
    )
    from ptrag.data.io import raw_chunks  # io imports this module: imported when called

    for _, block in raw_chunks(data):
        vals = block.data if sp.issparse(block) else np.asarray(block)
        if not np.all(np.isfinite(vals)):
            raise PtragError(f"{data.path}: {where} contains NaN or Inf values; fix or drop those cells before use.")
        if data.spec.obsm_key is None and np.any(vals < 0):
            raise PtragError(
                f"{data.path}: {where} contains negative expression values; ptrag expects counts or "
                "log1p-normalised expression (scaled / centred data cannot be used: pass --layer with "
                "the unscaled values)."
            )
