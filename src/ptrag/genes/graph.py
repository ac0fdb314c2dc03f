"""Gene tables from prior-knowledge graphs: STRING edges and GO gene sets.

Both are *spectral embeddings*: the leading eigenvectors of a symmetric normalised gene-gene
affinity ``D^-1/2 W D^-1/2``, which place genes that are strongly connected (directly or
through many shared partners) close together. The first eigenvector (``sqrt(degree)``,
which only encodes how connected a gene is) is dropped.

- STRING: ``W`` is the network, weighted by ``combined_score``; its eigenvectors come from
  :func:`scipy.sparse.linalg.eigsh`.
- GO: ``W`` is the gene co-membership graph where each term of size ``s`` links its genes with
  weight ``1/s`` (large, generic terms weigh little). It is never formed: with ``B`` the
  gene x term incidence, ``W = B diag(1/s) B^T`` has degrees ``D = number of terms of each
  gene``, so the eigenvectors of ``D^-1/2 W D^-1/2`` are the left singular vectors of
  ``D^-1/2 B diag(1/s)^1/2``, from :func:`scipy.sparse.linalg.svds` on a sparse matrix.

See docs/genes.md for the measured quality (neighbour sharing) of both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import ArpackNoConvergence, eigsh, svds

from ptrag.data.embeddings import GeneTable, normalize_symbol
from ptrag.errors import PtragError

log = logging.getLogger("ptrag")

PathLike = str | os.PathLike
#: Weight columns recognised in an edge list, in order of preference.
WEIGHT_COLUMNS = ("combined_score", "weight", "score")


# ------------------------------------------------------------------------------ reading
def read_edges(path: PathLike, weight_col: str | None = None, min_weight: float | None = None) -> pd.DataFrame:
    """Read a gene-gene edge list (e.g. STRING) with gene symbols in its first two columns.

    Parameters
    ----------
    path
        CSV / TSV (``.gz`` allowed) with a header row; the first two columns are the genes.
    weight_col
        Column with the edge weight; by default the first of ``combined_score``, ``weight``,
        ``score`` that exists, else every edge weighs 1.
    min_weight
        Drop edges below this weight.

    Returns
    -------
    pandas.DataFrame
        Columns ``a``, ``b`` (str) and ``weight`` (float64).
    """
    path = Path(path)
    if not path.is_file():
        raise PtragError(f"edge file not found: {path}. Check the path given to --edges.")
    sep = "\t" if any(s.lower() in (".tsv", ".txt") for s in path.suffixes) else ","
    try:
        df = pd.read_csv(path, sep=sep, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise PtragError(f"{path}: could not be read as an edge list ({exc}).") from exc
    return edge_frame(df, weight_col, min_weight, str(path))


def edge_frame(
    df: pd.DataFrame, weight_col: str | None = None, min_weight: float | None = None, where: str = "edges"
) -> pd.DataFrame:
    """Normalise an edge table to columns ``a``, ``b``, ``weight`` (see :func:`read_edges`).

    Parameters
    ----------
    df
        Genes in the first two columns; optional weight column.
    weight_col
        The weight column (default: ``combined_score``, ``weight`` or ``score``, else 1).
    min_weight
        Drop edges below this weight.
    where
        Name of the source, for messages.

    Returns
    -------
    pandas.DataFrame
        Columns ``a``, ``b``, ``weight``; self-loops and zero weights removed.
    """
    if df.shape[1] < 2 or df.shape[0] == 0:
        raise PtragError(f"{where}: an edge list needs two gene columns and at least one row.")
    if weight_col is None:
        weight_col = next((c for c in WEIGHT_COLUMNS if c in df.columns), None)
    elif weight_col not in df.columns:
        raise PtragError(
            f"{where}: weight column {weight_col!r} not found; columns are {', '.join(map(str, df.columns))}."
        )
    out = pd.DataFrame({"a": df.iloc[:, 0].astype(str).str.strip(), "b": df.iloc[:, 1].astype(str).str.strip()})
    if weight_col is None:
        out["weight"] = 1.0
    else:
        w = pd.to_numeric(df[weight_col], errors="coerce")
        bad_mask = (w.isna() | (w < 0) | ~np.isfinite(w)).to_numpy()
        if bad_mask.any():
            bad = int(np.flatnonzero(bad_mask)[0])
            raise PtragError(
                f"{where}: column {weight_col!r} must hold finite non-negative numbers; row {bad + 2} "
                f"holds {df[weight_col].iloc[bad]!r}."
            )
        out["weight"] = w.to_numpy(np.float64)
    if min_weight is not None:
        out = out[out["weight"] >= min_weight]
    out = out[(out["a"] != out["b"]) & (out["weight"] > 0)]
    if out.empty:
        raise PtragError(f"{where}: no edges left (self-loops, zero weights and weights < {min_weight} are dropped).")
    return out.reset_index(drop=True)


def read_gmt(path: PathLike) -> dict[str, list[str]]:
    """Read gene sets from a GMT file.

    Each line is ``term <tab> description <tab> genes...``; genes may be tab-separated
    (standard GMT) or comma-joined (as in some Enrichr exports); numeric tokens such as
    Enrichr's ``GENE,1.0`` membership weights are ignored.

    Parameters
    ----------
    path
        The ``.gmt`` file.

    Returns
    -------
    dict
        Term -> list of gene symbols (duplicates removed, order kept).
    """
    path = Path(path)
    if not path.is_file():
        raise PtragError(f"gene-set file not found: {path}. Check the path given to --gmt.")
    sets: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) == 1 and not fields[0].strip():
                continue
            if len(fields) < 3:
                raise PtragError(
                    f"{path}: line {lineno} has {len(fields)} tab-separated fields; a GMT line is "
                    "'term<TAB>description<TAB>gene<TAB>gene...'."
                )
            genes = []
            for field in fields[2:]:
                for tok in field.split(","):
                    tok = tok.strip()
                    if tok and not _is_number(tok):
                        genes.append(tok)
            sets[fields[0]] = list(dict.fromkeys(genes))
    if not sets:
        raise PtragError(f"{path}: no gene sets found.")
    return sets


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------- embedding
#: Problems up to this size are solved densely (exact, and no solver limits on ``dim``).
_DENSE_MAX = 500


def _check_dim(dim: int, limit: int, what: str) -> None:
    """``dim`` non-trivial vectors need ``dim + 1 <= limit`` (the rank bound)."""
    if dim < 1:
        raise PtragError(f"--dim must be at least 1 (got {dim}).")
    if dim + 1 > limit:
        raise PtragError(f"--dim {dim} is too large for {what}; use at most {limit - 1}.")


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Make each column's largest-magnitude entry positive (eigenvector signs are arbitrary)."""
    idx = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[idx, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1
    return vectors * signs


def spectral_embedding(adjacency: sp.spmatrix, dim: int, seed: int = 0) -> np.ndarray:
    """Leading eigenvectors of ``D^-1/2 A D^-1/2``, without the trivial first one.

    Parameters
    ----------
    adjacency
        Symmetric non-negative ``[n, n]`` sparse matrix (no isolated nodes).
    dim
        Number of eigenvectors kept.
    seed
        Seed of the Lanczos start vector (the result is deterministic for a seed).

    Returns
    -------
    numpy.ndarray
        ``float32`` ``[n, dim]``, columns ordered by decreasing eigenvalue.
    """
    a = sp.csr_matrix(adjacency, dtype=np.float64)
    n = a.shape[0]
    _check_dim(dim, n, f"{n} genes in the graph")
    deg = np.asarray(a.sum(axis=1)).ravel()
    if np.any(deg <= 0):
        raise PtragError(f"{int(np.sum(deg <= 0))} genes have no edge; remove them before embedding.")
    s = sp.diags(1.0 / np.sqrt(deg))
    m = (s @ a @ s).tocsr()
    if n <= _DENSE_MAX or dim + 1 >= n:
        vals, vecs = np.linalg.eigh(m.toarray())
    else:
        v0 = np.random.default_rng(seed).standard_normal(n)
        try:
            vals, vecs = eigsh(m, k=dim + 1, which="LA", v0=v0, tol=1e-6)
        except ArpackNoConvergence as exc:  # pragma: no cover - rare on real graphs
            raise PtragError(f"the eigen-solver did not converge for --dim {dim}; try a smaller --dim.") from exc
    order = np.argsort(-vals)[: dim + 1]
    return _fix_signs(vecs[:, order[1:]]).astype(np.float32)


def embed_edges(edges: pd.DataFrame | PathLike, dim: int = 128, seed: int = 0) -> GeneTable:
    """Spectral embedding of a gene network (e.g. STRING).

    Parameters
    ----------
    edges
        An edge table (genes in the first two columns, weights as in :func:`read_edges`) or
        the path of an edge file.
    dim
        Embedding dimension.
    seed
        Seed of the eigen-solver's start vector.

    Returns
    -------
    GeneTable
        One row per gene of the network.
    """
    source = ""
    if not isinstance(edges, pd.DataFrame):
        source = str(edges)
        edges = read_edges(edges)
    elif list(edges.columns[:3]) != ["a", "b", "weight"]:
        edges = edge_frame(edges)
    keys_a = edges["a"].map(normalize_symbol)
    keys_b = edges["b"].map(normalize_symbol)
    display = pd.Series(np.concatenate([edges["a"].to_numpy(), edges["b"].to_numpy()]))
    keys = pd.Index(np.concatenate([keys_a.to_numpy(), keys_b.to_numpy()]))
    _, first = np.unique(keys, return_index=True)
    order = np.sort(first)
    genes = pd.Index(keys[order])
    names = display.iloc[order].tolist()
    i, j = genes.get_indexer(keys_a), genes.get_indexer(keys_b)
    n = len(genes)
    w = sp.coo_matrix((edges["weight"].to_numpy(np.float64), (i, j)), shape=(n, n)).tocsr()
    w = w.maximum(w.T)  # an edge listed in both directions counts once
    n_comp, labels = connected_components(w, directed=False)
    if n_comp > 1:
        sizes = np.bincount(labels)
        log.info(
            "the network has %d connected components; %d of %d genes lie outside the largest.",
            n_comp,
            int(n - sizes.max()),
            n,
        )
    vectors = spectral_embedding(w, dim, seed)
    log.info("embedded %d genes of a network with %d edges into %d dims", n, w.nnz // 2, dim)
    return GeneTable(names, vectors, source or "edges")


def embed_gene_sets(
    gene_sets: Mapping[str, list[str]] | PathLike,
    dim: int = 128,
    seed: int = 0,
) -> GeneTable:
    """Spectral embedding of the 1/size-weighted co-membership graph of gene sets (e.g. GO).

    Parameters
    ----------
    gene_sets
        ``{term: genes}`` or the path of a ``.gmt`` file.
    dim
        Embedding dimension.
    seed
        Seed of the solver's start vector.

    Returns
    -------
    GeneTable
        One row per gene that belongs to a set of at least two genes.
    """
    source = ""
    if not isinstance(gene_sets, Mapping):
        source = str(gene_sets)
        gene_sets = read_gmt(gene_sets)
    names: list[str] = []
    pos: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    n_terms = 0
    for members in gene_sets.values():
        keys = {}
        for g in members:
            keys.setdefault(normalize_symbol(g), str(g).strip())
        if len(keys) < 2:
            continue
        for k, disp in keys.items():
            if k not in pos:
                pos[k] = len(names)
                names.append(disp)
            rows.append(pos[k])
            cols.append(n_terms)
        n_terms += 1
    if n_terms == 0:
        raise PtragError(f"{source or 'the gene sets'}: no set has two or more genes.")
    n = len(names)
    _check_dim(dim, min(n, n_terms), f"{n} genes in {n_terms} gene sets")
    b = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n_terms))
    size = np.asarray(b.sum(axis=0)).ravel()
    n_sets = np.asarray(b.sum(axis=1)).ravel()  # degree of each gene in B diag(1/s) B^T
    m = sp.diags(1.0 / np.sqrt(n_sets)) @ b @ sp.diags(1.0 / np.sqrt(size))
    if min(m.shape) <= _DENSE_MAX or dim + 1 >= min(m.shape):
        u, sv, _ = np.linalg.svd(m.toarray(), full_matrices=False)
    else:
        v0 = np.random.default_rng(seed).standard_normal(min(m.shape))
        u, sv, _ = svds(m.tocsc(), k=dim + 1, v0=v0, tol=1e-6)
    order = np.argsort(-sv)[: dim + 1]
    vectors = _fix_signs(u[:, order[1:]]).astype(np.float32)
    log.info("embedded %d genes of %d gene sets into %d dims", n, n_terms, dim)
    return GeneTable(names, vectors, source or "gene sets")
