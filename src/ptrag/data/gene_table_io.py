"""Reading and writing one gene table, the format chosen by the file's extension.

:func:`read_gene_table` dispatches to the readers of :mod:`ptrag.data.gene_table_readers`
(``.pkl`` / ``.pickle``, ``.csv`` / ``.tsv`` / ``.txt`` optionally ``.gz``, ``.parquet``,
``.npz``) and validates the result; :func:`write_gene_table` writes a table atomically in
the layout :func:`table_format` picks from the output path.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.data.gene_table import AliasesLike, GeneTable, PathLike, read_aliases
from ptrag.data.gene_table_check import validated_table
from ptrag.data.gene_table_readers import read_npz_table, read_parquet_table, read_pickle_table, read_text_table
from ptrag.errors import PtragError, atomic_path

log = logging.getLogger("ptrag")

#: Extensions :func:`read_gene_table` understands (``.gz`` allowed after the text ones).
TABLE_EXTENSIONS = (".pkl", ".pickle", ".csv", ".tsv", ".txt", ".parquet", ".npz")
_TEXT_EXT = (".csv", ".tsv", ".txt")


def read_gene_table(path: PathLike, aliases: AliasesLike = None, normalize: bool = False) -> GeneTable:
    """Read one gene-embedding table (pickle, CSV/TSV[.gz], parquet or npz).

    Parameters
    ----------
    path
        The table file; the format is chosen by extension (see :mod:`ptrag.data.embeddings`).
    aliases
        Alias map ``{alias: symbol}`` or a two-column CSV path, used for lookups.
    normalize
        L2-normalise every row.

    Returns
    -------
    GeneTable
        The validated table.

    Raises
    ------
    PtragError
        For a missing file, an unknown extension, a row of the wrong length, NaN / Inf values,
        a symbol listed twice with different vectors, or an empty table.
    """
    path = Path(path)
    if not path.exists():
        raise PtragError(f"gene table not found: {path}. Check the path given to --genes.")
    if path.is_dir():
        raise PtragError(f"{path} is a folder; --genes takes a table file ({', '.join(TABLE_EXTENSIONS)}).")
    suffixes = [s.lower() for s in path.suffixes]
    ext = suffixes[-1] if suffixes else ""
    if ext == ".gz" and len(suffixes) >= 2 and suffixes[-2] in _TEXT_EXT:
        ext = suffixes[-2]
    if ext in (".pkl", ".pickle"):
        names, vectors = read_pickle_table(path)
    elif ext in _TEXT_EXT:
        names, vectors = read_text_table(path, "\t" if ext == ".tsv" else None)
    elif ext == ".parquet":
        names, vectors = read_parquet_table(path)
    elif ext == ".npz":
        names, vectors = read_npz_table(path)
    else:
        raise PtragError(
            f"{path}: unknown gene-table format {''.join(path.suffixes) or '(no extension)'!r}; "
            f"use one of {', '.join(TABLE_EXTENSIONS)} (.csv/.tsv/.txt may end in .gz)."
        )
    table = validated_table(path, names, vectors)
    table.aliases = read_aliases(aliases)
    if normalize:
        table = table.normalized()
    log.info("read gene table %s: %d genes x %d dims", path.name, len(table), table.dim)
    return table


_WRITE_EXTENSIONS = (".parquet", ".csv", ".tsv", ".npz", ".pkl", ".pickle")


def table_format(path: PathLike) -> tuple[str, bool]:
    """The format a gene table is written in, from its extension.

    Parameters
    ----------
    path
        The output path.

    Returns
    -------
    tuple
        ``(extension, gzip)``, e.g. ``(".csv", True)`` for ``table.csv.gz``.
    """
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    ext = suffixes[-1] if suffixes else ""
    gz = ext == ".gz"
    if gz and len(suffixes) >= 2:
        ext = suffixes[-2]
    if ext not in _WRITE_EXTENSIONS or (gz and ext not in (".csv", ".tsv")):
        raise PtragError(
            f"cannot write a gene table to {path}: use one of {', '.join(_WRITE_EXTENSIONS)} "
            "(.csv/.tsv may end in .gz)."
        )
    return ext, gz


def write_gene_table(table: GeneTable, path: PathLike) -> Path:
    """Write a table atomically in the format given by the extension.

    Parameters
    ----------
    table
        The table.
    path
        ``.parquet`` (symbol column ``gene`` + columns ``0..d-1``), ``.csv`` / ``.tsv`` (``.gz``
        allowed; GenePT's layout), ``.npz`` (``names``, ``vectors``) or ``.pkl`` (GenePT's
        dict symbol -> list of floats).

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    ext, gz = table_format(path)
    with atomic_path(path) as tmp:
        if ext == ".parquet":
            df = pd.DataFrame(table.vectors, columns=[str(i) for i in range(table.dim)])
            df.insert(0, "gene", table.names)
            df.to_parquet(tmp, index=False)
        elif ext in (".csv", ".tsv"):
            df = pd.DataFrame(table.vectors, index=pd.Index(table.names, name=""))
            df.to_csv(tmp, sep="\t" if ext == ".tsv" else ",", compression="gzip" if gz else None)
        elif ext == ".npz":
            with open(tmp, "wb") as fh:
                np.savez(fh, names=np.array(table.names, dtype=str), vectors=table.vectors)
        else:
            with open(tmp, "wb") as fh:
                pickle.dump({n: v.tolist() for n, v in zip(table.names, table.vectors, strict=True)}, fh)
    return path
