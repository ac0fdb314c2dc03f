"""``ptrag evaluate``: score prediction files against the observed data.

For every non-control (cell type, perturbation) group of each prediction file, the predicted
cells are compared with the observed cells of that group in the user's data file, using the
observed control cells of the same cell type as the reference for changes and DEGs. Genes are
the run's (``RUN_DIR/genes.txt``, in that order); the PCA space is the run's
(``RUN_DIR/pca.npz``, fit on training cells).

Outputs (all written atomically, only after every input has been checked):
``metrics.parquet`` and ``metrics.csv`` (one row per model, cell type, perturbation),
``summary.csv`` and ``summary.md`` (mean ± std per metric, per cell type and overall), and
``evaluation.json`` (what was evaluated, with which options).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ptrag.data.pca import PCASpace
from ptrag.data.sources import DataSource, source_label
from ptrag.errors import (
    PtragError,
    atomic_dir,
    check_choice,
)
from ptrag.eval.gge import (
    GGEOptions,
    GGEReference,
    condition_key,
    first_condition,
    gge_group_metrics,
)

# the run folder and the prediction files are read in ptrag.eval.inputs (re-exported here)
from ptrag.eval.inputs import (  # noqa: F401 (re-exported)
    Predictions,
    PredictionSource,
    RunInfo,
    load_run,
    prediction_label,
    read_inputs,
    read_predictions,
)
from ptrag.eval.metrics import (
    COUNT_COLUMNS,
    ID_COLUMNS,
    GroupStats,
    MetricOptions,
    metric_columns,
)
from ptrag.eval.scoring import ControlSet, score_cell_type
from ptrag.eval.tables import summary_markdown, summary_table

log = logging.getLogger("ptrag")

Mode = Literal["ptrag", "gge"]

#: Predicted rows of each (cell type, perturbation) group, by model.
_Plan = dict[tuple[str, str], dict[str, np.ndarray]]


# ----------------------------------------------------------------------- evaluation


def evaluate_predictions(
    preds: Sequence[Predictions],
    data,
    genes: Sequence[str],
    pca: PCASpace | None,
    mode: Mode = "ptrag",
    options: MetricOptions = MetricOptions(),
    gge_options: GGEOptions = GGEOptions(),
) -> tuple[pd.DataFrame, dict]:
    """Compute the metrics of every model on every predicted group.

    Parameters
    ----------
    preds
        Prediction files (one model each).
    data
        The observed data (:class:`ptrag.data.io.PerturbData`).
    genes
        The run's genes.
    pca
        The run's PCA space (``ptrag`` mode; ignored in ``gge`` mode).
    mode
        ``"ptrag"`` (ptrag's definitions) or ``"gge"`` (gge-eval 1.0.1's).
    options
        DEG options of the ptrag mode.
    gge_options
        Options of the gge mode.

    Returns
    -------
    tuple
        ``(metrics, info)``: one row per (model, cell_type, perturbation) with the metric
        columns of ``mode`` and ``n_pred, n_real, n_deg, reason, mode``; ``info`` records what
        was evaluated (e.g. the gge first conditions).
    """
    check_choice("--mode", mode, ("ptrag", "gge"))
    models = _model_names(preds)
    gidx = data.gene_index(list(genes))
    # ---- validate everything before computing anything
    plan, real_rows, ctrl_rows = _plan(preds, data)
    info: dict = {"mode": mode, "n_groups": len(plan), "models": models}
    t0 = time.perf_counter()
    if mode == "ptrag":
        results = _evaluate_ptrag(preds, data, genes, gidx, pca, plan, real_rows, ctrl_rows, options)
    else:
        results = _evaluate_gge(preds, data, gidx, plan, real_rows, ctrl_rows, gge_options, info)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    cols = [*ID_COLUMNS, *metric_columns(mode), *COUNT_COLUMNS]
    df = pd.DataFrame(results)
    df = df[cols].sort_values(list(ID_COLUMNS), ignore_index=True)
    df["mode"] = mode
    log.info("Evaluated %d rows in %.1f s.", len(df), info["seconds"])
    return df, info


def _model_names(preds: Sequence[Predictions]) -> list[str]:
    """The model of each prediction file; a :class:`PtragError` when two files share one."""
    models = [p.model for p in preds]
    if len(set(models)) != len(models):
        dup = pd.Index(models)[pd.Index(models).duplicated()][0]
        raise PtragError(
            f"two prediction files name the same model {dup!r} (uns['ptrag']['model']); "
            "give each file its own name with --name."
        )
    return models


def _plan(preds: Sequence[Predictions], data) -> tuple[_Plan, dict[tuple[str, str], np.ndarray], dict[str, np.ndarray]]:
    """Match every predicted group with its observed cells, checking them all first.

    Returns ``(plan, real_rows, ctrl_rows)``: the predicted rows of each (cell type,
    perturbation) by model, the observed rows of each such group, and the observed control rows
    of each predicted cell type.
    """
    plan: _Plan = {}
    real_rows: dict[tuple[str, str], np.ndarray] = {}
    ctrl_rows: dict[str, np.ndarray] = {}
    for p in preds:
        groups = p.groups()
        for ct in sorted(groups["cell_type"].unique()):
            if ct not in ctrl_rows:
                ctrl_rows[ct] = _observed_controls(p, data, ct)
        for ct, pert, rows in groups.itertuples(index=False):
            key = (ct, pert)
            if key not in real_rows:
                real_rows[key] = _observed_group(p, data, ct, pert)
            plan.setdefault(key, {})[p.model] = rows
    return plan, real_rows, ctrl_rows


def _observed_controls(p: Predictions, data, ct: str) -> np.ndarray:
    """Rows of the observed control cells of cell type ``ct``; at least 2, else a :class:`PtragError`."""
    rows = data.rows_of(ct, data.spec.control)
    if len(rows) < 2:
        known = ", ".join(data.cell_types)
        raise PtragError(
            f"{p.path}: cell type {ct!r} has {len(rows)} observed control cells in "
            f"{data.path} (need at least 2; cell types there: {known}). Check "
            "--cell-type-col / --control."
        )
    return rows


def _observed_group(p: Predictions, data, ct: str, pert: str) -> np.ndarray:
    """Rows of the observed cells of ``pert`` in ``ct``; a :class:`PtragError` when there are none."""
    r = data.rows_of(ct, pert)
    if len(r) == 0:
        raise PtragError(
            f"{p.path}: perturbation {pert!r} in cell type {ct!r} is absent from the "
            f"observed data {data.path}; evaluate on the data set the predictions were "
            "made for (and check --pert-col / --cell-type-col)."
        )
    return r


def _evaluate_ptrag(
    preds: Sequence[Predictions],
    data,
    genes: Sequence[str],
    gidx: np.ndarray | None,
    pca: PCASpace | None,
    plan: _Plan,
    real_rows: dict[tuple[str, str], np.ndarray],
    ctrl_rows: dict[str, np.ndarray],
    options: MetricOptions,
) -> list[dict]:
    """ptrag mode: per cell type, score every model's groups against the observed cells in the run's PCA space."""
    if pca is None:
        raise PtragError("ptrag mode needs the run's PCA space (RUN_DIR/pca.npz).")
    by_model = {p.model: p for p in preds}
    results: list[dict] = []
    for ct in sorted(ctrl_rows):
        control = _control_set(data, ctrl_rows[ct], gidx, options.cell_eval)
        keys = [k for k in sorted(plan) if k[0] == ct]
        log.info("Evaluating %d perturbations of cell type %s (%d control cells).", len(keys), ct, control.stats.n)
        groups = (
            (key[1], data.expression(real_rows[key], gidx), {m: by_model[m].cells(r) for m, r in plan[key].items()})
            for key in keys
        )
        results.extend(score_cell_type(ct, control, genes, pca, groups, options))
    return results


def _control_set(data, rows: np.ndarray, gidx, cell_eval: bool) -> ControlSet:
    """The control cells of a cell type: all of them for cell-eval's metrics, else only their
    statistics, read in blocks (a control set larger than memory still evaluates)."""
    if cell_eval:
        return ControlSet.of(data.expression(rows, gidx))
    return ControlSet(
        GroupStats.of_chunks(data.expression(rows[i : i + 20_000], gidx) for i in range(0, len(rows), 20_000))
    )


def _evaluate_gge(preds, data, gidx, plan, real_rows, ctrl_rows, gge_options, info) -> list[dict]:
    """gge mode: per model, fit PCA + DEGs on its first condition, then score all conditions."""
    all_ctrl = np.concatenate([ctrl_rows[ct] for ct in sorted(ctrl_rows)])
    controls_all = GroupStats.of_chunks(
        data.expression(all_ctrl[i : i + 20_000], gidx) for i in range(0, len(all_ctrl), 20_000)
    )
    refs: dict[str, GGEReference] = {}
    info["gge_first_condition"] = {}
    results = []
    control_label = data.spec.control
    for p in preds:
        # Conditions gge-eval would see for this file: groups with >= 2 cells in both files,
        # plus the control groups when the prediction file carries control cells.
        keys = {}
        for (ct, pert), per_model in plan.items():
            if p.model in per_model and len(per_model[p.model]) >= 2 and len(real_rows[(ct, pert)]) >= 2:
                keys[condition_key(pert, ct)] = ("group", ct, pert)
        if p.control == control_label:
            for ct in ctrl_rows:
                if len(p.control_rows(ct)) >= 2:
                    keys[condition_key(control_label, ct)] = ("control", ct, control_label)
        first = first_condition(list(keys))
        if first not in refs:
            kind, ct, pert = keys[first]
            rows = ctrl_rows[ct] if kind == "control" else real_rows[(ct, pert)]
            refs[first] = GGEReference.fit(data.expression(rows, gidx), controls_all, gge_options, first)
        ref = refs[first]
        info["gge_first_condition"][p.model] = first
        log.info("gge mode, model %s: PCA and DEGs fit on the first condition %s.", p.model, first)
        for ct, pert in sorted(plan):
            rows = plan[(ct, pert)].get(p.model)
            if rows is None:
                continue
            real = data.expression(real_rows[(ct, pert)], gidx)
            row = gge_group_metrics({p.model: p.cells(rows)}, real, ref)[p.model]
            results.append({"model": p.model, "cell_type": ct, "perturbation": pert, **row})
    return results


# -------------------------------------------------------------------------- outputs


def write_outputs(metrics: pd.DataFrame, out_dir: str | Path, mode: Mode, info: dict | None = None) -> None:
    """Write ``metrics.parquet/csv``, ``summary.csv/md`` and ``evaluation.json`` atomically.

    Parameters
    ----------
    metrics
        Output of :func:`evaluate_predictions`.
    out_dir
        Destination folder (created when missing).
    mode
        The metric definitions used.
    info
        Provenance written to ``evaluation.json``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PtragError(f"--out {out_dir} exists and is not a folder.")
    summary = summary_table(metrics, mode)
    md = summary_markdown(summary, mode)
    with atomic_dir(out_dir) as tmp:  # the five files appear together, or none does
        metrics.to_parquet(tmp / "metrics.parquet", index=False)
        metrics.to_csv(tmp / "metrics.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        (tmp / "summary.md").write_text(md)
        (tmp / "evaluation.json").write_text(json.dumps(info or {}, indent=2, default=str) + "\n")


def evaluate(
    pred_paths: Sequence[PredictionSource],
    real_path: DataSource,
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    mode: Mode = "ptrag",
    spec=None,
    spec_is_default: Sequence[str] | None = None,
    backed: bool = False,
    options: MetricOptions = MetricOptions(),
    gge_options: GGEOptions = GGEOptions(),
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``ptrag evaluate`` as a function: read, check, score, write.

    Parameters
    ----------
    pred_paths
        Predictions, one model each: files, AnnData or the ``Prediction`` of ``predict``.
    real_path
        The observed data: an ``.h5ad`` path or an in-memory AnnData.
    run_dir
        The run folder (genes, PCA, default data columns).
    out_dir
        Output folder; ``None``: nothing is written, the metrics are only returned.
    mode
        ``"ptrag"`` or ``"gge"``.
    spec
        :class:`ptrag.data.io.ColumnSpec` of the observed data; default: the ``[data]`` table
        of ``RUN_DIR/config.toml``, else ptrag's defaults.
    spec_is_default
        Spec fields the user left at their defaults (see ``read_perturbseq``).
    backed
        Stream the observed data from disk (a path only; ignored for an in-memory AnnData).
    options
        ptrag-mode DEG options.
    gge_options
        gge-mode options.
    names
        Model names, one per prediction file, replacing ``uns["ptrag"]["model"]`` (to tell
        apart runs of the same model, e.g. a sweep).

    Returns
    -------
    pandas.DataFrame
        The per-group metrics (also written to ``out_dir``, when given).
    """
    from ptrag.data.io import read_perturbseq

    run, pca, spec, preds = read_inputs(pred_paths, run_dir, mode, spec, names)
    data = read_perturbseq(real_path, spec, backed=backed, spec_is_default=spec_is_default)
    try:
        metrics, info = evaluate_predictions(preds, data, run.genes, pca, mode, options, gge_options)
    finally:
        data.close()
    opts = options if mode == "ptrag" else gge_options
    info.update(_provenance(pred_paths, real_path, run_dir, run, pca, opts, data))
    if out_dir is not None:
        write_outputs(metrics, out_dir, mode, info)
    return metrics


def _provenance(
    pred_paths: Sequence[PredictionSource],
    real_path: DataSource,
    run_dir: str | Path,
    run: RunInfo,
    pca: PCASpace | None,
    options: MetricOptions | GGEOptions,
    data,
) -> dict:
    """What :func:`evaluate` records in ``evaluation.json`` beside :func:`evaluate_predictions`'s info."""
    return {
        "pred": [prediction_label(p) for p in pred_paths],
        "real": source_label(real_path),
        "run": str(run_dir),
        "n_genes": len(run.genes),
        "pca_components": pca.n_components if pca is not None else None,
        "options": asdict(options),
        "data_columns": data.spec.to_dict(),
    }
