"""The paper's cross-cell-type protocol on any data set, resumable.

For every seed and every target cell type: the few-shot split (``fewshot`` of the target's
perturbations train, the rest split into validation and test; every other cell type trains),
one run per model, predictions of the test perturbations, the predict-the-control baseline on
the same sets, ``ptrag evaluate`` of all of them; then ``ptrag compare`` over all targets of a
seed (Table 1 layout overall, Tables 3–6 per target).

Layout of ``OUT``::

    seed<S>/<target>/split.toml
    seed<S>/<target>/runs/<model>/           (ptrag train)
    seed<S>/<target>/pred/<model>.h5ad       (ptrag predict; control.h5ad = baseline)
    seed<S>/<target>/eval/                   (ptrag evaluate)
    seed<S>/tables/                          (ptrag compare over the seed's targets)

A finished step is never redone: a run with ``train_summary.json`` is kept, a run with only
``checkpoints/last.ckpt`` is resumed, an existing prediction or evaluation is reused (delete
it to redo it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ptrag.data.io import ColumnSpec
from ptrag.errors import PtragError
from ptrag.train.config import MODELS, TrainConfig, resolve_config

log = logging.getLogger("ptrag")

BASELINE = "control"


@dataclass
class CrossCellTypeResult:
    """What :func:`cross_celltype` produced."""

    out_dir: Path
    eval_dirs: dict[tuple[int, str], Path] = field(default_factory=dict)
    tables: dict[int, Path] = field(default_factory=dict)


def run_target(
    data_path: str | Path,
    split_path: str | Path,
    out_dir: str | Path,
    configs: Mapping[str, TrainConfig],
    gene_tables: Sequence[str | Path] = (),
    spec: ColumnSpec | None = None,
    progress: bool = True,
    pred_dir: str = "predictions",
    eval_dir: str = "evaluation",
) -> pd.DataFrame:
    """Train each model on one split, predict its test groups, add the control baseline and
    evaluate them all; steps already done in ``out_dir`` are reused (see the module docstring).

    Writes ``runs/<model>/``, ``<pred_dir>/<model>.h5ad`` (+ ``control.h5ad``) and
    ``<eval_dir>/`` under ``out_dir``.

    Parameters
    ----------
    data_path
        Perturb-seq ``.h5ad`` file.
    split_path
        The split (cell-load TOML).
    out_dir
        Folder of this split's runs, predictions and evaluation.
    configs
        Model name -> resolved training configuration, in the order of the evaluation.
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
        The per-group metrics of every model and of ``control``.
    """
    from ptrag.eval.evaluate import evaluate
    from ptrag.train.fit import train
    from ptrag.train.predict import predict, write_prediction

    out = Path(out_dir)
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
    first_run = out / "runs" / next(iter(configs))
    base = out / pred_dir / f"{BASELINE}.h5ad"
    if not base.is_file():
        write_prediction(predict(first_run, data_path, "test", control_baseline=True), base)
    ev = out / eval_dir
    if (ev / "metrics.parquet").is_file():
        return pd.read_parquet(ev / "metrics.parquet")
    return evaluate([*preds, base], data_path, first_run, ev, spec=spec)


def cross_celltype(
    data_path: str | Path,
    out_dir: str | Path,
    gene_tables: Sequence[str | Path] = (),
    models: Sequence[str] = MODELS,
    cell_types: Sequence[str] | None = None,
    fewshot: float = 0.3,
    seeds: Sequence[int] = (0,),
    preset: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    spec: ColumnSpec | None = None,
    progress: bool = True,
) -> CrossCellTypeResult:
    """Run the cross-cell-type experiment (see the module docstring).

    Parameters
    ----------
    data_path
        Perturb-seq ``.h5ad`` file.
    out_dir
        Experiment folder (created; reused on a second call).
    gene_tables
        Gene tables for the embedding models.
    models
        Models to train.
    cell_types
        Target cell types (default: every cell type of the data).
    fewshot
        Fraction of the target's perturbations that train.
    seeds
        Seeds: each gives its own splits, initialisations and tables.
    preset
        ``cpu`` or ``paper``.
    overrides
        Further training options (``ptrag train`` names with underscores, e.g. ``max_steps``).
    spec
        Data columns.
    progress
        Show progress bars of the trainings.

    Returns
    -------
    CrossCellTypeResult
        The evaluation folders per (seed, target) and the table folder per seed.
    """
    from ptrag.data.io import read_perturbseq
    from ptrag.data.splits import fewshot_split
    from ptrag.eval.tables import compare_evaluations

    spec = spec or ColumnSpec()
    models = list(models)
    if not models:
        raise PtragError("--models is empty: name at least one of " + ", ".join(MODELS) + ".")
    for m in models:
        if m not in MODELS:
            raise PtragError(f"unknown model {m!r} in --models: choose among {', '.join(MODELS)}.")
    if not seeds:
        raise PtragError("--seeds is empty: give at least one seed.")
    data = read_perturbseq(data_path, spec)
    targets = list(cell_types) if cell_types else list(data.cell_types)
    for t in targets:
        if t not in data.cell_types:
            raise PtragError(f"--cell-types: {t!r} is not a cell type of {data_path} ({', '.join(data.cell_types)}).")
    if len(data.cell_types) < 2:
        raise PtragError(f"{data_path} has one cell type: the cross-cell-type protocol needs at least two.")
    # every configuration is resolved (and so checked) before the first training
    configs = {
        seed: {m: resolve_config({**dict(overrides or {}), "model": m, "seed": seed, "data": spec.to_dict()}, preset=preset)
               for m in models}
        for seed in seeds
    }
    for m, cfg in configs[seeds[0]].items():
        if cfg.uses_gene_table and not gene_tables:
            raise PtragError(f"--models includes {m}, which needs gene embeddings: pass --genes TABLE.")
    groups = data.groups()
    data.close()

    out = Path(out_dir)
    result = CrossCellTypeResult(out)
    total = len(seeds) * len(targets)
    done = 0
    for seed in seeds:
        evals = []
        for target in targets:
            d = out / f"seed{seed}" / target
            split_path = d / "split.toml"
            if not split_path.is_file():
                fewshot_split(groups, target, fewshot, seed=seed).to_toml(split_path)
            log.info("[%d/%d] seed %d, target %s", done + 1, total, seed, target)
            run_target(data_path, split_path, d, configs[seed], gene_tables, spec, progress, "pred", "eval")
            done += 1
            ev = d / "eval"
            evals.append(ev)
            result.eval_dirs[(seed, target)] = ev
        tables_dir = out / f"seed{seed}" / "tables"
        compare_evaluations(evals, tables_dir, reference=BASELINE, test="wilcoxon")
        result.tables[seed] = tables_dir
        log.info("seed %d: tables in %s", seed, tables_dir)
    return result
