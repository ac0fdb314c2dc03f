"""Gene knowledge for perturbation representations and retrieval.

- :mod:`ptrag.genes.text`: the GenePT recipe with a local model (gene summaries -> vectors).
- :mod:`ptrag.genes.graph`: spectral embeddings of STRING-like networks and GO-like gene sets.
- :mod:`ptrag.genes.neighbours`: how often nearest neighbours in a table share prior knowledge.

Reading, joining and looking up tables lives in :mod:`ptrag.data.embeddings`.
"""

from ptrag.genes.graph import embed_edges, embed_gene_sets, read_edges, read_gmt, spectral_embedding
from ptrag.genes.neighbours import SharingRates, nearest_neighbours, neighbour_sharing_rate, shared_genes

__all__ = [
    "SharingRates",
    "embed_edges",
    "embed_gene_sets",
    "nearest_neighbours",
    "neighbour_sharing_rate",
    "read_edges",
    "read_gmt",
    "shared_genes",
    "spectral_embedding",
]
