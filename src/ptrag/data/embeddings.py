"""Perturbation representations: one-hot codes and gene-embedding tables.

A *gene table* maps gene symbols to vectors (GenePT, or the local text / graph tables built by
:mod:`ptrag.genes`). It is read from any of these layouts:

========================  ===================================================================
extension                 layout
========================  ===================================================================
``.pkl`` / ``.pickle``    GenePT's published pickle: ``dict`` symbol -> list (or 1-d array) of
                          floats. Only plain containers and numpy arrays are unpickled.
``.csv`` / ``.tsv``       first column the symbol, one vector component per further column;
(also ``.txt``, ``.gz``)  a header row is optional (GenePT-style ``,0,1,...`` is recognised).
``.parquet``              first column (or a string index) the symbol, the rest numeric
                          columns; or one list-valued column holding the whole vector.
``.npz``                  a 1-d string array of symbols (key ``names``, ``genes``,
                          ``symbols`` or ``gene_names``) and a 2-d float array (key
                          ``vectors``, ``embeddings``, ``X`` or ``values``); any file with
                          exactly one 1-d string array and one 2-d numeric array also works.
========================  ===================================================================

Symbols are matched after stripping whitespace and upper-casing (the table keeps the original
spelling for display) and after an optional alias map (``{alias: symbol}`` or a two-column CSV
``alias,symbol``). A row of zeros (GenePT's ``ctrl`` row) is never a valid representation:
:func:`perturbation_vectors` treats it as missing.

This module gathers the public names of the modules that implement all this:

- :mod:`ptrag.data.gene_table`: :class:`GeneTable`, symbol matching, aliases, L2 normalisation;
- :mod:`ptrag.data.gene_table_readers`: the reader of each file format;
- :mod:`ptrag.data.gene_table_check`: the validation of a freshly read table;
- :mod:`ptrag.data.gene_table_io`: reading / writing one table by extension;
- :mod:`ptrag.data.gene_table_join`: loading and joining several tables;
- :mod:`ptrag.data.perturbation_codes`: perturbation vectors, one-hot codes, combinations, coverage.
"""

from __future__ import annotations

import logging

from ptrag.data.gene_table import AliasesLike, GeneTable, PathLike, l2_normalize, normalize_symbol, read_aliases
from ptrag.data.gene_table_io import TABLE_EXTENSIONS, read_gene_table, table_format, write_gene_table
from ptrag.data.gene_table_join import concat_gene_tables, load_gene_tables
from ptrag.data.perturbation_codes import (
    coverage,
    drop_combinations,
    one_hot,
    perturbation_vectors,
    split_combination,
)

log = logging.getLogger("ptrag")

__all__ = [
    "TABLE_EXTENSIONS",
    "AliasesLike",
    "GeneTable",
    "PathLike",
    "concat_gene_tables",
    "coverage",
    "drop_combinations",
    "l2_normalize",
    "load_gene_tables",
    "normalize_symbol",
    "one_hot",
    "perturbation_vectors",
    "read_aliases",
    "read_gene_table",
    "split_combination",
    "table_format",
    "write_gene_table",
]
