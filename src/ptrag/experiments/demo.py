"""The main job on the embedded default: simulate, split, train the four models, predict, compare.

``ptrag demo --out DIR`` runs it; it needs no input files and finishes in minutes on two CPU
cores with the ``cpu`` preset. Steps, each written to ``DIR``:

1. ``data/``: the synthetic benchmark (:func:`ptrag.data.synthetic.simulate`);
2. ``split.toml``: the few-shot split of the target cell type (30 % of its perturbations train);
3. ``runs/<model>/``: one run folder per model (:func:`ptrag.train.fit.train`);
4. ``predictions/<model>.h5ad``: the test perturbations, plus ``control.h5ad``, the
   predict-the-control baseline on the same sets;
5. ``evaluation/``: ``ptrag evaluate`` of all prediction files; ``tables/``: ``ptrag compare``;
6. ``demo_summary.csv``: one row per model (the table the command prints);
7. ``retrieval_summary.csv``: precision and recall of the RAG models' contexts against the
   simulator's ground truth (Stage-1 top-K for both; Stage-2 selection for PT-RAG).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.errors import atomic_path
from ptrag.experiments.cross_celltype import BASELINE
from ptrag.train.config import MODELS, resolve_config

log = logging.getLogger("ptrag")

#: Test metrics shown in the demo's summary (column of ``metrics.parquet`` -> shown name).
SUMMARY_METRICS = {
    "pearson_delta": "test_pearson_delta",
    "pearson_deg": "test_pearson_deg",
    "mse": "test_mse",
    "energy": "test_energy_pca50",
}


def baseline_comparison(metrics: pd.DataFrame, metric: str = "energy", baseline: str = BASELINE) -> pd.DataFrame:
    """Paired comparison of every model with the baseline on one lower-is-better metric.

    Parameters
    ----------
    metrics
        One row per (model, cell type, perturbation), as written by ``ptrag evaluate``.
    metric
        Metric column (lower is better).
    baseline
        Model name of the baseline.

    Returns
    -------
    pandas.DataFrame
        Per model (baseline excluded): ``better_than_control`` (fraction of shared groups
        where the model's value is lower) and ``wilcoxon_p`` (two-sided signed-rank test).
    """
    from ptrag.eval.stats import KEYS, wilcoxon_paired

    base = metrics[metrics["model"] == baseline].set_index(KEYS)[metric]
    rows = []
    for model, g in metrics[metrics["model"] != baseline].groupby("model", sort=False):
        joined = g.set_index(KEYS)[[metric]].join(base.rename("base"), how="inner").dropna()
        _, p, n = wilcoxon_paired(joined[metric].to_numpy(), joined["base"].to_numpy())
        better = float((joined[metric] < joined["base"]).mean()) if n else float("nan")
        rows.append({"model": model, "better_than_control": better, "wilcoxon_p": p})
    return pd.DataFrame(rows, columns=["model", "better_than_control", "wilcoxon_p"])


def run_demo(
    out_dir: str | Path,
    max_steps: int | None = None,
    seed: int = 0,
    models: Sequence[str] = MODELS,
    target_cell_type: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run the demo and return one row per model (and one for the control baseline).

    Parameters
    ----------
    out_dir
        Folder for the synthetic data, the split, the runs, the predictions and the tables.
        Runs, predictions and the evaluation already there are reused (resumed when a run was
        interrupted); delete them to redo them.
    max_steps
        Training steps per model (default: the ``cpu`` preset's).
    seed
        Seed of the simulation, the split and the training.
    models
        Models to train.
    target_cell_type
        Held-out cell type (default: the first).
    progress
        Show progress bars.

    Returns
    -------
    pandas.DataFrame
        Per model: parameters, best validation energy, the predict-the-control validation
        baseline, mean test metrics over the test perturbations (``ptrag evaluate``), the
        fraction of test perturbations whose PCA-50 energy beats the control baseline and the
        Wilcoxon p-value of that paired comparison.
    """
    from ptrag.data.io import read_perturbseq
    from ptrag.data.splits import fewshot_split
    from ptrag.data.synthetic import simulate, write_benchmark
    from ptrag.eval.tables import compare_evaluations
    from ptrag.experiments.cross_celltype import run_target

    if not models:
        raise ValueError("run_demo needs at least one model")
    out = Path(out_dir)
    files = write_benchmark(simulate(seed=seed), out / "data")
    data = read_perturbseq(files["data"])
    log.info("%r", data)
    target = target_cell_type or data.cell_types[0]
    split = fewshot_split(data.groups(), target, 0.3, seed=seed)
    split.to_toml(out / "split.toml")
    log.info("few-shot split for %s: %s", target, split.counts().loc[target].to_dict())

    configs = {}
    for model in models:
        over = dict(model=model, seed=seed)
        if max_steps is not None:
            over.update(max_steps=max_steps, val_every=max(max_steps // 6, 1))
        configs[model] = resolve_config(over)
    metrics = run_target(files["data"], out / "split.toml", out, configs, [files["genes"]], progress=progress)

    rows, retrieval = [], []
    for model in models:
        summary = json.loads((out / "runs" / model / "train_summary.json").read_text())
        rows.append(
            dict(
                model=model,
                parameters=summary["n_parameters"],
                val_energy=summary["val_energy"],
                val_energy_control=summary["val_energy_control"],
            )
        )
        log_path = out / "predictions" / f"{model}.retrieval.csv"
        if log_path.is_file():
            retrieval.append(retrieval_against_truth(pd.read_csv(log_path), files["ground_truth"], model))
    rows.append(dict(model=BASELINE, parameters=0, val_energy=rows[0]["val_energy_control"],
                     val_energy_control=rows[0]["val_energy_control"]))

    compare_evaluations([out / "evaluation"], out / "tables")
    means = metrics.groupby("model")[list(SUMMARY_METRICS)].mean().rename(columns=SUMMARY_METRICS)
    table = pd.DataFrame(rows).set_index("model").join(means)
    vs = baseline_comparison(metrics).set_index("model")
    table = table.join(vs)
    table.loc[BASELINE, ["better_than_control", "wilcoxon_p"]] = np.nan
    table = table.reset_index()
    with atomic_path(out / "demo_summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    if retrieval:
        with atomic_path(out / "retrieval_summary.csv") as tmp:
            pd.concat(retrieval, ignore_index=True).to_csv(tmp, index=False)
    return table


def retrieval_against_truth(log: pd.DataFrame, truth_path: str | Path, model: str) -> pd.DataFrame:
    """Macro-averaged precision / recall of a retrieval log against a synthetic ground truth.

    Parameters
    ----------
    log
        Retrieval log of ``ptrag predict`` (one row per query, cell type and candidate).
    truth_path
        ``ground_truth.csv`` of the synthetic benchmark.
    model
        Model name for the output rows.

    Returns
    -------
    pandas.DataFrame
        One row per cell type and one ``all`` row: ``model, cell_type, n_queries,
        precision_topk, recall_topk`` and, for PT-RAG (which selects), ``precision_selected,
        recall_selected, n_selected``; NaN for a Vanilla RAG log, which has no selection.
    """
    from ptrag.data.synthetic import load_ground_truth
    from ptrag.eval.metrics import retrieval_precision_recall, retrieval_summary

    pr = retrieval_precision_recall(log.fillna({"selected_fraction": -1.0}), load_ground_truth(truth_path))
    if log["selected_fraction"].isna().all():  # no Stage 2: nothing is "selected"
        pr[["precision_selected", "recall_selected", "n_selected"]] = np.nan
    summ = retrieval_summary(pr).rename_axis("cell_type").reset_index()
    return summ.assign(model=model)[["model", "cell_type", "n_queries", "precision_topk", "recall_topk",
                                     "precision_selected", "recall_selected", "n_selected"]]
