"""Several gene tables as one: read each, then join them gene-wise.

:func:`load_gene_tables` reads one or several tables (each L2-normalised on its own) and
:func:`concat_gene_tables` joins them on the normalised symbol, zeros filling the block of a
table that lacks a gene.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ptrag.data.gene_table import AliasesLike, GeneTable, PathLike, normalize_symbol, read_aliases
from ptrag.data.gene_table_io import read_gene_table
from ptrag.errors import PtragError


def load_gene_tables(
    paths: Sequence[PathLike] | PathLike,
    normalize: bool = True,
    aliases: AliasesLike = None,
) -> GeneTable:
    """Read one or several gene tables; several are concatenated gene-wise.

    Each table is L2-normalised on its own (when ``normalize``), then the tables are joined
    on the normalised symbol: the result has one row per gene present in at least one table
    and ``sum(dims)`` columns. A gene absent from a table (or with a zero row there) gets
    zeros in that table's block, so it still has a vector as long as one table knows it;
    a gene absent from every table is missing. Row order: the first table's genes, then the
    new genes of each later table. The display spelling comes from the first table that
    has the gene.

    Parameters
    ----------
    paths
        One path or a sequence of paths.
    normalize
        L2-normalise each table's rows before concatenation.
    aliases
        Alias map or two-column CSV, applied to lookups in the result.

    Returns
    -------
    GeneTable
        The (concatenated) table.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if len(paths) == 0:
        raise PtragError("no gene table given: pass --genes TABLE (one or more).")
    tables = [read_gene_table(p, normalize=normalize) for p in paths]
    table = concat_gene_tables(tables) if len(tables) > 1 else tables[0]
    table.aliases = read_aliases(aliases)
    return table


def concat_gene_tables(tables: Sequence[GeneTable]) -> GeneTable:
    """Join tables gene-wise (see :func:`load_gene_tables`); zeros fill absent blocks.

    Parameters
    ----------
    tables
        Tables to join; they are not re-normalised here.

    Returns
    -------
    GeneTable
        ``[n_union_genes, sum(dims)]``.
    """
    keys: dict[str, int] = {}
    names: list[str] = []
    for t in tables:
        for n, nz in zip(t.names, t.nonzero(), strict=True):
            k = normalize_symbol(n)
            if k not in keys and nz:
                keys[k] = len(names)
                names.append(n)
    out = np.zeros((len(names), sum(t.dim for t in tables)), dtype=np.float32)
    col = 0
    for t in tables:
        rows = np.array([keys.get(normalize_symbol(n), -1) for n in t.names])
        ok = rows >= 0
        out[rows[ok], col : col + t.dim] = t.vectors[ok]
        col += t.dim
    return GeneTable(names, out, "+".join(t.source for t in tables))
