"""The in-memory gene table: symbols, their vectors, symbol matching and aliases.

A :class:`GeneTable` maps gene symbols to ``float32`` vectors. Symbols are matched after
stripping whitespace and upper-casing (:func:`normalize_symbol`) and after an optional alias
map (:func:`read_aliases`). Reading, writing and joining tables live in
:mod:`ptrag.data.gene_table_io` and :mod:`ptrag.data.gene_table_join`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.errors import PtragError

PathLike = str | os.PathLike
AliasesLike = Mapping[str, str] | PathLike | None


def normalize_symbol(symbol: str) -> str:
    """The matching key of a gene symbol: whitespace stripped, upper-cased.

    Parameters
    ----------
    symbol
        A gene symbol as written in a table or a data set.

    Returns
    -------
    str
        The key used for matching (the display spelling is kept elsewhere).
    """
    return str(symbol).strip().upper()


def read_aliases(aliases: AliasesLike) -> dict[str, str]:
    """Normalise an alias map to ``{normalised alias: normalised symbol}``.

    Parameters
    ----------
    aliases
        ``None``; a mapping ``{alias: symbol}``; or the path of a two-column CSV / TSV
        (``alias,symbol``; a header row ``alias,symbol`` is optional).

    Returns
    -------
    dict
        Normalised alias -> normalised table symbol.
    """
    if aliases is None:
        return {}
    if isinstance(aliases, Mapping):
        pairs = list(aliases.items())
    else:
        path = Path(aliases)
        if not path.is_file():
            raise PtragError(f"alias file not found: {path}. Give a two-column CSV alias,symbol.")
        sep = "\t" if ".tsv" in path.suffixes else ","
        try:
            df = pd.read_csv(path, sep=sep, header=None, dtype=str, comment="#", skip_blank_lines=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise PtragError(f"alias file {path} could not be read as CSV ({exc}).") from exc
        if df.shape[1] != 2:
            raise PtragError(f"alias file {path} has {df.shape[1]} columns; it needs exactly two: alias,symbol.")
        if df.shape[0] and normalize_symbol(df.iat[0, 0]) == "ALIAS":
            df = df.iloc[1:]
        pairs = list(df.itertuples(index=False, name=None))
    out: dict[str, str] = {}
    for alias, symbol in pairs:
        if pd.isna(alias) or pd.isna(symbol):
            continue
        out[normalize_symbol(alias)] = normalize_symbol(symbol)
    return out


@dataclass
class GeneTable:
    """Gene symbols and their vectors.

    Attributes
    ----------
    names
        Gene symbols in their original spelling, one per row.
    vectors
        ``float32`` array ``[n_genes, dim]``.
    source
        Where the table came from (a path, or several joined by ``+``).
    aliases
        Normalised alias -> normalised symbol, applied by :meth:`index` lookups.
    """

    names: list[str]
    vectors: np.ndarray
    source: str = ""
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.names):
            raise PtragError(
                f"gene table {self.source or '(in memory)'}: {len(self.names)} names but vectors "
                f"of shape {self.vectors.shape}; they must be [n_genes, dim]."
            )
        self._names_index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        """Length of each vector."""
        return int(self.vectors.shape[1])

    def _by_name(self) -> dict[str, int]:
        if self._names_index is None:
            self._names_index = {}
            for i, n in enumerate(self.names):
                self._names_index.setdefault(normalize_symbol(n), i)
        return self._names_index

    def index(self) -> dict[str, int]:
        """Normalised symbol (and alias) -> row.

        Returns
        -------
        dict
            Every normalised name maps to its row; every alias whose target is in the table
            maps to the target's row (a name in the table wins over an alias of the same
            spelling).
        """
        idx = dict(self._by_name())
        for alias, symbol in self.aliases.items():
            if alias not in idx and symbol in idx:
                idx[alias] = idx[symbol]
        return idx

    def rows(self, symbols: Sequence[str]) -> np.ndarray:
        """Row of each symbol; ``-1`` where it is absent or its vector is all zeros.

        Parameters
        ----------
        symbols
            Gene symbols (any case / surrounding whitespace; aliases resolved).

        Returns
        -------
        numpy.ndarray
            ``int64`` rows, ``-1`` for missing.
        """
        by_name = self._by_name()
        out = np.full(len(symbols), -1, dtype=np.int64)
        for i, s in enumerate(symbols):
            key = normalize_symbol(s)
            r = by_name.get(key)
            if r is None and key in self.aliases:
                r = by_name.get(self.aliases[key])
            if r is not None:
                out[i] = r
        found = out >= 0
        if found.any():
            nonzero = np.any(self.vectors[out[found]] != 0, axis=1)
            out[np.flatnonzero(found)[~nonzero]] = -1
        return out

    def nonzero(self) -> np.ndarray:
        """Boolean mask of rows whose vector is not all zeros."""
        return np.any(self.vectors != 0, axis=1)

    def lookup(self, symbols: Sequence[str]) -> np.ndarray:
        """Vectors of ``symbols``; :class:`PtragError` if any is missing.

        Parameters
        ----------
        symbols
            Gene symbols.

        Returns
        -------
        numpy.ndarray
            ``float32`` ``[len(symbols), dim]``.
        """
        from ptrag.data.perturbation_codes import perturbation_vectors  # it imports this module

        vectors, _ = perturbation_vectors(symbols, self, missing="error")
        return vectors

    def normalized(self) -> GeneTable:
        """A copy with every row L2-normalised (all-zero rows stay zero)."""
        return GeneTable(list(self.names), l2_normalize(self.vectors), self.source, dict(self.aliases))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm; rows of zeros stay zeros.

    Parameters
    ----------
    vectors
        ``[n, d]`` array.

    Returns
    -------
    numpy.ndarray
        ``float32`` ``[n, d]`` with unit (or zero) rows.
    """
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
