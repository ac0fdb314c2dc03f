"""Prediction from a run folder: held-out groups or unseen perturbations -> AnnData.

The output AnnData has the run's genes as ``var_names``; ``obs`` carries ``perturbation``,
``cell_type``, ``is_control`` and ``split``; the observed control cells of every predicted
cell type are included, so evaluators (``ptrag evaluate``, cell-eval) read it as it is. For the
RAG models a retrieval log lists, per (cell type, query), each retrieved candidate with its
similarity and the fraction of the query's predicted cells that selected it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from ptrag.nn.generator import ModelOutput
from ptrag.data.io import read_perturbseq
from ptrag.data.sets import CellSet, SetDataset, SetSampler
from ptrag.data.splits import SPLITS, read_split_toml, resolve_split
from ptrag.errors import PtragError, atomic_path, atomic_write_csv, check_choice
from ptrag.train.config import TrainConfig, read_run_config

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
        raise PtragError(f"{path} is not a readable ptrag checkpoint ({type(exc).__name__}: {exc}); retrain or resume the run.") from exc
    plan.eval()
    return plan


@dataclass
class Prediction:
    """Output of :func:`predict`."""

    adata: ad.AnnData
    retrieval: pd.DataFrame | None


def _collate(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _retrieval_rows(plan, out, sets: list[CellSet]) -> list[dict]:
    names = plan.model.database_names
    rows = []
    for b, cs in enumerate(sets):
        cand = out.candidates[b].tolist()
        sim = out.similarity[b].tolist()
        frac = out.weights[b].float().mean(0).tolist() if out.weights is not None else [float("nan")] * len(cand)
        for c, s, f in zip(cand, sim, frac):
            rows.append(
                dict(cell_type=cs.cell_type, query=cs.perturbation, candidate=names[c], similarity=s,
                     selected_fraction=f, n_cells=len(cs.pert_rows))
            )
    return rows


def _aggregate_retrieval(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["w"] = df["selected_fraction"] * df["n_cells"]
    g = df.groupby(["cell_type", "query", "candidate"], sort=False)
    # min_count=1: a Vanilla RAG log (no selection, NaN fractions) stays NaN instead of summing to 0
    out = g.agg(similarity=("similarity", "first"), n_cells=("n_cells", "sum")).reset_index()
    out["w"] = g["w"].sum(min_count=1).to_numpy()
    out["selected_fraction"] = out["w"] / out["n_cells"]
    out = out.drop(columns=["w"]).sort_values(["cell_type", "query", "similarity"], ascending=[True, True, False])
    return out.reset_index(drop=True)


def predict(
    run_dir: str | Path,
    data_path: str | Path,
    split: str = "test",
    perturbations: Sequence[str] | None = None,
    cell_type: str | None = None,
    gene_tables: Sequence[str | Path] = (),
    n_cells: int | None = None,
    checkpoint: str = "best",
    batch_size: int = 64,
    backed: bool = False,
    control_baseline: bool = False,
) -> Prediction:
    """Predict the perturbed cells of a split, or of perturbations never seen in training.

    Parameters
    ----------
    run_dir
        A run folder written by :func:`ptrag.train.fit.train`.
    data_path
        The h5ad file (controls are taken from it; read with the run's column spec).
    split
        ``train``, ``val`` or ``test``: predict every group of that split, as many cells as
        were observed.
    perturbations
        Instead of a split: perturbation names to predict for ``cell_type`` from their gene
        vectors (embedding models only).
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
        Stream expression from disk.
    control_baseline
        Skip the network and "predict" each set as its matched control cells (the
        predict-the-control baseline, model name ``control``): the same sets, controls and
        output layout as the model's prediction, so the two are compared group by group.

    Returns
    -------
    Prediction
    """
    cfg: TrainConfig = read_run_config(run_dir)
    run_dir = Path(run_dir)
    plan = load_plan(run_dir, checkpoint)
    genes = (run_dir / "genes.txt").read_text().split()
    data = read_perturbseq(data_path, cfg.column_spec, backed=backed)
    pca = None
    if cfg.cell_encoder == "pca":
        from ptrag.eval.pca import PCASpace

        pca = PCASpace.load(run_dir / "pca.npz")
    from ptrag.train.fit import cell_feature_fn

    features, _ = cell_feature_fn(cfg, data, pca)
    pert_index = {n: i for i, n in enumerate(plan.pert_names)}
    extra_vec: dict[str, torch.Tensor] = {}
    if perturbations:
        if cell_type is None:
            if len(data.cell_types) > 1:
                raise PtragError(f"--perturbations needs --cell-type (one of: {', '.join(data.cell_types)}).")
            cell_type = data.cell_types[0]
        if cell_type not in data.cell_types:
            raise PtragError(f"--cell-type {cell_type!r} does not occur in {data_path} (cell types: {', '.join(data.cell_types)}).")
        new = [p for p in perturbations if p not in pert_index]
        if new:
            if not cfg.uses_gene_table:
                raise PtragError(
                    f"--model state has no representation for perturbations it never trained on ({', '.join(new[:5])}); "
                    "use a gene-embedding model (state_genept, vanilla_rag, pt_rag)."
                )
            if not gene_tables:
                raise PtragError(f"{', '.join(new[:5])} are new to this run: pass --genes with a table that has their vectors.")
            from ptrag.data.embeddings import load_gene_tables, perturbation_vectors

            vecs, _ = perturbation_vectors(new, load_gene_tables(list(gene_tables)), "error")
            if vecs.shape[1] != plan.pert_table.shape[1]:
                raise PtragError(
                    f"the gene table has {vecs.shape[1]}-d vectors but the run was trained on {plan.pert_table.shape[1]}-d ones; "
                    "pass the table(s) used for training."
                )
            extra_vec = {p: torch.from_numpy(v) for p, v in zip(new, vecs)}
        n = n_cells or cfg.cell_set_size
        ctrl_pool = data.rows_of(cell_type, data.spec.control)
        rng = np.random.default_rng(cfg.seed)
        sets = [
            CellSet(i, cell_type, p, np.full(n, -1), rng.choice(ctrl_pool, n, replace=len(ctrl_pool) < n))
            for i, p in enumerate(perturbations)
        ]
        groups = pd.DataFrame({"cell_type": [cell_type] * len(perturbations), "perturbation": list(perturbations)})
        split_name = "new"
    else:
        check_choice("--split", split, SPLITS)
        split_obj = resolve_split(read_split_toml(run_dir / "split.toml"), data.groups(), source=str(run_dir / "split.toml"))
        groups = split_obj.groups(split)
        groups = groups[groups["perturbation"].isin(pert_index)].reset_index(drop=True)
        if groups.empty:
            raise PtragError(f"the {split} split of {run_dir} has no groups this model can predict.")
        sampler = SetSampler(data.obs, groups, cfg.cell_set_size, mode="eval", seed=cfg.seed + 2, match_batch=cfg.match_batch)
        sets = sampler.plan()
        split_name = split

    dataset = SetDataset(data, genes, pert_index, features)
    preds, obs_rows, retrieval = [], [], []
    device = plan.device
    # Sets of one size go through the network together; order is restored afterwards.
    by_size: dict[int, list[int]] = {}
    for i, cs in enumerate(sets):
        by_size.setdefault(len(cs.ctrl_rows), []).append(i)
    outputs: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for size, idxs in by_size.items():
            for start in range(0, len(idxs), batch_size):
                chunk = [sets[i] for i in idxs[start : start + batch_size]]
                items = []
                for cs in chunk:
                    ctrl = data.expression(cs.ctrl_rows, dataset.gene_idx)
                    feats = ctrl if features is None else features(cs.ctrl_rows, ctrl)
                    items.append({"ctrl_expr": torch.from_numpy(ctrl), "cell_input": torch.from_numpy(np.ascontiguousarray(feats, np.float32))})
                batch = {k: v.to(device) for k, v in _collate(items).items()}
                names = [cs.perturbation for cs in chunk]
                vec = torch.stack([extra_vec[n] if n in extra_vec else plan.pert_table[pert_index[n]] for n in names]).to(device)
                qidx = torch.tensor([int(plan.pert_to_db[pert_index[n]]) if n in pert_index else -1 for n in names], device=device)
                if control_baseline:
                    out = ModelOutput(pred=batch["ctrl_expr"])
                else:
                    out = plan(batch, pert_vec=vec, query_index=qidx)
                for cs_i, p in zip(idxs[start : start + batch_size], out.pred.cpu().numpy()):
                    outputs[cs_i] = p
                if out.candidates is not None:
                    retrieval.extend(_retrieval_rows(plan, out, chunk))
    for i, cs in enumerate(sets):
        preds.append(outputs[i])
        obs_rows.append(
            pd.DataFrame({"perturbation": cs.perturbation, "cell_type": cs.cell_type, "is_control": False, "split": split_name}, index=range(len(cs.ctrl_rows)))
        )
    # Observed control cells of the predicted cell types.
    for ct in groups["cell_type"].unique():
        rows = data.rows_of(ct, data.spec.control)
        preds.append(data.expression(rows, dataset.gene_idx))
        obs_rows.append(pd.DataFrame({"perturbation": data.spec.control, "cell_type": ct, "is_control": True, "split": "control"}, index=range(len(rows))))
    obs = pd.concat(obs_rows, ignore_index=True)
    obs.index = [f"pred_{i}" for i in range(len(obs))]
    for c in ("perturbation", "cell_type", "split"):
        obs[c] = obs[c].astype("category")
    adata = ad.AnnData(np.concatenate(preds).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["ptrag"] = {
        "model": "control" if control_baseline else cfg.model,
        "control": data.spec.control,
        "pert_col": "perturbation",
        "cell_type_col": "cell_type",
        "run_dir": str(run_dir.resolve()),
        "split": split_name,
    }
    return Prediction(adata, _aggregate_retrieval(retrieval) if retrieval else None)


def write_prediction(pred: Prediction, out: str | Path) -> dict[str, Path]:
    """Write ``out`` (h5ad) and, for RAG models, ``<out stem>.retrieval.csv`` atomically."""
    out = Path(out)
    if out.suffix != ".h5ad":
        raise PtragError(f"--out {out}: prediction files are AnnData; give a path ending in .h5ad.")
    paths = {"predictions": out}
    with atomic_path(out) as tmp:
        pred.adata.write_h5ad(tmp)
    if pred.retrieval is not None:
        rpath = out.with_suffix(".retrieval.csv")
        atomic_write_csv(rpath, pred.retrieval)
        paths["retrieval"] = rpath
    return paths
