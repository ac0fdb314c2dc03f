"""Training runs: from an h5ad file and a configuration to a run folder.

:func:`~ptrag.train.prepare.prepare_run` (in :mod:`ptrag.train.prepare`) reads the data,
makes or reads the split, builds the perturbation table (one-hot or gene embeddings) and the
retrieval database (training perturbations only), picks the genes (HVGs on training cells)
and fits the PCA-50 space on training cells.
:func:`train` then fits the model with a Lightning Trainer and writes the run folder::

    RUN_DIR/config.toml   resolved configuration
    RUN_DIR/split.toml    the split actually used (cell-load format)
    RUN_DIR/genes.txt     the run's genes, in order
    RUN_DIR/pca.npz       PCA-50 fit on training cells (evaluation; PCA cell encoder)
    RUN_DIR/checkpoints/  best.ckpt, last.ckpt (everything needed to predict)
    RUN_DIR/logs/         metrics.csv

Under DDP (``--strategy ddp``, :mod:`ptrag.train.distributed`) ``--batch-size`` is the global
batch, each rank trains on its own shard of every epoch's sets, and only rank 0 writes the run
folder (the checkpoints through Lightning, which saves from rank 0).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ptrag.errors import PtragError, atomic_path, atomic_write_text
from ptrag.train.base_choice import BaseEvidence
from ptrag.train.config import TrainConfig, read_run_config
from ptrag.train.distributed import check_launcher, ddp_strategy, rank_batch_size, shard_loader
from ptrag.train.lock import run_lock
from ptrag.train.prepare import (  # noqa: F401  (re-exported: the run's inputs)
    PreparedRun,
    build_plan,
    cell_feature_fn,
    make_loader,
    prepare_run,
    training_rows,
)
from ptrag.train.resume import resume_config

log = logging.getLogger("ptrag")


def atomic_checkpoint_io():
    """A Lightning CheckpointIO that writes each checkpoint to a temporary file in the
    checkpoint's own folder and renames it into place (:func:`ptrag.errors.atomic_path`), so a
    run killed while saving never leaves a truncated ``last.ckpt`` for ``--resume``."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)

    return AtomicCheckpointIO()


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``val_energy`` is the best validation energy (that of ``best_checkpoint``, which
    ``ptrag predict`` uses by default); ``val_energy_control`` the predict-the-control
    baseline on the same validation sets; ``val_selected_contexts`` (PT-RAG) the mean number
    of contexts a validation cell selects at the last validation (its expected selection).
    """

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    val_energy: float | None
    val_energy_control: float | None
    n_parameters: int
    val_selected_contexts: float | None = None
    #: ``False`` on the other ranks of a distributed run, which write and print nothing
    is_global_zero: bool = True


def step_progress_bar():
    """Lightning's rich progress bar, its description fit for step-bound training: training
    stops at ``max_steps`` (``max_epochs = -1``), so "Epoch 29/-2" becomes "Epoch 29 of 1500
    steps"."""
    from lightning.pytorch.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            t = self.trainer
            if t.max_epochs is not None and t.max_epochs >= 0:
                return super()._get_train_description(current_epoch)
            text = f"Epoch {current_epoch} of {t.max_steps} steps"
            return f"{text:{len(self.validation_description)}}"

    return StepProgressBar()


def _calibrate(cfg: TrainConfig, checkpoints: Sequence[Path], val_dl, pca) -> dict:
    """``--calibration validation`` / ``fallback``: fit and store each checkpoint's calibration."""
    if cfg.calibration not in ("validation", "fallback"):
        return {}
    from ptrag.train.calibrate import calibrate_checkpoints

    fitted = calibrate_checkpoints(checkpoints, val_dl, pca, cfg.calibration == "fallback")
    return {name: cal.to_dict() for name, cal in fitted.items()}


def write_run_files(cfg: TrainConfig, prep: PreparedRun, run_dir: Path) -> None:
    """Write config.toml, split.toml, genes.txt and pca.npz into the run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_toml(run_dir / "config.toml")
    (prep.source_split or prep.split).to_toml(run_dir / "split.toml")
    atomic_write_text(run_dir / "genes.txt", "\n".join(prep.genes) + "\n")
    prep.pca.save(run_dir / "pca.npz")


def train(
    cfg: TrainConfig,
    data_path: str | Path,
    out_dir: str | Path,
    split_path: str | Path | None = None,
    gene_tables: Sequence[str | Path] = (),
    backed: bool = False,
    resume: bool = False,
    progress: bool = True,
    gene_aliases: str | Path | None = None,
) -> TrainResult:
    """Train one model and write its run folder (locked: one process per folder).

    Parameters
    ----------
    cfg
        Resolved configuration.
    data_path
        The h5ad file or an in-memory AnnData (:data:`ptrag.data.sources.DataSource`).
    out_dir
        The run folder.
    split_path
        Optional cell-load split file.
    gene_tables
        Gene-embedding tables for the embedding models.
    backed
        Stream expression from disk.
    resume
        Continue from ``out_dir/checkpoints/last.ckpt``.
    progress
        Show the progress bar.
    gene_aliases
        Optional alias map for gene symbols.

    Returns
    -------
    TrainResult
    """
    run_dir = Path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise PtragError(f"--out {run_dir} is a file; a run is a folder: choose another --out or remove the file.")
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise PtragError(f"--resume: no checkpoint to resume from at {last}; start the run without --resume.")
    if not resume and last.is_file():
        raise PtragError(
            f"{run_dir} already holds a trained run; pass --resume to continue it or choose another --out."
        )
    if resume:
        cfg = resume_config(read_run_config(run_dir), dataclasses.asdict(cfg), run_dir)
    with run_lock(run_dir):
        return _fit(cfg, data_path, run_dir, split_path, gene_tables, backed, resume, progress, gene_aliases)


def _check_split(cfg: TrainConfig, prep) -> None:
    """Refuse a split that leaves nothing to validate or test for the model, before any step."""
    if prep.split.groups("val").empty and prep.split.groups("test").empty:
        hint = (
            " --model state represents only perturbations that train (one-hot), so a held-out perturbation "
            "that trains in no cell type cannot be predicted: use state_genept, vanilla_rag, pt_rag or "
            "pt_rag_response, or a few-shot split."
            if not cfg.uses_gene_table
            else " Hold some groups out (--fewshot, --task, or a split file with val / test groups)."
        )
        raise PtragError(f"the split leaves no validation or test group for --model {cfg.model}.{hint}")


def _fit(cfg, data_path, run_dir: Path, split_path, gene_tables, backed, resume, progress, gene_aliases):
    """The body of :func:`train`, run under the folder's lock."""
    import lightning as L

    from ptrag.nn.generator import count_parameters

    last = run_dir / "checkpoints" / "last.ckpt"
    prep = prepare_run(cfg, data_path, split_path, gene_tables, backed, gene_aliases)
    cfg = prep.config  # --residual-base / --calibration auto resolved for this split
    _check_split(cfg, prep)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    plan = build_plan(cfg, prep)
    train_dl = make_loader(cfg, prep, "train")
    val_dl = make_loader(cfg, prep, "val", freeze_epoch=True)
    callbacks = _callbacks(cfg, run_dir, val_dl is not None, progress)
    strategy = ddp_strategy(cfg.strategy, plan, train_dl)
    trainer = _trainer(cfg, run_dir, val_dl is not None, callbacks, progress, strategy)
    check_launcher(trainer, cfg.strategy)
    # --batch-size is the global batch: each rank takes its share of it, from its shard of the sets
    batch = rank_batch_size(cfg.batch_size, trainer.world_size)
    train_dl = shard_loader(cfg, prep, train_dl, trainer.world_size, batch)
    plan.attach_train_sampler(train_dl.sampler, batch)
    if trainer.is_global_zero:  # the other ranks of a DDP run share rank 0's folder
        write_run_files(cfg, prep, run_dir)
    trainer.fit(plan, train_dl, val_dl, ckpt_path=str(last) if resume else None)
    # ModelCheckpoint writes last.ckpt at validations only; the steps after the last validation
    # would be lost, so the final state is saved as last.ckpt (atomically, by Lightning; on
    # every rank, which Lightning requires, and written by rank 0)
    trainer.save_checkpoint(last, weights_only=False)  # the full state: --resume needs it
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = run_dir / "checkpoints" / "best.ckpt"
    calibration = _calibrate(cfg, [best, last], val_dl, prep.pca) if trainer.is_global_zero else {}
    best_score = callbacks[0].best_model_score
    result = TrainResult(
        run_dir=run_dir,
        best_checkpoint=best if best.is_file() else None,
        last_checkpoint=last,
        val_energy=float(best_score) if best_score is not None else metrics.get("val/energy"),
        val_energy_control=metrics.get("val/energy_control"),
        n_parameters=count_parameters(plan.model),
        val_selected_contexts=metrics.get("val/selected_contexts"),
        is_global_zero=trainer.is_global_zero,
    )
    if trainer.is_global_zero:
        readout = None
        if plan.model.responses is not None:  # what pt_rag_response's readout chose per cell type
            from ptrag.nn.readout import readout_choices  # here: importing ptrag.nn loads transformers

            readout = readout_choices(plan.model.responses, plan.model.cfg)
        _write_summary(
            cfg, run_dir, int(trainer.global_step), result, metrics, calibration, prep.base_evidence, readout
        )
    return result


def _callbacks(cfg: TrainConfig, run_dir: Path, validates: bool, progress: bool) -> list:
    """The trainer's callbacks: the best and last checkpoints first, then early stopping and the progress bar."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    callbacks = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor="val/energy" if validates else None,
            mode="min",
            enable_version_counter=False,
        ),
        # last.ckpt at every validation interval, improved or not: Lightning's save_last writes
        # it only when the monitored checkpoint is saved, so a killed run would resume from
        # its last *improving* validation
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="last",
            monitor=None,
            every_n_train_steps=min(cfg.val_every, cfg.max_steps),
            save_top_k=1,
            enable_version_counter=False,
        ),
    ]
    if cfg.early_stopping and validates:
        callbacks.append(EarlyStopping("val/energy", patience=cfg.early_stopping, mode="min"))
    if progress:
        callbacks.append(step_progress_bar())
    return callbacks


def _trainer(cfg: TrainConfig, run_dir: Path, validates: bool, callbacks: list, progress: bool, strategy=None):
    """The Lightning Trainer of a run (deterministic, step-bound, checkpoints written atomically;
    ``strategy``: default ``cfg.strategy``; the sets are sharded by ptrag, not by Lightning)."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    return L.Trainer(
        max_steps=cfg.max_steps,
        val_check_interval=min(cfg.val_every, cfg.max_steps) if validates else None,
        check_val_every_n_epoch=None,
        limit_val_batches=None if validates else 0,
        num_sanity_val_steps=0,
        logger=CSVLogger(run_dir, name="logs", version=""),
        callbacks=callbacks,
        gradient_clip_val=cfg.grad_clip or None,
        accelerator=cfg.accelerator,
        devices=cfg.devices if cfg.devices == "auto" else int(cfg.devices),
        strategy=cfg.strategy if strategy is None else strategy,
        use_distributed_sampler=False,  # SetSampler shards the training sets itself (ptrag.train.distributed)
        precision=cfg.precision,
        deterministic=True,
        plugins=[atomic_checkpoint_io()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=min(10, cfg.max_steps),
        default_root_dir=run_dir,
    )


def _write_summary(
    cfg: TrainConfig,
    run_dir: Path,
    steps: int,
    result: TrainResult,
    metrics: dict,
    calibration: dict,
    base_evidence: BaseEvidence | None = None,
    readout: dict | None = None,
) -> None:
    """Write the run's ``train_summary.json`` (atomically)."""
    atomic_write_text(
        run_dir / "train_summary.json",
        json.dumps(
            {
                "model": cfg.model,
                "steps": steps,
                "val_energy": result.val_energy,
                "val_energy_last": metrics.get("val/energy"),
                "val_energy_control": result.val_energy_control,
                "n_parameters": result.n_parameters,
                "residual_base": cfg.residual_base,
                "residual_base_evidence": None if base_evidence is None else base_evidence.describe(),
                "calibration": calibration,
                "response_readout": readout,
                "metrics": metrics,
            },
            indent=2,
        ),
    )
