"""The paper's cross-cell-type protocol on any data set, resumable, with its report.

For every seed and every target cell type: the few-shot split (``fewshot`` of the target's
perturbations train, the rest split into validation and test; every other cell type trains),
one run per model, predictions of the test perturbations, the field's baselines on the same
sets (:data:`~ptrag.train.baselines.BASELINES`: control, perturb_mean, context_mean, additive,
linear), ``ptrag evaluate`` of all of them; ``ptrag compare`` over the targets of each
seed; then, over all seeds and targets, Table 1 (pooled), per-target tables (Tables 3–6), the
seed-to-seed spread, the retrieval analysis of PT-RAG, the cost table, optionally the paper's
sweeps, and a Markdown + HTML report.

Layout of ``OUT``::

    data/                                    (no --data: the synthetic benchmark; an in-memory
                                              AnnData: input.h5ad, see below)
    experiment.json  commands.txt  splits.csv  validation.csv  cost.csv
    seed<S>/<target>/split.toml
    seed<S>/<target>/runs/<model>/           (ptrag train)
    seed<S>/<target>/pred/<model>.h5ad       (ptrag predict; <baseline>.h5ad: ptrag predict --baseline)
    seed<S>/<target>/eval/                   (ptrag evaluate)
    seed<S>/tables/                          (ptrag compare over the seed's targets, vs control)
    tables/                                  (all seeds and targets: Table 1, per target, seeds.md,
                                              figures vs the baselines)
    retrieval/                               (Jaccard heatmap, top contexts, precision/recall)
    sweeps/<model>/                          (--sweeps)
    report.md  report.html

A finished step is never redone: a run with ``train_summary.json`` is kept, a run with only
``checkpoints/last.ckpt`` is resumed, an existing prediction, evaluation or cost table is
reused (delete it to redo it); tables, analyses and the report are rebuilt from the files.

The data may be an in-memory AnnData instead of a path: it is checked in memory, then written
once per call to ``OUT/data/input.h5ad`` (atomically, replacing the file of an earlier call),
and every step (training, prediction, evaluation, sweeps) reads that file; ``experiment.json``
names it. An AnnData opened backed is read from its own file and not copied.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ptrag.data.io import ColumnSpec
from ptrag.data.sources import DataSource
from ptrag.errors import atomic_write_csv, atomic_write_text
from ptrag.experiments.cross_celltype_inputs import (
    CrossCellTypePlan,
    check_options,
    experiment_manifest,
    load_inputs,
    synthetic_data,  # noqa: F401 (re-exported)
    write_manifest,
)
from ptrag.experiments.curves import experiment_curves
from ptrag.experiments.pooled import pooled_metrics, pooled_tables, validation_table  # noqa: F401 (re-exported)
from ptrag.experiments.retrieval_analysis import retrieval_analysis
from ptrag.experiments.split_step import BASELINE, run_target, step_overrides  # noqa: F401 (re-exported)
from ptrag.experiments.sweep import PAPER_SWEEPS, SHORT, sweep
from ptrag.train.baselines import BASELINES  # noqa: F401 (re-exported)
from ptrag.train.config import MODELS

if TYPE_CHECKING:
    from ptrag.data.splits import Split

log = logging.getLogger("ptrag")


@dataclass
class CrossCellTypeResult:
    """What :func:`cross_celltype` produced."""

    out_dir: Path
    eval_dirs: dict[tuple[int, str], Path] = field(default_factory=dict)
    tables: dict[int, Path] = field(default_factory=dict)
    pooled: Path | None = None
    report: Path | None = None


def cross_celltype(
    data_path: DataSource | None,
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
    sweeps: bool = False,
    cost: bool = True,
    ground_truth: str | Path | None = None,
    report: bool = True,
    command: Sequence[str] | None = None,
) -> CrossCellTypeResult:
    """Run the cross-cell-type experiment (see the module docstring).

    Parameters
    ----------
    data_path
        Perturb-seq ``.h5ad`` file or AnnData (see the module docstring); ``None``: the embedded
        synthetic benchmark, simulated into ``out_dir/data`` with its gene table and ground truth.
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
    sweeps
        Also run the paper's sensitivity sweeps (:data:`ptrag.experiments.sweep.PAPER_SWEEPS`)
        on the first seed's split of the first target, for the swept models in ``models``.
    cost
        Measure the cost table (parameters, FLOPs, step time) of the first seed's runs of the
        first target.
    ground_truth
        Ground-truth context pairs (``ground_truth.csv`` of the synthetic benchmark) for the
        retrieval precision / recall; set automatically when ``data_path`` is ``None``.
    report
        Write ``report.md`` and ``report.html``.
    command
        The command line that runs this (recorded in ``commands.txt`` for the report).

    Returns
    -------
    CrossCellTypeResult
        The evaluation folders per (seed, target) and the table folder per seed.
    """
    out = Path(out_dir)
    spec = spec or ColumnSpec()
    models = list(models)
    check_options(out, models, seeds)
    plan = CrossCellTypePlan(out, data_path, gene_tables, ground_truth, models, seeds, fewshot, preset, overrides, spec)
    data = load_inputs(plan, cell_types)
    groups = data.groups()
    manifest = experiment_manifest(data, plan)
    data.close()
    write_manifest(out, manifest, command)
    result = CrossCellTypeResult(out)
    atomic_write_csv(out / "splits.csv", pd.DataFrame(_run_splits(plan, groups, progress, result)))
    _closing_steps(plan, result, progress, sweeps, cost, report)
    return result


def _target_split(groups: pd.DataFrame, target: str, fewshot: float, seed: int, split_path: Path) -> Split:
    """The few-shot split of ``target``: drawn and written to ``split_path``, or read back from it."""
    from ptrag.data.splits import fewshot_split, load_split

    if split_path.is_file():
        return load_split(groups, split_path)
    split = fewshot_split(groups, target, fewshot, seed=seed)
    split.to_toml(split_path)
    return split


def _run_splits(
    plan: CrossCellTypePlan, groups: pd.DataFrame, progress: bool, result: CrossCellTypeResult
) -> list[dict[str, Any]]:
    """Every (seed, target): split, runs, predictions and evaluation; then ``ptrag compare`` per seed.

    Parameters
    ----------
    plan
        The checked inputs (:func:`~ptrag.experiments.cross_celltype_inputs.load_inputs`).
    groups
        The data's (cell type, perturbation) groups.
    progress
        Show progress bars of the trainings.
    result
        Gets the evaluation folder of every (seed, target) and the table folder of every seed.

    Returns
    -------
    list[dict]
        One row of ``splits.csv`` per (seed, target): the target's group counts per split.
    """
    from ptrag.eval.tables import compare_evaluations

    total = len(plan.seeds) * len(plan.targets)
    done = 0
    splits = []
    for seed in plan.seeds:
        evals = []
        for target in plan.targets:
            d = plan.out / f"seed{seed}" / target
            split_path = d / "split.toml"
            split = _target_split(groups, target, plan.fewshot, seed, split_path)
            splits.append({"seed": seed, "target": target, **split.counts().loc[target].to_dict()})
            log.info("[%d/%d] seed %d, target %s", done + 1, total, seed, target)
            run_target(
                plan.data_path, split_path, d, plan.configs[seed], plan.gene_tables, plan.spec, progress, "pred", "eval"
            )
            done += 1
            ev = d / "eval"
            evals.append(ev)
            result.eval_dirs[(seed, target)] = ev
        tables_dir = plan.out / f"seed{seed}" / "tables"
        compare_evaluations(evals, tables_dir, reference=BASELINE, test="wilcoxon")
        result.tables[seed] = tables_dir
        log.info("seed %d: tables in %s", seed, tables_dir)
    return splits


def _closing_steps(
    plan: CrossCellTypePlan, result: CrossCellTypeResult, progress: bool, sweeps: bool, cost: bool, report: bool
) -> None:
    """Validation and pooled tables, retrieval analysis, curves; then the optional sweeps, cost table and report."""
    out, seeds, targets, models = plan.out, plan.seeds, plan.targets, plan.models
    atomic_write_csv(out / "validation.csv", validation_table(out, seeds, targets, models))
    result.pooled = pooled_tables(result.eval_dirs, out / "tables")
    if {"pt_rag", "vanilla_rag", "pt_rag_response"} & set(models):
        retrieval_analysis(out, seeds, targets, plan.ground_truth)
    experiment_curves(out, seeds[0], targets, models)
    first = out / f"seed{seeds[0]}" / targets[0]
    if sweeps:
        run_paper_sweeps(
            plan.data_path,
            first / "split.toml",
            out / "sweeps",
            models,
            plan.gene_tables,
            plan.preset,
            plan.overrides,
            seeds[0],
            plan.spec,
            progress,
            plan.ground_truth,
        )
    if cost and not (out / "cost.csv").is_file():
        from ptrag.train.cost import cost_table

        table = cost_table({m: first / "runs" / m for m in models})
        atomic_write_csv(out / "cost.csv", table)
    if report:
        from ptrag.experiments.report import write_report

        result.report = write_report(out)[0]


def run_paper_sweeps(
    data_path: DataSource,
    split_path: str | Path,
    out: Path,
    models: Sequence[str],
    gene_tables: Sequence[str | Path],
    preset: str,
    overrides: Mapping[str, Any] | None,
    seed: int,
    spec: ColumnSpec,
    progress: bool,
    ground_truth: str | Path | None = None,
) -> None:
    """The paper's sweeps (:data:`ptrag.experiments.sweep.PAPER_SWEEPS`) for the swept models
    among ``models``, each in ``out/<model>/`` (options swept are taken out of ``overrides``),
    with a ``README.md`` naming the grids for the report."""

    lines = []
    for model, grid in PAPER_SWEEPS.items():
        if model not in models:
            continue
        base = {k: v for k, v in dict(overrides or {}).items() if k not in grid}
        sweep(
            data_path,
            split_path,
            out / model,
            model,
            grid,
            gene_tables,
            preset,
            base,
            seed,
            spec,
            progress,
            ground_truth,
        )
        lines.append(
            f"- {model}: "
            + " x ".join(f"{SHORT.get(k, k)} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}" for k, vals in grid.items())
        )
    atomic_write_text(
        out / "README.md",
        f"The paper's grids, on the split of seed {seed} of `{Path(split_path).parent.name}` "
        "(test perturbations of that target; the baselines as horizontal lines, control dashed grey):\n\n"
        + "\n".join(lines)
        + "\n",
    )
