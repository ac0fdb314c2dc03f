"""Per-format readers of gene tables: GenePT pickle, CSV / TSV (optionally gzipped), parquet, npz.

Each reader returns the raw ``(names, vectors)`` of one file and raises :class:`PtragError`
with the offending row or key when the file does not have the expected layout; the
dispatch by extension and the final validation live in :mod:`ptrag.data.gene_table_io`.
"""

from __future__ import annotations

import csv
import gzip
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.errors import PtragError

_NAME_KEYS = ("names", "genes", "symbols", "gene_names")
_VECTOR_KEYS = ("vectors", "embeddings", "X", "values")


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


def read_pickle_table(path: Path) -> tuple[list[str], list]:
    """Read the symbols and raw vectors of a GenePT-style pickle gene table.

    Parameters
    ----------
    path
        The table file.

    Returns
    -------
    names : list of str
        The symbols, one per row, as written in the file.
    vectors
        The vectors, one per name (a list of lists or 1-d arrays);
        :func:`ptrag.data.gene_table_check.validated_table` checks them.
    """
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


def read_text_table(path: Path, sep: str | None) -> tuple[list[str], np.ndarray]:
    """Read the symbols and raw vectors of a CSV / TSV (optionally gzipped) gene table.

    Parameters
    ----------
    path
        The table file.
    sep
        The column separator; ``None`` picks tab or comma from the first line.

    Returns
    -------
    names : list of str
        The symbols, one per row, as written in the file.
    vectors
        The vectors, one per name (a ``float32`` array);
        :func:`ptrag.data.gene_table_check.validated_table` checks them.
    """
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


def read_parquet_table(path: Path) -> tuple[list[str], list | np.ndarray]:
    """Read the symbols and raw vectors of a parquet gene table.

    Parameters
    ----------
    path
        The table file.

    Returns
    -------
    names : list of str
        The symbols, one per row, as written in the file.
    vectors
        The vectors, one per name (a ``float32`` array, or a list of list-valued cells);
        :func:`ptrag.data.gene_table_check.validated_table` checks them.
    """
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


def read_npz_table(path: Path) -> tuple[list[str], np.ndarray]:
    """Read the symbols and raw vectors of a npz gene table.

    Parameters
    ----------
    path
        The table file.

    Returns
    -------
    names : list of str
        The symbols, one per row, as written in the file.
    vectors
        The vectors, one per name (a 2-d numeric array);
        :func:`ptrag.data.gene_table_check.validated_table` checks them.
    """
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
