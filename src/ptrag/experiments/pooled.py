"""The tables of a cross-cell-type experiment over all its seeds and targets.

* :func:`validation_table` — the best validation energy of every run (``validation.csv``).
* :func:`pooled_metrics` — the per-group metrics of every (seed, target) evaluation, pooled.
* :func:`pooled_tables` — Table 1 and the per-target tables over every seed and target, the
  seed-to-seed spread and the figures against the baselines (``OUT/tables/``).

:func:`ptrag.experiments.cross_celltype.cross_celltype` writes them at the end of a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ptrag.errors import atomic_write_csv, atomic_write_text
from ptrag.experiments.split_step import BASELINE
from ptrag.train.baselines import BASELINES


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
    from ptrag.eval.table_format import BEST_BASELINE, format_value, md_table, metric_infos
    from ptrag.eval.tables import write_comparison
    from ptrag.experiments.plots_baselines import write_baseline_figures

    metrics, pooled, mode = pooled_metrics(eval_dirs)
    write_comparison(pooled, mode, out_dir, reference=None, test="wilcoxon")
    write_comparison(pooled, mode, out_dir / "vs_control", reference=BASELINE, test="wilcoxon")
    write_comparison(
        pooled, mode, out_dir / "vs_baseline", reference=BEST_BASELINE, test="wilcoxon", baselines=BASELINES
    )
    write_baseline_figures(metrics, out_dir)

    infos = metric_infos(mode, metrics.columns)
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
    atomic_write_text(out_dir / "seeds.md", md_table(["Metric", *models], rows) + "\n")
    return out_dir
