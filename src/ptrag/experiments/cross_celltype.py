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

from ptrag.data.io import ColumnSpec
from ptrag.errors import PtragError
from ptrag.train.config import MODELS, resolve_config

log = logging.getLogger("ptrag")

BASELINE = "control"


@dataclass
class CrossCellTypeResult:
    """What :func:`cross_celltype` produced."""

    out_dir: Path
    eval_dirs: dict[tuple[int, str], Path] = field(default_factory=dict)
    tables: dict[int, Path] = field(default_factory=dict)


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
    from ptrag.eval.evaluate import evaluate
    from ptrag.eval.tables import compare_evaluations
    from ptrag.train.fit import train
    from ptrag.train.predict import predict, write_prediction

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
    # check every option before the first training
    configs = {m: resolve_config({**dict(overrides or {}), "model": m, "data": spec.to_dict()}, preset=preset) for m in models}
    for m, cfg in configs.items():
        if cfg.uses_gene_table and not gene_tables:
            raise PtragError(f"--models includes {m}, which needs gene embeddings: pass --genes TABLE.")
    groups = data.groups()
    data.close()

    out = Path(out_dir)
    result = CrossCellTypeResult(out)
    total = len(seeds) * len(targets) * len(models)
    done = 0
    for seed in seeds:
        evals = []
        for target in targets:
            d = out / f"seed{seed}" / target
            split_path = d / "split.toml"
            if not split_path.is_file():
                fewshot_split(groups, target, fewshot, seed=seed).to_toml(split_path)
            preds = []
            for model in models:
                done += 1
                log.info("[%d/%d] seed %d, target %s, %s", done, total, seed, target, model)
                cfg = resolve_config({**dict(overrides or {}), "model": model, "seed": seed, "data": spec.to_dict()}, preset=preset)
                run = d / "runs" / model
                tables = list(gene_tables) if cfg.uses_gene_table else []
                if not (run / "train_summary.json").is_file():
                    resume = (run / "checkpoints" / "last.ckpt").is_file()
                    train(cfg, data_path, run, split_path, tables, resume=resume, progress=progress)
                path = d / "pred" / f"{model}.h5ad"
                if not path.is_file():
                    write_prediction(predict(run, data_path, "test"), path)
                preds.append(path)
            base = d / "pred" / f"{BASELINE}.h5ad"
            if not base.is_file():
                write_prediction(predict(d / "runs" / models[0], data_path, "test", control_baseline=True), base)
            ev = d / "eval"
            if not (ev / "metrics.parquet").is_file():
                evaluate([*preds, base], data_path, d / "runs" / models[0], ev, spec=spec)
            evals.append(ev)
            result.eval_dirs[(seed, target)] = ev
        tables_dir = out / f"seed{seed}" / "tables"
        compare_evaluations(evals, tables_dir, reference=BASELINE, test="wilcoxon")
        result.tables[seed] = tables_dir
        log.info("seed %d: tables in %s", seed, tables_dir)
    return result
