"""The inputs of a training run: data, split, perturbation table, genes, PCA, plan, loaders.

:func:`prepare_run` reads the data, makes or reads the split, builds the perturbation table
(one-hot or gene embeddings) and the retrieval database (training perturbations only), picks
the genes (HVGs on training cells) and fits the PCA-50 space on training cells;
:func:`build_plan` and :func:`make_loader` turn them into the Lightning module and the
DataLoaders that :func:`ptrag.train.fit.train` fits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ptrag.data.embeddings import load_gene_tables, one_hot, perturbation_vectors
from ptrag.data.hvg import select_hvg
from ptrag.data.io import PerturbData, read_perturbseq
from ptrag.data.sets import SetDataset, SetSampler
from ptrag.data.splits import Split, load_split
from ptrag.errors import PtragError
from ptrag.train.base_choice import BaseEvidence, resolve_auto
from ptrag.train.baselines import GroupChanges
from ptrag.train.config import TrainConfig

log = logging.getLogger("ptrag")


@dataclass
class PreparedRun:
    """Everything a training run needs besides the network.

    Attributes
    ----------
    data
        The data set.
    split
        The split (groups whose perturbation cannot be represented are removed).
    source_split
        The split as given or made, before that removal: what the run folder's ``split.toml``
        holds (cell-load's format lists only the held-out groups, so a removed held-out group
        written out would read back as a training group).
    genes
        Output genes, in order.
    pert_names, pert_vectors
        Perturbation table: names and ``[P, D]`` vectors.
    database_names
        Training perturbations forming the retrieval database.
    cell_features
        ``(rows, expression) -> features`` for the cell encoder, ``None`` for expression.
    cell_input_dim
        Width of the cell encoder's input.
    pca
        The PCA-50 space fit on training cells.
    cell_types
        The data's cell types (rows of the plan's per-cell-type table).
    base_shift
        ``[n_cell_types, n_genes]`` residual base shift (``--residual-base``), or ``None``.
    responses
        ``pt_rag_response``'s database (:func:`response_database`), else ``None``.
    config
        The run's configuration with ``auto`` options resolved (:mod:`ptrag.train.base_choice`).
    base_evidence
        What ``--residual-base auto`` measured, or ``None``.
    """

    data: PerturbData
    split: Split
    genes: list[str]
    pert_names: list[str]
    pert_vectors: np.ndarray
    database_names: list[str]
    cell_features: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    cell_input_dim: int
    pca: object
    cell_types: list[str] = field(default_factory=list)
    base_shift: np.ndarray | None = None
    source_split: Split | None = None
    responses: dict[str, np.ndarray] | None = None
    config: TrainConfig | None = None
    base_evidence: BaseEvidence | None = None


def training_rows(data: PerturbData, split: Split) -> np.ndarray:
    """Rows of control cells and of the cells of training groups."""
    o = data.obs
    train = split.groups("train")
    key = o["cell_type"].astype(str) + "\x00" + o["perturbation"].astype(str)
    train_keys = set(train["cell_type"] + "\x00" + train["perturbation"])
    m = (o["is_control"] | key.isin(train_keys)) & o["keep"]
    return np.flatnonzero(m.to_numpy())


def cell_feature_fn(cfg: TrainConfig, data: PerturbData, pca) -> tuple[Callable | None, int | None]:
    """What the cell encoder reads: expression (``None``), obsm embeddings, or PCA scores."""
    if cfg.cell_encoder == "obsm":
        emb = data.cell_embedding(cfg.cell_obsm_key)
        return (lambda rows, x: emb[rows]), emb.shape[1]
    if cfg.cell_encoder == "pca":
        return (lambda rows, x: pca.transform(x).astype(np.float32)), pca.n_components
    return None, None


def prepare_run(
    cfg: TrainConfig,
    data_path: str | Path,
    split_path: str | Path | None = None,
    gene_tables: Sequence[str | Path] = (),
    backed: bool = False,
    gene_aliases: str | Path | None = None,
) -> PreparedRun:
    """Read and check the inputs of a run (see the module docstring).

    Parameters
    ----------
    cfg
        Resolved configuration.
    data_path
        The h5ad file or an in-memory AnnData (:data:`ptrag.data.sources.DataSource`).
    split_path
        A cell-load split TOML; made from ``cfg.task`` when ``None``.
    gene_tables
        Gene-embedding tables (required by the embedding models, refused by ``state``).
    backed
        Stream expression from disk.
    gene_aliases
        Optional alias map for gene symbols.

    Returns
    -------
    PreparedRun
    """
    _check_gene_tables(cfg, gene_tables)
    data, groups = _read_groups(cfg, data_path, backed)
    table, groups = _gene_table_groups(cfg, groups, gene_tables, gene_aliases)
    split = _make_split(cfg, groups, split_path)
    train_perts = split.perturbations("train")
    source_split = split
    pert_names, pert_vectors, split = _perturbation_table(cfg, split, train_perts, table)
    database_names = _database_names(cfg, train_perts)
    genes, pca = _genes_and_pca(cfg, data, split, data_path)
    features, dim = cell_feature_fn(cfg, data, pca)
    cell_types = list(data.cell_types)
    changes = GroupChanges(data, genes)  # training groups' mean changes, each read once
    cfg, evidence = resolve_auto(cfg, data, split, genes, changes)
    return PreparedRun(
        data=data,
        split=split,
        genes=genes,
        pert_names=list(pert_names),
        pert_vectors=np.asarray(pert_vectors, dtype=np.float32),
        database_names=list(database_names),
        cell_features=features,
        cell_input_dim=dim or len(genes),
        pca=pca,
        cell_types=cell_types,
        base_shift=_base_shift(cfg, changes, split, pert_names, cell_types),
        source_split=source_split,
        responses=response_database(changes, split, pert_names, cell_types, pca, cfg.topk)
        if cfg.conditioning == "pt_rag_response"
        else None,
        config=cfg,
        base_evidence=evidence,
    )


def _check_gene_tables(cfg: TrainConfig, gene_tables: Sequence[str | Path]) -> None:
    """Refuse gene tables missing for an embedding model, or given to ``state``."""
    if cfg.uses_gene_table and not gene_tables:
        raise PtragError(
            f"--model {cfg.model} needs gene embeddings: pass --genes TABLE (GenePT pickle, CSV, parquet or npz)."
        )
    if not cfg.uses_gene_table and gene_tables:
        raise PtragError(
            "--model state represents perturbations one-hot and takes no --genes; use --model state_genept "
            "to condition on gene embeddings."
        )


def _read_groups(cfg: TrainConfig, data_path: str | Path, backed: bool) -> tuple[PerturbData, pd.DataFrame]:
    """The data set and its perturbed groups (refused when there are none)."""
    data = read_perturbseq(data_path, cfg.column_spec, backed=backed)
    groups = data.groups()
    if groups.empty:
        raise PtragError(f"{data.path}: no perturbed cells besides controls ({cfg.column_spec.control!r}).")
    return data, groups


def _gene_table_groups(
    cfg: TrainConfig, groups: pd.DataFrame, gene_tables: Sequence[str | Path], gene_aliases: str | Path | None
) -> tuple[object | None, pd.DataFrame]:
    """The gene table of an embedding model (``None`` for ``state``) and the groups it can represent."""
    table = None
    if cfg.uses_gene_table:
        table = load_gene_tables(list(gene_tables), normalize=True, aliases=gene_aliases)
        perts = sorted(groups["perturbation"].unique())
        counts = groups.groupby("perturbation")["n_cells"].sum().to_dict()
        _, kept = perturbation_vectors(perts, table, cfg.missing_genes, counts)
        groups = groups[groups["perturbation"].isin(kept)].reset_index(drop=True)
    return table, groups


def _make_split(cfg: TrainConfig, groups: pd.DataFrame, split_path: str | Path | None) -> Split:
    """The split read from ``split_path``, or made from ``cfg.task``."""
    return load_split(
        groups,
        split_path,
        task=cfg.task,
        target_cell_type=cfg.target_cell_type or None,
        fraction=cfg.fewshot,
        seed=cfg.seed,
    )


def _perturbation_table(
    cfg: TrainConfig, split: Split, train_perts: list[str], table
) -> tuple[list[str], np.ndarray, Split]:
    """Perturbation names and vectors (gene embeddings or one-hot), and the split without the
    held-out groups a one-hot model cannot represent."""
    if cfg.uses_gene_table:
        pert_names = sorted(split.table["perturbation"].unique())
        pert_vectors, _ = perturbation_vectors(pert_names, table, "error")
        return pert_names, pert_vectors, split
    pert_names = train_perts
    unseen = split.table[~split.table["perturbation"].isin(train_perts)]
    if len(unseen):
        log.warning(
            "--model state cannot represent %d held-out groups whose perturbation never trains "
            "(e.g. %s): they are left out. Use an embedding model to predict them.",
            len(unseen),
            unseen["perturbation"].iloc[0],
        )
        split = Split(split.table[split.table["perturbation"].isin(train_perts)].reset_index(drop=True), split.dataset)
    pert_vectors = one_hot(pert_names, pert_names)
    return pert_names, pert_vectors, split


def _database_names(cfg: TrainConfig, train_perts: list[str]) -> list[str]:
    """The retrieval database (training perturbations, RAG models only), checked against ``--topk``."""
    database_names = train_perts if cfg.conditioning in ("vanilla_rag", "pt_rag") else []
    if database_names and cfg.topk > len(database_names) - 1:
        raise PtragError(
            f"--topk {cfg.topk} is larger than the retrieval database allows: {len(database_names)} training "
            f"perturbations minus the query. Use --topk {max(len(database_names) - 1, 1)} or less."
        )
    return database_names


def _genes_and_pca(
    cfg: TrainConfig, data: PerturbData, split: Split, data_path: str | Path
) -> tuple[list[str], object]:
    """The run's genes (HVGs of training cells) and the PCA-50 space fit on training cells."""
    from ptrag.data.pca import PCASpace

    rows = training_rows(data, split)
    genes = select_hvg(data, rows, cfg.n_genes, seed=cfg.seed)
    if len(genes) < cfg.n_genes:
        log.info("--n-genes %d: %s offers %d genes to select from; all are used.", cfg.n_genes, data.path, len(genes))
    rng = np.random.default_rng(cfg.seed)
    fit_rows = np.sort(rng.choice(rows, min(len(rows), 50_000), replace=False))
    pca = PCASpace.fit(data.expression(fit_rows, genes), n_components=50, seed=cfg.seed, gene_names=genes)
    return genes, pca


def response_database(changes: GroupChanges, split, pert_names, cell_types, pca, topk: int) -> dict[str, np.ndarray]:
    """``pt_rag_response``'s database: one entry per training group (its cells and its cell
    type's controls only), with its mean ``shift`` over the run's genes and a ``summary`` (the
    shift's PCA-50 scores and log cell count, each column standardised over the entries).
    ``changes`` is the run's :class:`~ptrag.train.baselines.GroupChanges`.

    Returns
    -------
    dict
        ``entry_pert`` (rows of ``pert_names``), ``entry_ct`` (rows of ``cell_types``),
        ``shift`` ``[E, G]``, ``summary`` ``[E, 51]`` (float32), ``n_cells``, ``control_mean``
        (``[n_cell_types, G]``, each cell type's control cells).
    """
    train = split.groups("train")
    train = train[train["perturbation"].isin(set(pert_names))].reset_index(drop=True)
    if len(train) - 1 < topk:
        raise PtragError(
            f"--topk {topk} is larger than the response database allows: {len(train)} training groups minus "
            f"the query's own. Use --topk {max(len(train) - 1, 1)} or less."
        )
    controls = changes.controls(cell_types)
    delta = changes.of(train).delta
    control_mean = np.stack([controls[ct] for ct in cell_types]).astype(np.float32)
    pert_pos = {p: i for i, p in enumerate(pert_names)}
    ct_pos = {c: i for i, c in enumerate(cell_types)}
    n_cells = train["n_cells"].to_numpy(dtype=np.float64) if "n_cells" in train else np.ones(len(train))
    summary = np.column_stack([delta @ pca.components.T, np.log1p(n_cells)])
    spread = summary.std(axis=0)
    summary = (summary - summary.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    return {
        "entry_pert": np.array([pert_pos[p] for p in train["perturbation"]], dtype=np.int64),
        "entry_ct": np.array([ct_pos[c] for c in train["cell_type"]], dtype=np.int64),
        "shift": delta.astype(np.float32),
        "summary": summary.astype(np.float32),
        "n_cells": n_cells,
        "control_mean": control_mean,
    }


def _base_shift(cfg: TrainConfig, changes: GroupChanges, split, pert_names, cell_types) -> np.ndarray | None:
    """``--residual-base context_mean``: each cell type's mean change over its training groups
    (training cells only; a cell type without training groups: the mean over all of them)."""
    if cfg.residual_base != "context_mean":
        return None
    from ptrag.train.baselines import context_mean

    train = split.groups("train")
    shifts = changes.of(train[train["perturbation"].isin(set(pert_names))].reset_index(drop=True))
    return np.stack([context_mean(shifts, c) for c in cell_types]).astype(np.float32)


def build_plan(cfg: TrainConfig, prep: PreparedRun):
    """The :class:`~ptrag.train.plan.PerturbationPlan` of a prepared run."""
    from ptrag.train.plan import PerturbationPlan

    return PerturbationPlan(
        model_cfg=cfg.model_config().to_dict(),
        n_genes=len(prep.genes),
        cell_input_dim=prep.cell_input_dim,
        pert_names=prep.pert_names,
        pert_dim=prep.pert_vectors.shape[1],
        database_names=prep.database_names,
        genes=prep.genes,
        sparsity_weight=cfg.sparsity_weight,
        sparsity_scale=cfg.sparsity_scale,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        optimizer=cfg.optimizer,
        pert_vectors=torch.from_numpy(prep.pert_vectors),
        cell_types=prep.cell_types,
        base_shift=None if prep.base_shift is None else torch.from_numpy(prep.base_shift),
        residual_base=cfg.residual_base,
        responses=None if prep.responses is None else {k: torch.as_tensor(v) for k, v in prep.responses.items()},
        response_summary_dim=0 if prep.responses is None else prep.responses["summary"].shape[1],
    )


def make_loader(
    cfg: TrainConfig,
    prep: PreparedRun,
    which: str,
    mode: str = "train",
    freeze_epoch: bool = False,
) -> torch.utils.data.DataLoader | None:
    """A DataLoader of cell sets of one split (``None`` when the split is empty)."""
    groups = prep.split.groups(which)
    if groups.empty:
        return None
    sampler = SetSampler(
        prep.data.obs,
        groups,
        cfg.cell_set_size,
        mode=mode,
        seed=cfg.seed + (0 if which == "train" else 1),
        match_batch=cfg.match_batch,
        shuffle=which == "train",
        freeze_epoch=freeze_epoch,
    )
    dataset = SetDataset(
        prep.data,
        prep.genes,
        {n: i for i, n in enumerate(prep.pert_names)},
        prep.cell_features,
        {c: i for i, c in enumerate(prep.cell_types)},
    )
    return data_loader(cfg, prep, dataset, sampler, cfg.batch_size)


def data_loader(cfg: TrainConfig, prep: PreparedRun, dataset, sampler, batch_size: int) -> torch.utils.data.DataLoader:
    """The DataLoader of a :class:`SetDataset` and its :class:`SetSampler`, ``batch_size`` sets a batch."""
    cuda = torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")
    workers = 0 if prep.data.backed else cfg.num_workers
    return torch.utils.data.DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=cuda,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # its own generator: creating an iterator then draws no number from torch's global RNG,
        # so the Gumbel noise stream is the same whether or not a run was resumed mid-epoch
        generator=torch.Generator().manual_seed(cfg.seed),
    )
