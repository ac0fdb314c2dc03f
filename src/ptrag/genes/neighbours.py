"""A measurable notion of "sensible neighbours" in a gene table.

For each gene, take its ``k`` nearest neighbours by cosine similarity and ask how often a
neighbour shares prior knowledge with it: a gene set (e.g. a GO term) containing both genes,
or an edge between them (e.g. STRING). Compare with ``k`` random partners per gene. A table
whose neighbours share knowledge several times more often than random pairs places related
genes together, which is what retrieval by gene-embedding similarity relies on.

Only genes that have a (non-zero) vector and appear in the knowledge are evaluated, and both
neighbours and random partners are drawn among them, so the two rates are comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.embeddings import GeneTable, l2_normalize, normalize_symbol
from ptrag.errors import PtragError

log = logging.getLogger("ptrag")

#: Gene sets ``{term: genes}`` or edges (pairs of symbols, a 2-column array or DataFrame).
Knowledge = Mapping[str, Iterable[str]] | Sequence[tuple[str, str]] | np.ndarray | pd.DataFrame


class SharingRates(NamedTuple):
    """Rates of sharing knowledge: among nearest neighbours, and among random pairs."""

    knn: float
    random: float


def _is_sets(knowledge: Knowledge) -> bool:
    return isinstance(knowledge, Mapping)


def _edge_pairs(knowledge: Knowledge) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(knowledge, pd.DataFrame):
        arr = knowledge.iloc[:, :2].astype(str).to_numpy()
    else:
        arr = np.asarray(knowledge, dtype=object)
        if arr.ndim != 2 or arr.shape[1] < 2:
            raise PtragError("edges must be pairs of gene symbols (an [n, 2] array or a DataFrame).")
        arr = arr[:, :2].astype(str)
    return arr[:, 0], arr[:, 1]


def shared_genes(table: GeneTable, knowledge: Knowledge) -> list[str]:
    """The normalised symbols that have a non-zero vector and occur in ``knowledge``.

    Parameters
    ----------
    table
        The gene table.
    knowledge
        Gene sets ``{term: genes}`` or edges (pairs of symbols).

    Returns
    -------
    list of str
        Normalised symbols, in table order.
    """
    if _is_sets(knowledge):
        known = {normalize_symbol(g) for genes in knowledge.values() for g in genes}
    else:
        a, b = _edge_pairs(knowledge)
        known = {normalize_symbol(g) for g in np.concatenate([a, b])}
    nz = table.nonzero()
    out, seen = [], set()
    for name, ok in zip(table.names, nz, strict=True):
        key = normalize_symbol(name)
        if ok and key in known and key not in seen:
            seen.add(key)
            out.append(key)
    return out


def _relation(knowledge: Knowledge, genes: list[str]) -> sp.csr_matrix:
    """Sparse gene x item matrix: gene x term incidence for sets, adjacency for edges."""
    pos = {g: i for i, g in enumerate(genes)}
    n = len(genes)
    if _is_sets(knowledge):
        rows, cols = [], []
        for t, members in enumerate(knowledge.values()):
            idx = {pos[k] for k in (normalize_symbol(g) for g in members) if k in pos}
            rows.extend(idx)
            cols.extend([t] * len(idx))
        return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, len(knowledge)))
    a, b = _edge_pairs(knowledge)
    ia = np.array([pos.get(normalize_symbol(g), -1) for g in a])
    ib = np.array([pos.get(normalize_symbol(g), -1) for g in b])
    ok = (ia >= 0) & (ib >= 0) & (ia != ib)
    adj = sp.csr_matrix((np.ones(int(ok.sum()), dtype=np.float32), (ia[ok], ib[ok])), shape=(n, n))
    return (adj + adj.T).tocsr()


def _shares(rel: sp.csr_matrix, sets: bool, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    if sets:
        return np.asarray(rel[i].multiply(rel[j]).sum(axis=1)).ravel() > 0
    return np.asarray(rel[i, j]).ravel() > 0


def nearest_neighbours(vectors: np.ndarray, k: int, block: int = 2048) -> np.ndarray:
    """Indices of each row's ``k`` most cosine-similar other rows.

    Parameters
    ----------
    vectors
        ``[n, d]`` array (need not be normalised).
    k
        Neighbours per row (``k < n``).
    block
        Rows per similarity block (memory ``block * n`` floats).

    Returns
    -------
    numpy.ndarray
        ``int64`` ``[n, k]``, most similar first; a row is never its own neighbour.
    """
    v = l2_normalize(vectors)
    n = v.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sim = v[start:stop] @ v.T
        sim[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(part, order, axis=1)
    return out


def neighbour_sharing_rate(
    table: GeneTable,
    gene_sets_or_edges: Knowledge,
    k: int = 10,
    seed: int = 0,
) -> SharingRates:
    """How often nearest neighbours share a gene set / an edge, vs random pairs.

    Parameters
    ----------
    table
        The gene table to judge.
    gene_sets_or_edges
        Either gene sets ``{term: [genes]}`` (a pair shares when some set holds both), or edges
        as pairs of symbols (a pair shares when it is an edge, either direction).
    k
        Neighbours (and random partners) per gene.
    seed
        Seed of the random partners.

    Returns
    -------
    SharingRates
        ``(knn, random)``: the fraction of (gene, neighbour) pairs that share knowledge, and
        the same fraction for ``k`` uniformly random partners per gene.
    """
    if k < 1:
        raise PtragError(f"k must be at least 1 (got {k}).")
    genes = shared_genes(table, gene_sets_or_edges)
    n = len(genes)
    if n <= k:
        raise PtragError(
            f"only {n} genes of {table.source or 'the table'} occur in the knowledge; need more "
            f"than k = {k} to compare neighbours. Check that the symbols match."
        )
    idx = table.index()
    vectors = table.vectors[[idx[g] for g in genes]]
    rel = _relation(gene_sets_or_edges, genes)
    sets = _is_sets(gene_sets_or_edges)
    nn = nearest_neighbours(vectors, k)
    rows = np.repeat(np.arange(n), k)
    knn = float(_shares(rel, sets, rows, nn.ravel()).mean())
    rng = np.random.default_rng(seed)
    partner = rng.integers(0, n - 1, size=n * k)
    partner += partner >= rows  # uniform over the other n - 1 genes
    rand = float(_shares(rel, sets, rows, partner).mean())
    log.info(
        "neighbour sharing over %d genes (k=%d): nearest %.3f, random %.3f (x%.1f)",
        n,
        k,
        knn,
        rand,
        knn / rand if rand > 0 else float("inf"),
    )
    return SharingRates(knn, rand)
