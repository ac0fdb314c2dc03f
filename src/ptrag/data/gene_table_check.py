"""Validation of a freshly read gene table: vector lengths, finiteness and duplicate symbols.

:func:`validated_table` turns the raw ``(names, vectors)`` of a reader in
:mod:`ptrag.data.gene_table_readers` into a :class:`~ptrag.data.gene_table.GeneTable`, or
raises :class:`PtragError` naming the first offending gene and row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.data.gene_table import GeneTable, normalize_symbol
from ptrag.errors import PtragError

log = logging.getLogger("ptrag")


def validated_table(path: Path | str, names: list[str], vectors) -> GeneTable:
    """Check lengths, finiteness and duplicates; build the table.

    Parameters
    ----------
    path
        Where the table came from (used in messages and as the table's ``source``).
    names
        The symbols, one per row.
    vectors
        A 2-d array ``[n_genes, dim]``, or one vector (list or array) per name.

    Returns
    -------
    GeneTable
        The table, with duplicate symbols of identical vectors dropped (first one kept).

    Raises
    ------
    PtragError
        For an empty table, a non-numeric vector, a vector of the wrong length, no vector
        columns, NaN / Inf values, or a symbol listed twice with different vectors.
    """
    if len(names) == 0:
        raise PtragError(f"{path}: the gene table is empty.")
    mat = vectors if isinstance(vectors, np.ndarray) and vectors.ndim == 2 else _stack_rows(path, names, vectors)
    mat = np.asarray(mat, dtype=np.float32)
    if mat.shape[1] == 0:
        raise PtragError(f"{path}: the gene table has no vector columns.")
    _check_finite(path, names, mat)
    names, mat = _drop_duplicates(path, names, mat)
    return GeneTable(list(names), mat, str(path))


def _stack_rows(path: Path | str, names: list[str], vectors) -> np.ndarray:
    """Stack one vector per name into a matrix; every vector must be numeric and as long as the first."""
    rows = []
    expected = None
    for i, (name, v) in enumerate(zip(names, vectors, strict=True)):
        try:
            arr = np.asarray(v, dtype=np.float32).ravel()
        except (TypeError, ValueError):
            raise PtragError(f"{path}: the vector of gene {name!r} (row {i + 1}) is not numeric.") from None
        if expected is None:
            expected = arr.size
        if arr.size != expected or arr.size == 0:
            raise PtragError(
                f"{path}: gene {name!r} (row {i + 1}) has a vector of length {arr.size}; "
                f"expected {expected} like the first row. Fix or remove that gene."
            )
        rows.append(arr)
    return np.stack(rows)


def _check_finite(path: Path | str, names: list[str], mat: np.ndarray) -> None:
    """Raise if any row holds NaN or Inf, naming the first such gene."""
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise PtragError(
            f"{path}: {len(bad)} genes have NaN or Inf values (first: {names[bad[0]]!r}, row "
            f"{bad[0] + 1}); vectors must be finite. Fix or remove those genes."
        )


def _drop_duplicates(path: Path | str, names: list[str], mat: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Drop repeated symbols whose vectors are identical; raise if a repeat has a different vector."""
    keys = pd.Index([normalize_symbol(n) for n in names])
    if not keys.has_duplicates:
        return names, mat
    dup = keys.duplicated(keep="first")
    for k in pd.unique(keys[dup]):
        pos = np.flatnonzero(keys == k)
        if not all(np.array_equal(mat[pos[0]], mat[p]) for p in pos[1:]):
            raise PtragError(
                f"{path}: gene {names[pos[0]]!r} appears {len(pos)} times (rows "
                f"{', '.join(str(p + 1) for p in pos[:5])}) with different vectors; keep one."
            )
    log.info("%s: dropped %d duplicate rows with identical vectors.", Path(str(path)).name, int(dup.sum()))
    keep = ~np.asarray(dup)
    names = [n for n, k in zip(names, keep, strict=True) if k]
    return names, mat[keep]
