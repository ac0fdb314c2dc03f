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
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ptrag.errors import PtragError, atomic_path, check_choice

log = logging.getLogger("ptrag")

PathLike = str | os.PathLike
AliasesLike = Mapping[str, str] | PathLike | None

#: Extensions :func:`read_gene_table` understands (``.gz`` allowed after the text ones).
TABLE_EXTENSIONS = (".pkl", ".pickle", ".csv", ".tsv", ".txt", ".parquet", ".npz")
_TEXT_EXT = (".csv", ".tsv", ".txt")
_NAME_KEYS = ("names", "genes", "symbols", "gene_names")
_VECTOR_KEYS = ("vectors", "embeddings", "X", "values")
#: Labels GEARS-style data sets use for the control inside a combination ("A+ctrl").
_GEARS_CONTROL = "ctrl"


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


# ------------------------------------------------------------------------------ reading
def read_gene_table(path: PathLike, aliases: AliasesLike = None, normalize: bool = False) -> GeneTable:
    """Read one gene-embedding table (pickle, CSV/TSV[.gz], parquet or npz).

    Parameters
    ----------
    path
        The table file; the format is chosen by extension (see the module docstring).
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
        names, vectors = _read_pickle(path)
    elif ext in _TEXT_EXT:
        names, vectors = _read_text(path, "\t" if ext == ".tsv" else None)
    elif ext == ".parquet":
        names, vectors = _read_parquet(path)
    elif ext == ".npz":
        names, vectors = _read_npz(path)
    else:
        raise PtragError(
            f"{path}: unknown gene-table format {''.join(path.suffixes) or '(no extension)'!r}; "
            f"use one of {', '.join(TABLE_EXTENSIONS)} (.csv/.tsv/.txt may end in .gz)."
        )
    table = _validated(path, names, vectors)
    table.aliases = read_aliases(aliases)
    if normalize:
        table = table.normalized()
    log.info("read gene table %s: %d genes x %d dims", path.name, len(table), table.dim)
    return table


class _SafeUnpickler(pickle.Unpickler):
    """Unpickle plain containers and numpy arrays only (no arbitrary code)."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("collections", "OrderedDict"),
            ("_codecs", "encode"),  # how protocol-2 pickles store bytes
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(path: Path) -> tuple[list[str], list]:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            obj = _SafeUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        raise PtragError(
            f"{path}: not a GenePT-style pickle ({exc}). A pickle must hold a dict "
            "symbol -> list of floats; save other objects as CSV or parquet instead."
        ) from exc
    except (EOFError, OSError, ValueError) as exc:
        raise PtragError(f"{path}: could not be read as a pickle ({exc}); is the file complete?") from exc
    if not isinstance(obj, Mapping):
        raise PtragError(
            f"{path}: the pickle holds a {type(obj).__name__}, not a dict symbol -> vector (GenePT's layout)."
        )
    return [str(k) for k in obj], list(obj.values())


def _open_text(path: Path):
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def _read_text(path: Path, sep: str | None) -> tuple[list[str], np.ndarray]:
    try:
        with _open_text(path) as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise PtragError(f"{path}: could not be read as text ({exc}); is the file complete?") from exc
    if not first.strip():
        raise PtragError(f"{path}: the gene table is empty.")
    if sep is None:
        sep = "\t" if first.count("\t") > first.count(",") else ","
    head = next(csv.reader([first], delimiter=sep))
    header = _is_header(head)
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            header=None,
            skiprows=1 if header else 0,
            index_col=0,
            dtype={0: str},
            keep_default_na=False,
            na_values=["", "NA", "NaN", "nan"],
            skip_blank_lines=True,
            low_memory=False,
        )
    except pd.errors.EmptyDataError as exc:
        raise PtragError(f"{path}: the gene table has no rows.") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        _diagnose_text(path, sep, header, len(head) - 1)
        raise PtragError(f"{path}: could not be parsed as a gene table ({exc}).") from exc
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise PtragError(f"{path}: the gene table has no rows or no vector columns.")
    bad_cols = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad_cols or df.isna().to_numpy().any():
        _diagnose_text(path, sep, header, df.shape[1])
    return df.index.tolist(), df.to_numpy(dtype=np.float32)


def _is_header(cells: list[str]) -> bool:
    """A first line is a header if its first cell is empty or a later cell is not a number."""
    if not cells or not cells[0].strip():
        return True
    if cells[0].strip().lower() in ("gene", "genes", "symbol", "gene_symbol", "name", "index"):
        return True
    for c in cells[1:]:
        try:
            float(c)
        except ValueError:
            return True
    return False


def _diagnose_text(path: Path, sep: str, header: bool, expected: int) -> None:
    """Find the first bad row of a CSV/TSV table and raise a precise error."""
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=sep)
        for lineno, row in enumerate(reader, start=1):
            if lineno == 1 and header:
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            gene, values = row[0].strip(), row[1:]
            if len(values) != expected:
                raise PtragError(
                    f"{path}: row {lineno} (gene {gene!r}) has {len(values)} values; expected "
                    f"{expected} like the other rows. Fix or remove that row."
                )
            for v in values:
                try:
                    x = float(v)
                except ValueError:
                    raise PtragError(
                        f"{path}: row {lineno} (gene {gene!r}) holds {v!r}, which is not a number."
                    ) from None
                if not np.isfinite(x):
                    raise PtragError(
                        f"{path}: row {lineno} (gene {gene!r}) holds {v}; vectors must be finite. "
                        "Fix or remove that row."
                    )


def _read_parquet(path: Path) -> tuple[list[str], list | np.ndarray]:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 -- pyarrow raises many types for a bad file
        raise PtragError(f"{path}: could not be read as parquet ({exc}); is the file complete?") from exc
    if df.shape[0] == 0:
        raise PtragError(f"{path}: the gene table has no rows.")
    if not isinstance(df.index, pd.RangeIndex) and not pd.api.types.is_numeric_dtype(df.index):
        names = df.index.astype(str).tolist()
        values = df
    else:
        if df.shape[1] < 2:
            raise PtragError(f"{path}: needs a symbol column (or index) and vector columns.")
        names = df.iloc[:, 0].astype(str).tolist()
        values = df.iloc[:, 1:]
    if values.shape[1] == 1 and values.dtypes.iloc[0] == np.dtype(object):
        return names, list(values.iloc[:, 0])
    bad = [str(c) for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if bad:
        raise PtragError(
            f"{path}: columns {', '.join(bad[:5])} are not numeric; the symbol must be the first "
            "column (or the index) and every other column a vector component."
        )
    return names, values.to_numpy(dtype=np.float32)


def _read_npz(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise PtragError(
            f"{path}: holds object arrays, which are not loaded for safety; save the names as a "
            "string array (np.array(names, dtype=str))."
        ) from exc
    except (OSError, EOFError) as exc:
        raise PtragError(f"{path}: could not be read as .npz ({exc}); is the file complete?") from exc
    name_key = next((k for k in _NAME_KEYS if k in arrays), None)
    vec_key = next((k for k in _VECTOR_KEYS if k in arrays), None)
    if name_key is None:
        cands = [k for k, a in arrays.items() if a.ndim == 1 and a.dtype.kind in "US"]
        name_key = cands[0] if len(cands) == 1 else None
    if vec_key is None:
        cands = [k for k, a in arrays.items() if a.ndim == 2 and a.dtype.kind in "fiu"]
        vec_key = cands[0] if len(cands) == 1 else None
    if name_key is None or vec_key is None:
        raise PtragError(
            f"{path}: expected arrays 'names' (1-d strings) and 'vectors' (2-d floats); "
            f"found {', '.join(f'{k} {a.dtype}{list(a.shape)}' for k, a in arrays.items()) or 'none'}."
        )
    names = [str(n) for n in arrays[name_key]]
    vectors = arrays[vec_key]
    if vectors.ndim != 2 or vectors.shape[0] != len(names):
        raise PtragError(
            f"{path}: {name_key!r} holds {len(names)} names but {vec_key!r} has shape "
            f"{list(vectors.shape)}; it must be [{len(names)}, dim]."
        )
    return names, vectors


def _validated(path: Path | str, names: list[str], vectors) -> GeneTable:
    """Check lengths, finiteness and duplicates; build the table."""
    if len(names) == 0:
        raise PtragError(f"{path}: the gene table is empty.")
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2:
        mat = vectors
    else:
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
        mat = np.stack(rows)
    mat = np.asarray(mat, dtype=np.float32)
    if mat.shape[1] == 0:
        raise PtragError(f"{path}: the gene table has no vector columns.")
    finite = np.isfinite(mat).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise PtragError(
            f"{path}: {len(bad)} genes have NaN or Inf values (first: {names[bad[0]]!r}, row "
            f"{bad[0] + 1}); vectors must be finite. Fix or remove those genes."
        )
    keys = pd.Index([normalize_symbol(n) for n in names])
    if keys.has_duplicates:
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
        mat = mat[keep]
    return GeneTable(list(names), mat, str(path))


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


# ------------------------------------------------------------------ perturbation codes
def perturbation_vectors(
    perturbations: Sequence[str],
    table: GeneTable,
    missing: Literal["error", "drop"] = "error",
    cell_counts: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Vectors of perturbed genes, never a silent zero vector.

    Parameters
    ----------
    perturbations
        Perturbed gene symbols (control excluded by the caller).
    table
        The gene table (aliases in ``table.aliases`` are applied).
    missing
        ``"error"``: raise if any perturbation has no vector (absent, or an all-zero row such
        as GenePT's ``ctrl``). ``"drop"``: leave those out with a warning.
    cell_counts
        Cells per perturbation, used to say how many cells go with dropped genes.

    Returns
    -------
    vectors : numpy.ndarray
        ``float32`` ``[n_kept, dim]``, in input order.
    kept : list of str
        The kept perturbations (original spelling of the input).
    """
    check_choice("--missing-genes", missing, ("error", "drop"))
    perturbations = [str(p) for p in perturbations]
    rows = table.rows(perturbations)
    miss = [p for p, r in zip(perturbations, rows, strict=True) if r < 0]
    if miss:
        uniq = list(dict.fromkeys(miss))
        idx = table.index()
        labels = [f"{p} (all-zero row)" if normalize_symbol(p) in idx else p for p in uniq[:10]]
        shown = ", ".join(labels) + (f", ... ({len(uniq)} in all)" if len(uniq) > 10 else "")
        src = table.source or "the gene table"
        if missing == "error":
            raise PtragError(
                f"{len(uniq)} perturbed genes have no vector in {src}: {shown}. Pass "
                "--missing-genes drop to leave them out, an alias map (--gene-aliases "
                "alias,symbol CSV) if they are spelled differently, or another table with "
                "--genes (e.g. one built by `ptrag genes embed-text` / `embed-graph`)."
            )
        cells = ""
        if cell_counts is not None:
            n_cells = sum(int(cell_counts.get(p, 0)) for p in uniq)
            cells = f" with {n_cells} cells"
            labels = [f"{lab} ({int(cell_counts.get(p, 0))} cells)" for lab, p in zip(labels, uniq, strict=False)]
            shown = ", ".join(labels) + (f", ... ({len(uniq)} in all)" if len(uniq) > 10 else "")
        log.warning(
            "dropping %d perturbations%s that have no vector in %s: %s. To keep them, give an "
            "alias map or another table with --genes.",
            len(uniq),
            cells,
            src,
            shown,
        )
    keep = rows >= 0
    kept = [p for p, k in zip(perturbations, keep, strict=True) if k]
    return table.vectors[rows[keep]].copy(), kept


def one_hot(perturbations: Sequence[str], categories: Sequence[str] | None = None) -> np.ndarray:
    """One-hot codes (STATE's perturbation representation).

    Parameters
    ----------
    perturbations
        Perturbation labels, one per output row.
    categories
        The column order; by default the distinct ``perturbations`` in order of first
        appearance (so distinct inputs give the identity matrix).

    Returns
    -------
    numpy.ndarray
        ``float32`` ``[len(perturbations), len(categories)]``.
    """
    perturbations = [str(p) for p in perturbations]
    cats = list(dict.fromkeys(perturbations)) if categories is None else [str(c) for c in categories]
    pos = {c: i for i, c in enumerate(cats)}
    unknown = [p for p in perturbations if p not in pos]
    if unknown:
        raise PtragError(
            f"{len(set(unknown))} perturbations are not among the one-hot categories "
            f"(e.g. {', '.join(sorted(set(unknown))[:5])}); one-hot codes exist only for "
            "perturbations seen in training."
        )
    out = np.zeros((len(perturbations), len(cats)), dtype=np.float32)
    out[np.arange(len(perturbations)), [pos[p] for p in perturbations]] = 1.0
    return out


def split_combination(label: str, control: str) -> list[str]:
    """The genes of a perturbation label.

    Parameters
    ----------
    label
        ``"A"``, ``"A+B"``, GEARS-style ``"A+ctrl"``, or the control label.
    control
        The data set's control label; it (and GEARS's ``ctrl``) is dropped from combinations.

    Returns
    -------
    list of str
        ``"A+B"`` -> ``["A", "B"]``; ``"A+ctrl"`` -> ``["A"]``; control -> ``[]``.
    """
    label = str(label).strip()
    if label == control:
        return []
    return [p.strip() for p in label.split("+") if p.strip() and p.strip() not in (control, _GEARS_CONTROL)]


def drop_combinations(obs_perturbations: pd.Series, control: str) -> tuple[np.ndarray, int, int]:
    """Find the cells that carry combination perturbations (two or more genes).

    Parameters
    ----------
    obs_perturbations
        The perturbation label of each cell.
    control
        The control label.

    Returns
    -------
    mask : numpy.ndarray
        ``bool`` per cell, ``True`` for a combination (to be excluded by the caller).
    n_cells : int
        Number of such cells.
    n_perts : int
        Number of distinct combination labels.
    """
    labels = pd.Series(obs_perturbations).astype(str)
    uniq = pd.unique(labels)
    combo = {u: len(split_combination(u, control)) > 1 for u in uniq}
    mask = labels.map(combo).to_numpy(dtype=bool)
    return mask, int(mask.sum()), int(sum(combo.values()))


def coverage(groups: pd.DataFrame, tables: Mapping[str, GeneTable], control: str) -> pd.DataFrame:
    """Which perturbation groups have a vector in each table.

    Parameters
    ----------
    groups
        One row per (cell type, perturbation) group, columns ``cell_type``, ``perturbation``,
        ``n_cells``.
    tables
        Label -> table.
    control
        The control label (dropped from combination labels).

    Returns
    -------
    pandas.DataFrame
        ``groups`` plus ``combination`` (bool) and one bool column per table label (a
        combination counts as covered when every one of its genes is), then ``any_table``.
    """
    out = groups[["cell_type", "perturbation", "n_cells"]].copy().reset_index(drop=True)
    parts = {p: split_combination(p, control) for p in pd.unique(out["perturbation"])}
    out["combination"] = out["perturbation"].map(lambda p: len(parts[p]) > 1).astype(bool)
    genes = sorted({g for ps in parts.values() for g in ps})
    for label, table in tables.items():
        has = dict(zip(genes, table.rows(genes) >= 0, strict=True))
        ok = {p: bool(ps) and all(has[g] for g in ps) for p, ps in parts.items()}
        out[label] = out["perturbation"].map(ok).astype(bool)
    labels = list(tables)
    out["any_table"] = out[labels].any(axis=1) if labels else False
    return out
