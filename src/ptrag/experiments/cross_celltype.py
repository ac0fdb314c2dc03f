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

    data/                                    (no --data: the synthetic benchmark)
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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ptrag.data.io import ColumnSpec
from ptrag.errors import PtragError, atomic_write_csv, atomic_write_text, check_choice
from ptrag.experiments.curves import experiment_curves
from ptrag.experiments.retrieval_analysis import retrieval_analysis
from ptrag.experiments.split_step import BASELINE, run_target, step_overrides  # noqa: F401 (re-exported)
from ptrag.experiments.sweep import PAPER_SWEEPS, SHORT, sweep
from ptrag.train.baselines import BASELINES
from ptrag.train.config import MODELS, resolve_config

log = logging.getLogger("ptrag")


@dataclass
class CrossCellTypeResult:
    """What :func:`cross_celltype` produced."""

    out_dir: Path
    eval_dirs: dict[tuple[int, str], Path] = field(default_factory=dict)
    tables: dict[int, Path] = field(default_factory=dict)
    pooled: Path | None = None
    report: Path | None = None


def synthetic_data(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """The embedded synthetic benchmark in ``out_dir/data`` (simulated once, then reused).

    Returns
    -------
    dict[str, pathlib.Path]
        ``data``, ``genes`` and ``ground_truth`` files (see
        :func:`ptrag.data.synthetic.write_benchmark`).
    """
    from ptrag.data.synthetic import DATA_FILE, GENES_FILE, GROUND_TRUTH_FILE, simulate, write_benchmark

    d = Path(out_dir) / "data"
    files = {"data": d / DATA_FILE, "genes": d / GENES_FILE, "ground_truth": d / GROUND_TRUTH_FILE}
    if all(f.is_file() for f in files.values()):
        return files
    return write_benchmark(simulate(seed=seed), d)


def cross_celltype(
    data_path: str | Path | None,
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
        Perturb-seq ``.h5ad`` file; ``None``: the embedded synthetic benchmark, simulated into
        ``out_dir/data`` with its gene table and ground truth.
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
    from ptrag.data.io import read_perturbseq
    from ptrag.data.splits import fewshot_split, load_split
    from ptrag.eval.tables import compare_evaluations

    out = Path(out_dir)
    spec = spec or ColumnSpec()
    models = list(models)
    if not models:
        raise PtragError("--models is empty: name at least one of " + ", ".join(MODELS) + ".")
    for m in models:
        check_choice("--models", m, MODELS)
    if not seeds:
        raise PtragError("--seeds is empty: give at least one seed.")
    if out.exists() and not out.is_dir():
        raise PtragError(f"--out {out} exists and is not a folder: pass a folder path.")
    created = not out.exists()
    try:  # bad input found before the first training leaves no folder behind
        if data_path is None:
            files = synthetic_data(out)
            data_path, gene_tables, ground_truth = files["data"], [files["genes"]], files["ground_truth"]
        data = read_perturbseq(data_path, spec)
        targets = list(cell_types) if cell_types else list(data.cell_types)
        for t in targets:
            if t not in data.cell_types:
                raise PtragError(
                    f"--cell-types: {t!r} is not a cell type of {data_path} ({', '.join(data.cell_types)})."
                )
        if len(data.cell_types) < 2:
            raise PtragError(f"{data_path} has one cell type: the cross-cell-type protocol needs at least two.")
        # every configuration is resolved (and so checked) before the first training
        configs = {
            seed: {
                m: resolve_config(
                    {**dict(overrides or {}), "model": m, "seed": seed, "data": spec.to_dict()}, preset=preset
                )
                for m in models
            }
            for seed in seeds
        }
        for m, cfg in configs[seeds[0]].items():
            if cfg.uses_gene_table and not gene_tables:
                raise PtragError(f"--models includes {m}, which needs gene embeddings: pass --genes TABLE.")
        if gene_tables and any(cfg.uses_gene_table for cfg in configs[seeds[0]].values()):
            from ptrag.data.embeddings import load_gene_tables

            load_gene_tables(gene_tables)  # a missing or malformed table stops here, not at the first training
    except PtragError:
        if created and out.is_dir():
            import shutil

            shutil.rmtree(out)
        raise
    groups = data.groups()
    manifest = dict(
        data=str(data_path),
        n_cells=int(data.n_cells),
        n_genes=len(data.var_names),
        cell_types=list(data.cell_types),
        targets=targets,
        fewshot=fewshot,
        seeds=list(seeds),
        models=models,
        preset=preset,
        options=dict(overrides or {}),
        gene_tables=[str(g) for g in gene_tables],
        ground_truth=str(ground_truth) if ground_truth else None,
        machine=_machine(),
    )
    data.close()
    atomic_write_text(out / "experiment.json", json.dumps(manifest, indent=2) + "\n")
    if command:
        from ptrag.experiments.report import record_command

        record_command(out, list(command))

    result = CrossCellTypeResult(out)
    total = len(seeds) * len(targets)
    done = 0
    splits = []
    for seed in seeds:
        evals = []
        for target in targets:
            d = out / f"seed{seed}" / target
            split_path = d / "split.toml"
            if not split_path.is_file():
                split = fewshot_split(groups, target, fewshot, seed=seed)
                split.to_toml(split_path)
            else:
                split = load_split(groups, split_path)
            splits.append({"seed": seed, "target": target, **split.counts().loc[target].to_dict()})
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
    atomic_write_csv(out / "splits.csv", pd.DataFrame(splits))
    atomic_write_csv(out / "validation.csv", validation_table(out, seeds, targets, models))
    result.pooled = pooled_tables(result.eval_dirs, out / "tables")
    if "pt_rag" in models or "vanilla_rag" in models:
        retrieval_analysis(out, seeds, targets, ground_truth)
    experiment_curves(out, seeds[0], targets, models)
    first = out / f"seed{seeds[0]}" / targets[0]
    if sweeps:
        run_paper_sweeps(
            data_path,
            first / "split.toml",
            out / "sweeps",
            models,
            gene_tables,
            preset,
            overrides,
            seeds[0],
            spec,
            progress,
            ground_truth,
        )
    if cost and not (out / "cost.csv").is_file():
        from ptrag.train.cost import cost_table

        table = cost_table({m: first / "runs" / m for m in models})
        atomic_write_csv(out / "cost.csv", table)
    if report:
        from ptrag.experiments.report import write_report

        result.report = write_report(out)[0]
    return result


def _machine() -> str:
    import os
    import platform

    import torch

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
        + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
    )


def validation_table(out: Path, seeds: Sequence[int], targets: Sequence[str], models: Sequence[str]) -> pd.DataFrame:
    """Best validation energy per (seed, target): one column per model and ``control``."""
    rows = []
    for seed in seeds:
        for target in targets:
            row: dict[str, Any] = {"seed": seed, "target": target}
            for m in models:
                summ = json.loads((out / f"seed{seed}" / target / "runs" / m / "train_summary.json").read_text())
                row[m] = summ["val_energy"]
            row[BASELINE] = summ["val_energy_control"]
            rows.append(row)
    return pd.DataFrame(rows)


def pooled_metrics(eval_dirs: Mapping[tuple[int, str], Path]) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The per-group metrics of every (seed, target) evaluation, pooled.

    Parameters
    ----------
    eval_dirs
        ``(seed, target) -> evaluation folder``.

    Returns
    -------
    metrics : pandas.DataFrame
        All rows with a ``seed`` column.
    pooled : pandas.DataFrame
        The same rows without it, each (seed, cell type, perturbation) one sample: with
        several seeds the perturbation label gets `` [seed S]``.
    mode : str
        The metric definitions (``ptrag`` or ``gge``).
    """
    from ptrag.eval.tables import load_evaluations

    by_seed: dict[int, list[Path]] = {}
    for (seed, _), d in eval_dirs.items():
        by_seed.setdefault(seed, []).append(d)
    frames, mode = [], "ptrag"
    for seed, dirs in by_seed.items():
        m, mode = load_evaluations(dirs)
        frames.append(m.assign(seed=seed))
    metrics = pd.concat(frames, ignore_index=True)
    pooled = metrics.copy()
    if len(by_seed) > 1:
        pooled["perturbation"] = pooled["perturbation"].astype(str) + " [seed " + pooled["seed"].astype(str) + "]"
    return metrics, pooled.drop(columns="seed"), mode


def pooled_tables(eval_dirs: Mapping[tuple[int, str], Path], out_dir: Path) -> Path:
    """Table 1 (and per-target tables) over every seed and target, plus the seed spread.

    Each (seed, cell type, perturbation) is one sample: with several seeds a perturbation
    tested under two seeds counts twice (its label gets `` [seed S]``). Writes ``out_dir``
    (marks against each row's best model, paired Wilcoxon), ``out_dir/vs_control`` (marks
    against the control baseline), ``out_dir/vs_baseline`` (marks against each row's best
    baseline), ``seeds.csv`` / ``seeds.md`` (per model and metric, mean
    over seeds ± standard deviation of the seeds' means) and the figures against the baselines
    (:func:`ptrag.experiments.plots_baselines.write_baseline_figures`: ``baseline_scatter.png``,
    ``vcc_score.png``).
    """
    from ptrag.eval.tables import BEST_BASELINE, _infos, _md_table, format_value, write_comparison
    from ptrag.experiments.plots_baselines import write_baseline_figures

    metrics, pooled, mode = pooled_metrics(eval_dirs)
    write_comparison(pooled, mode, out_dir, reference=None, test="wilcoxon")
    write_comparison(pooled, mode, out_dir / "vs_control", reference=BASELINE, test="wilcoxon")
    write_comparison(
        pooled, mode, out_dir / "vs_baseline", reference=BEST_BASELINE, test="wilcoxon", baselines=BASELINES
    )
    write_baseline_figures(metrics, out_dir)

    infos = _infos(mode, metrics.columns)
    per_seed = metrics.groupby(["model", "seed"])[[i.column for i in infos]].mean()
    agg = per_seed.groupby("model").agg(["mean", "std"])
    models = sorted(metrics["model"].unique())
    rows = []
    for i in infos:
        cells = [f"{i.label} {i.arrow}"]
        for mo in models:
            mu, sd = agg.loc[mo, (i.column, "mean")], agg.loc[mo, (i.column, "std")]
            cells.append(format_value(mu) + ("" if pd.isna(sd) else f" ± {format_value(sd)}"))
        rows.append(cells)
    atomic_write_csv(out_dir / "seeds.csv", per_seed.reset_index())
    atomic_write_text(out_dir / "seeds.md", _md_table(["Metric", *models], rows) + "\n")
    return out_dir


def run_paper_sweeps(
    data_path: str | Path,
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
