"""Prediction from a run folder: held-out groups or unseen perturbations -> AnnData.

The output AnnData has the run's genes as ``var_names``; ``obs`` carries ``perturbation``,
``cell_type``, ``is_control`` and ``split``; the observed control cells of every predicted
cell type are included, so evaluators (``ptrag evaluate``, cell-eval) read it as it is. For the
RAG models a retrieval log lists, per (cell type, query), each retrieved candidate with its
similarity and the fraction of the query's predicted cells that selected it. The field's simple
baselines (:mod:`ptrag.train.baselines`) predict the same sets from the matched control cells
(:func:`predict` with ``baseline=``, :func:`predict_baselines`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from ptrag.data.io import read_perturbseq
from ptrag.data.prediction import Prediction, write_prediction  # noqa: F401 (re-exported)
from ptrag.data.sets import CellSet, SetSampler
from ptrag.data.sources import DataSource
from ptrag.data.splits import SPLITS, read_split_toml, resolve_split
from ptrag.errors import PtragError, check_choice
from ptrag.train.baselines import BASELINES, baseline_shifts, group_mean_changes
from ptrag.train.config import TrainConfig, read_run_config
from ptrag.train.queries import new_cell_type, new_vectors
from ptrag.train.retrieval_log import aggregate_retrieval, retrieval_rows

log = logging.getLogger("ptrag")


def load_plan(run_dir: str | Path, checkpoint: str = "best"):
    """Load the training plan of a run folder from ``checkpoints/{best,last}.ckpt`` or a path."""
    from ptrag.train.plan import PerturbationPlan

    run_dir = Path(run_dir)
    path = Path(checkpoint) if checkpoint not in ("best", "last") else run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise PtragError(f"no checkpoint at {path}; train the run first (`ptrag train --out {run_dir}`).")
    try:
        plan = PerturbationPlan.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 -- any unreadable checkpoint is a user-level problem
        raise PtragError(
            f"{path} is not a readable ptrag checkpoint ({type(exc).__name__}: {exc}); retrain or resume the run."
        ) from exc
    plan.eval()
    return plan


def _collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def predict(
    run_dir: str | Path,
    data_path: DataSource,
    split: str = "test",
    perturbations: Sequence[str] | None = None,
    cell_type: str | None = None,
    gene_tables: Sequence[str | Path] = (),
    n_cells: int | None = None,
    checkpoint: str = "best",
    batch_size: int = 64,
    backed: bool = False,
    control_baseline: bool = False,
    baseline: str | None = None,
) -> Prediction:
    """Predict the perturbed cells of a split, or of perturbations never seen in training.

    Parameters
    ----------
    run_dir
        A run folder written by :func:`ptrag.train.fit.train`.
    data_path
        The h5ad file or an in-memory AnnData (controls are taken from it; run's column spec).
    split
        ``train``, ``val`` or ``test``: predict every group of that split, as many cells as
        were observed.
    perturbations
        Instead of a split: perturbation names to predict for ``cell_type`` from their gene
        vectors (embedding models only; any run for a baseline).
    cell_type
        Cell type of ``perturbations``.
    gene_tables
        Gene tables for ``perturbations`` (default: none, the run's table is not stored;
        vectors of perturbations known to the run come from the checkpoint).
    n_cells
        Cells to predict per unseen perturbation (default: the run's set size).
    checkpoint
        ``best``, ``last`` or a checkpoint path.
    batch_size
        Sets per forward pass.
    backed
        Stream expression from disk (a path only; ignored for an in-memory AnnData).
    control_baseline
        The same as ``baseline="control"``.
    baseline
        Skip the network and predict a baseline of :data:`ptrag.train.baselines.BASELINES`:
        each set is ``relu(its matched control cells + the baseline's shift)``, the shift
        computed from the run's training groups only (``control``: no shift). The same sets,
        controls and output layout as the model's prediction, so they are compared group by
        group; the model name in ``uns['ptrag']`` is the baseline's; no retrieval log.

    Returns
    -------
    Prediction
        ``.adata``: the predicted cells as an AnnData; ``.retrieval``: the RAG models' log.
    """
    baseline = _baseline_choice(n_cells, control_baseline, baseline)
    common = (split, perturbations, cell_type, n_cells, checkpoint, backed)  # what the baselines share
    if baseline is not None:
        return next(iter_baselines(run_dir, data_path, [baseline], *common))[1]
    return _predict_network(run_dir, data_path, *common, gene_tables=gene_tables, batch_size=batch_size)


def _baseline_choice(n_cells: int | None, control_baseline: bool, baseline: str | None) -> str | None:
    """Check ``n_cells`` and fold ``control_baseline`` into ``baseline``: the baseline to predict, or ``None``."""
    if n_cells is not None and n_cells < 1:
        raise PtragError(f"--n-cells must be at least 1 (got {n_cells}): the cells to predict per new perturbation.")
    if control_baseline:
        if baseline not in (None, "control"):
            raise PtragError(f"--control-baseline and --baseline {baseline} disagree: give one of them.")
        baseline = "control"
    return baseline


def _predict_network(
    run_dir: str | Path,
    data_path: DataSource,
    split: str,
    perturbations: Sequence[str] | None,
    cell_type: str | None,
    n_cells: int | None,
    checkpoint: str,
    backed: bool,
    gene_tables: Sequence[str | Path],
    batch_size: int,
) -> Prediction:
    """:func:`predict` with the run's network (arguments as there)."""
    cfg: TrainConfig = read_run_config(run_dir)
    run_dir = Path(run_dir)
    plan = load_plan(run_dir, checkpoint)
    genes = (run_dir / "genes.txt").read_text().split()
    data = read_perturbseq(data_path, cfg.column_spec, backed=backed)
    pca = None
    if cfg.cell_encoder == "pca":
        from ptrag.data.pca import PCASpace

        pca = PCASpace.load(run_dir / "pca.npz")
    from ptrag.train.fit import cell_feature_fn

    features, _ = cell_feature_fn(cfg, data, pca)
    pert_index = {n: i for i, n in enumerate(plan.pert_names)}
    extra_vec: dict[str, torch.Tensor] = {}
    if perturbations:
        cell_type = new_cell_type(data, data.path, cell_type)
        extra_vec = new_vectors(cfg, plan, [p for p in perturbations if p not in pert_index], gene_tables)
    sets, groups, split_name = _plan_sets(cfg, run_dir, data, pert_index, split, perturbations, cell_type, n_cells)
    gene_idx = data.gene_index(genes)
    outputs, retrieval = _run_network(plan, data, sets, gene_idx, features, pert_index, extra_vec, batch_size)
    adata = _assemble(sets, outputs, groups, data, gene_idx, genes, split_name, cfg.model, run_dir)
    return Prediction(adata, aggregate_retrieval(retrieval) if retrieval else None)


def _run_network(
    plan,
    data,
    sets: list[CellSet],
    gene_idx: np.ndarray,
    features,
    pert_index: dict[str, int],
    extra_vec: dict[str, torch.Tensor],
    batch_size: int,
) -> tuple[list[np.ndarray], list[dict]]:
    """The network's predicted cells of every set (in order) and the retrieval rows."""
    retrieval: list[dict] = []
    device = plan.device
    # Sets of one size go through the network together; order is restored afterwards.
    by_size: dict[int, list[int]] = {}
    for i, cs in enumerate(sets):
        by_size.setdefault(len(cs.ctrl_rows), []).append(i)
    outputs: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for idxs in by_size.values():
            for start in range(0, len(idxs), batch_size):
                chunk = [sets[i] for i in idxs[start : start + batch_size]]
                items = []
                for cs in chunk:
                    ctrl = data.expression(cs.ctrl_rows, gene_idx)
                    feats = ctrl if features is None else features(cs.ctrl_rows, ctrl)
                    items.append(
                        {
                            "ctrl_expr": torch.from_numpy(ctrl),
                            "cell_input": torch.from_numpy(np.ascontiguousarray(feats, np.float32)),
                            "ct_id": torch.tensor(plan.cell_type_id(cs.cell_type)),
                        }
                    )
                batch = {k: v.to(device) for k, v in _collate(items).items()}
                names = [cs.perturbation for cs in chunk]
                vec = torch.stack(
                    [extra_vec[n] if n in extra_vec else plan.pert_table[pert_index[n]] for n in names]
                ).to(device)
                qidx = plan.query_rows(torch.tensor([pert_index.get(n, -1) for n in names], device=device))
                out = plan(batch, pert_vec=vec, query_index=qidx, calibrated=True)
                for cs_i, p in zip(idxs[start : start + batch_size], out.pred.cpu().numpy(), strict=True):
                    outputs[cs_i] = p
                if out.candidates is not None:
                    retrieval.extend(retrieval_rows(plan, out, chunk))
    return [outputs[i] for i in range(len(sets))], retrieval


def predict_baselines(
    run_dir: str | Path, data_path: DataSource, names: Sequence[str] = BASELINES, **options
) -> dict[str, Prediction]:
    """Baseline predictions (:mod:`ptrag.train.baselines`) on the sets of :func:`predict`.

    Parameters
    ----------
    run_dir, data_path
        As for :func:`predict`.
    names
        Baselines to predict (default: all of :data:`~ptrag.train.baselines.BASELINES`).
    **options
        ``split``, ``perturbations``, ``cell_type``, ``n_cells``, ``checkpoint``, ``backed``
        as for :func:`iter_baselines`.

    Returns
    -------
    dict[str, Prediction]
        Baseline name -> its prediction (``retrieval`` is ``None``); see :func:`iter_baselines`.
    """
    return dict(iter_baselines(run_dir, data_path, names, **options))


def iter_baselines(
    run_dir: str | Path,
    data_path: DataSource,
    names: Sequence[str] = BASELINES,
    split: str = "test",
    perturbations: Sequence[str] | None = None,
    cell_type: str | None = None,
    n_cells: int | None = None,
    checkpoint: str = "best",
    backed: bool = False,
) -> Iterator[tuple[str, Prediction]]:
    """Yield ``(name, prediction)`` for each baseline of ``names``, one at a time (so that
    only one is held in memory); ``split`` ... ``backed`` as for :func:`predict` (the
    checkpoint is read only for the perturbations the run represents, so that the baselines
    predict exactly the model's groups).

    The training groups' mean changes are computed once for all ``names``. Every set of the
    model's prediction (same groups, same matched control cells, same order) is predicted as
    ``relu(matched controls + shift)``.
    """
    for name in names:
        check_choice("--baseline", name, BASELINES)
    cfg: TrainConfig = read_run_config(run_dir)
    run_dir = Path(run_dir)
    plan = load_plan(run_dir, checkpoint)
    genes = (run_dir / "genes.txt").read_text().split()
    data = read_perturbseq(data_path, cfg.column_spec, backed=backed)
    gene_idx = data.gene_index(genes)
    pert_index = {n: i for i, n in enumerate(plan.pert_names)}
    if perturbations:
        cell_type = new_cell_type(data, data.path, cell_type)
    sets, groups, split_name = _plan_sets(cfg, run_dir, data, pert_index, split, perturbations, cell_type, n_cells)
    changes = None
    if any(n != "control" for n in names):
        changes = group_mean_changes(data, _training_groups(run_dir, data, pert_index), genes)
    targets = list(dict.fromkeys((cs.cell_type, cs.perturbation) for cs in sets))
    for name in names:
        shift = dict(zip(targets, baseline_shifts(name, changes, targets, len(genes)).astype(np.float32), strict=True))
        outputs = [
            np.maximum(data.expression(cs.ctrl_rows, gene_idx) + shift[(cs.cell_type, cs.perturbation)], 0.0)
            for cs in sets
        ]
        yield name, Prediction(_assemble(sets, outputs, groups, data, gene_idx, genes, split_name, name, run_dir), None)


def _training_groups(run_dir: Path, data, pert_index: dict[str, int]) -> pd.DataFrame:
    """The groups the run trained on: the split's training groups whose perturbation the run
    represents (a gene-table run may have dropped some with ``--missing-genes drop``)."""
    split_obj = resolve_split(
        read_split_toml(run_dir / "split.toml"), data.groups(), source=str(run_dir / "split.toml")
    )
    train = split_obj.groups("train")
    return train[train["perturbation"].isin(pert_index)].reset_index(drop=True)


def _plan_sets(
    cfg: TrainConfig,
    run_dir: Path,
    data,
    pert_index: dict[str, int],
    split: str,
    perturbations: Sequence[str] | None,
    cell_type: str | None,
    n_cells: int | None,
) -> tuple[list[CellSet], pd.DataFrame, str]:
    """The sets to predict (a split's groups, or ``n_cells`` controls per new perturbation),
    their groups and the split name written in ``obs``."""
    if perturbations:
        n = n_cells or cfg.cell_set_size
        ctrl_pool = data.rows_of(cell_type, data.spec.control)
        rng = np.random.default_rng(cfg.seed)
        sets = [
            CellSet(i, cell_type, p, np.full(n, -1), rng.choice(ctrl_pool, n, replace=len(ctrl_pool) < n))
            for i, p in enumerate(perturbations)
        ]
        groups = pd.DataFrame({"cell_type": [cell_type] * len(perturbations), "perturbation": list(perturbations)})
        return sets, groups, "new"
    check_choice("--split", split, SPLITS)
    split_obj = resolve_split(
        read_split_toml(run_dir / "split.toml"), data.groups(), source=str(run_dir / "split.toml")
    )
    groups = split_obj.groups(split)
    groups = groups[groups["perturbation"].isin(pert_index)].reset_index(drop=True)
    if groups.empty:
        raise PtragError(f"the {split} split of {run_dir} has no groups this model can predict.")
    sampler = SetSampler(
        data.obs, groups, cfg.cell_set_size, mode="eval", seed=cfg.seed + 2, match_batch=cfg.match_batch
    )
    return sampler.plan(), groups, split


def _assemble(
    sets: list[CellSet],
    outputs: list[np.ndarray],
    groups: pd.DataFrame,
    data,
    gene_idx: np.ndarray,
    genes: list[str],
    split_name: str,
    model: str,
    run_dir: Path,
) -> ad.AnnData:
    """The prediction AnnData: the predicted sets, then the observed controls of their cell types."""
    preds, obs_rows = list(outputs), []
    for cs in sets:
        obs_rows.append(
            pd.DataFrame(
                {"perturbation": cs.perturbation, "cell_type": cs.cell_type, "is_control": False, "split": split_name},
                index=range(len(cs.ctrl_rows)),
            )
        )
    for ct in groups["cell_type"].unique():
        rows = data.rows_of(ct, data.spec.control)
        preds.append(data.expression(rows, gene_idx))
        obs_rows.append(
            pd.DataFrame(
                {"perturbation": data.spec.control, "cell_type": ct, "is_control": True, "split": "control"},
                index=range(len(rows)),
            )
        )
    obs = pd.concat(obs_rows, ignore_index=True)
    obs.index = [f"pred_{i}" for i in range(len(obs))]
    for c in ("perturbation", "cell_type", "split"):
        obs[c] = obs[c].astype("category")
    adata = ad.AnnData(np.concatenate(preds).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["ptrag"] = {
        "model": model,
        "control": data.spec.control,
        "pert_col": "perturbation",
        "cell_type_col": "cell_type",
        "run_dir": str(run_dir.resolve()),
        "split": split_name,
    }
    return adata
