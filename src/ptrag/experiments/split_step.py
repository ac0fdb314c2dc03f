"""One split of an experiment: train each model, predict its test groups, add the baselines,
evaluate them all (resumable). The step both protocols share: the cross-cell-type experiment
runs it per (seed, target), a sweep per grid point (:mod:`ptrag.experiments.cross_celltype`,
:mod:`ptrag.experiments.sweep`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ptrag.data.io import ColumnSpec
from ptrag.data.sources import DataSource
from ptrag.train.baselines import BASELINES
from ptrag.train.config import TrainConfig

#: The reference of the vs-control tables (one of :data:`~ptrag.train.baselines.BASELINES`,
#: all of which are predicted and evaluated beside the models).
BASELINE = "control"


def run_target(
    data_path: DataSource,
    split_path: str | Path,
    out_dir: str | Path,
    configs: Mapping[str, TrainConfig],
    gene_tables: Sequence[str | Path] = (),
    spec: ColumnSpec | None = None,
    progress: bool = True,
    pred_dir: str = "predictions",
    eval_dir: str = "evaluation",
) -> pd.DataFrame:
    """Train each model on one split, predict its test groups, add the baselines and evaluate
    them all; steps already done in ``out_dir`` are reused (see the module docstring).

    Writes ``runs/<model>/``, ``<pred_dir>/<model>.h5ad`` (+ ``<baseline>.h5ad`` for each of
    :data:`~ptrag.train.baselines.BASELINES`, on the first run's sets and training groups) and
    ``<eval_dir>/`` under ``out_dir``.

    Parameters
    ----------
    data_path
        Perturb-seq ``.h5ad`` file, or an in-memory AnnData (each step reads it as it is; nothing
        is written for it).
    split_path
        The split (cell-load TOML).
    out_dir
        Folder of this split's runs, predictions and evaluation.
    configs
        Name -> resolved training configuration, in the order of the evaluation; the name
        labels the run folder, the prediction and the model in the evaluation (a sweep names
        its variants, e.g. ``pt_rag_lambda0.1_K16``).
    gene_tables
        Gene tables for the embedding models.
    spec
        Data columns of the evaluation (default: the first run's).
    progress
        Show progress bars of the trainings.
    pred_dir, eval_dir
        Sub-folder names of the predictions and of the evaluation.

    Returns
    -------
    pandas.DataFrame
        The per-group metrics of every model and of every baseline.
    """
    from ptrag.eval.evaluate import evaluate

    out = Path(out_dir)
    preds = _train_and_predict(out, configs, data_path, split_path, gene_tables, progress, pred_dir)
    first_run = out / "runs" / next(iter(configs))
    bases = {name: out / pred_dir / f"{name}.h5ad" for name in BASELINES}
    _predict_missing_baselines(first_run, data_path, bases)
    ev = out / eval_dir
    if (ev / "metrics.parquet").is_file():
        done = pd.read_parquet(ev / "metrics.parquet")
        if set(configs) | set(bases) <= set(done["model"].astype(str)):
            return done
        # an evaluation written before some baseline or model existed is redone with all of them
    return evaluate([*preds, *bases.values()], data_path, first_run, ev, spec=spec, names=[*configs, *bases])


def _train_and_predict(
    out: Path,
    configs: Mapping[str, TrainConfig],
    data_path: DataSource,
    split_path: str | Path,
    gene_tables: Sequence[str | Path],
    progress: bool,
    pred_dir: str,
) -> list[Path]:
    """Train each model not trained yet (resuming an interrupted run) and predict its test groups
    unless predicted already; the prediction files, in the order of ``configs``."""
    from ptrag.train.fit import train
    from ptrag.train.predict import predict, write_prediction

    preds = []
    for model, cfg in configs.items():
        run = out / "runs" / model
        if not (run / "train_summary.json").is_file():
            tables = list(gene_tables) if cfg.uses_gene_table else []
            resume = (run / "checkpoints" / "last.ckpt").is_file()
            train(cfg, data_path, run, split_path, tables, resume=resume, progress=progress)
        path = out / pred_dir / f"{model}.h5ad"
        if not path.is_file():
            write_prediction(predict(run, data_path, "test"), path)
        preds.append(path)
    return preds


def _predict_missing_baselines(first_run: Path, data_path: DataSource, bases: Mapping[str, Path]) -> None:
    """Predict and write the baselines whose prediction file ``bases[name]`` is missing."""
    from ptrag.train.predict import iter_baselines, write_prediction

    missing = [name for name, path in bases.items() if not path.is_file()]
    if missing:
        for name, pred in iter_baselines(first_run, data_path, missing, "test"):
            write_prediction(pred, bases[name])


def step_overrides(max_steps: int | None) -> dict[str, int]:
    """Training options for ``max_steps`` steps (validating six times per run); ``{}`` for the
    preset's own."""
    return {} if max_steps is None else {"max_steps": max_steps, "val_every": max(1, max_steps // 6)}
