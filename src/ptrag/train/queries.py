"""What ``ptrag predict --perturbations`` needs beyond the run: the cell type of the new
perturbations and the gene vectors of the ones the run never saw."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ptrag.errors import PtragError
from ptrag.train.config import TrainConfig


def new_cell_type(data, data_path: str | Path, cell_type: str | None) -> str:
    """The cell type of ``--perturbations`` (the only one when not given), checked."""
    if cell_type is None:
        if len(data.cell_types) > 1:
            raise PtragError(f"--perturbations needs --cell-type (one of: {', '.join(data.cell_types)}).")
        cell_type = data.cell_types[0]
    if cell_type not in data.cell_types:
        raise PtragError(
            f"--cell-type {cell_type!r} does not occur in {data_path} (cell types: {', '.join(data.cell_types)})."
        )
    return cell_type


def new_vectors(cfg: TrainConfig, plan, new: list[str], gene_tables: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """Gene vectors of perturbations the run never saw (embedding models only)."""
    if not new:
        return {}
    if not cfg.uses_gene_table:
        raise PtragError(
            f"--model state has no representation for perturbations it never trained on ({', '.join(new[:5])}); "
            "use a gene-embedding model (state_genept, vanilla_rag, pt_rag, pt_rag_response)."
        )
    if not gene_tables:
        raise PtragError(f"{', '.join(new[:5])} are new to this run: pass --genes with a table that has their vectors.")
    from ptrag.data.embeddings import load_gene_tables, perturbation_vectors

    vecs, _ = perturbation_vectors(new, load_gene_tables(list(gene_tables)), "error")
    if vecs.shape[1] != plan.pert_table.shape[1]:
        raise PtragError(
            f"the gene table has {vecs.shape[1]}-d vectors but the run was trained on "
            f"{plan.pert_table.shape[1]}-d ones; "
            "pass the table(s) used for training."
        )
    return {p: torch.from_numpy(v) for p, v in zip(new, vecs, strict=True)}
