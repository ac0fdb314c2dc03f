"""Sensitivity sweeps: one model trained over a grid of options on one split.

The paper's sweeps are λ_sparse ∈ {0, 0.01, 0.1, 1} x K ∈ {16, 32} for PT-RAG and
K ∈ {2, 5, 10, 32} for Vanilla RAG (:data:`PAPER_SWEEPS`). Every grid point is one run
(``runs/<variant>/``), its test predictions and the evaluation of all of them beside the
baselines (:data:`ptrag.train.baselines.BASELINES`;
:func:`ptrag.experiments.cross_celltype.run_target`, so a sweep resumes like the
experiment). The summary gives, per variant, the mean of every test metric, the best
validation energy and, for RAG models, the mean number of contexts a cell selects (PT-RAG)
or receives (Vanilla RAG: all K); one line plot per metric.

Layout of ``OUT``::

    runs/<variant>/  pred/<variant>.h5ad  eval/  sweep.csv  sweep.md  sweep.png
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ptrag.data.io import ColumnSpec
from ptrag.errors import PtragError, atomic_save_figure, atomic_write_csv, atomic_write_text, check_choice
from ptrag.experiments.split_step import BASELINE, run_target
from ptrag.train.baselines import BASELINES
from ptrag.train.config import MODELS, TrainConfig, resolve_config

log = logging.getLogger("ptrag")

#: The paper's sensitivity analyses: model -> option -> values.
PAPER_SWEEPS: dict[str, dict[str, list[Any]]] = {
    "pt_rag": {"sparsity_weight": [0.0, 0.01, 0.1, 1.0], "topk": [16, 32]},
    "vanilla_rag": {"topk": [2, 5, 10, 32]},
    "pt_rag_response": {"sparsity_weight": [0.0, 0.01, 0.1, 1.0], "topk": [16, 32]},  # PT-RAG's grid
}

#: Short names of swept options in variant names and plots.
SHORT = {"sparsity_weight": "lambda", "topk": "K"}

#: Test metrics of the summary plot (column -> label, lower is better?).
PLOT_METRICS = {
    "pearson_delta": ("Pearson Δ ↑", False),
    "pearson_deg": ("Pearson DEG ↑", False),
    "mse": ("MSE ↓", True),
    "energy": ("Energy PCA-50 ↓", True),
}


def variant_name(model: str, point: Mapping[str, Any]) -> str:
    """Folder-safe name of one grid point, e.g. ``pt_rag_lambda0.1_K16``."""
    return model + "".join(
        f"_{SHORT.get(k, k)}{v:g}" if isinstance(v, float) else f"_{SHORT.get(k, k)}{v}" for k, v in point.items()
    )


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (first option varies slowest)."""
    if not grid:
        raise PtragError("the sweep grid is empty: give at least one option with values.")
    for k, vals in grid.items():
        if not len(vals):
            raise PtragError(f"the sweep gives no value for {k}.")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def mean_selected_contexts(retrieval_log: pd.DataFrame) -> float:
    """Mean number of contexts a predicted cell uses: PT-RAG's selected ones (sum of
    ``selected_fraction`` over a query's candidates), or all K retrieved for Vanilla RAG;
    averaged over the (cell type, query) pairs of the log."""
    per = retrieval_log.assign(sel=retrieval_log["selected_fraction"].fillna(1.0))
    return float(per.groupby(["cell_type", "query"])["sel"].sum().mean())


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["sparsity_weight=0,0.1", "topk=16,32"]`` -> a grid, values typed like the option.

    Raises
    ------
    PtragError
        If an item is not ``name=v1,v2`` or names no training option.
    """
    from ptrag.train.config import coerce_option

    def typed(name: str, text: str) -> Any:
        kind = type(getattr(TrainConfig(), name))
        try:
            value: Any = {int: int, float: float, bool: lambda t: {"true": True, "false": False}[t.lower()]}.get(
                kind, str
            )(text)
        except (ValueError, KeyError):
            raise PtragError(f"--grid {name}: {text!r} is not a valid {kind.__name__}.") from None
        return coerce_option(name, value, f"--grid {name}")

    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or not name or not values.strip():
            raise PtragError(f"--grid {item!r}: write it as option=v1,v2 (e.g. sparsity_weight=0,0.1,1).")
        if name not in TrainConfig.__dataclass_fields__ or name in ("model", "seed", "data", "preset"):
            raise PtragError(f"--grid {item!r}: {name!r} is not a training option that can be swept.")
        grid[name] = [typed(name, v.strip()) for v in values.split(",") if v.strip()]
    return grid


def sweep(
    data_path: str | Path,
    split_path: str | Path,
    out_dir: str | Path,
    model: str,
    grid: Mapping[str, Sequence[Any]],
    gene_tables: Sequence[str | Path] = (),
    preset: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    spec: ColumnSpec | None = None,
    progress: bool = True,
    ground_truth: str | Path | None = None,
) -> pd.DataFrame:
    """Train ``model`` at every point of ``grid`` on one split, predict, evaluate, summarise.

    Parameters
    ----------
    data_path
        Perturb-seq ``.h5ad`` file.
    split_path
        The split (its test groups are evaluated).
    out_dir
        Sweep folder (a second call resumes it).
    model
        One of :data:`ptrag.train.config.MODELS`.
    grid
        Option -> values (training-option names, e.g. ``sparsity_weight``, ``topk``).
    gene_tables
        Gene tables for the embedding models.
    preset
        ``cpu`` or ``paper``.
    overrides
        Options shared by every grid point.
    seed
        Training seed.
    spec
        Data columns.
    progress
        Show progress bars.
    ground_truth
        ``ground_truth.csv`` of the synthetic benchmark: adds the retrieval precision / recall
        of Stage 1 (``precision_topk``, ``recall_topk``) and of PT-RAG's selection
        (``precision_selected``, ``recall_selected``) for the RAG models.

    Returns
    -------
    pandas.DataFrame
        One row per grid point: ``variant``, the swept options, ``val_energy``,
        ``mean_contexts`` (NaN for non-RAG models), the retrieval precision / recall (with
        ``ground_truth``), the mean of every test metric,
        ``better_than_control`` (fraction of test groups whose PCA-50 energy beats the
        control baseline) and ``wilcoxon_p`` (paired test of that), and a last row for each
        baseline of :data:`~ptrag.train.baselines.BASELINES` (``variant`` = its name). Also
        written as ``sweep.csv`` / ``sweep.md``, with ``sweep.png``.
    """
    spec = spec or ColumnSpec()
    points, configs = _variant_configs(model, grid, gene_tables, preset, overrides, seed, spec)
    metrics = run_target(data_path, split_path, Path(out_dir), configs, gene_tables, spec, progress, "pred", "eval")
    return _summarise(metrics, Path(out_dir), model, grid, dict(zip(configs, points, strict=False)), ground_truth)


def _variant_configs(
    model: str,
    grid: Mapping[str, Sequence[Any]],
    gene_tables: Sequence[str | Path],
    preset: str,
    overrides: Mapping[str, Any] | None,
    seed: int,
    spec: ColumnSpec,
) -> tuple[list[dict[str, Any]], dict[str, TrainConfig]]:
    """The grid's points and the training configuration of each, by variant name; checks the
    model and that a model needing gene embeddings has gene tables."""
    check_choice("--model", model, MODELS)
    points = grid_points(grid)
    configs: dict[str, TrainConfig] = {}
    for point in points:
        values = {**dict(overrides or {}), **point, "model": model, "seed": seed, "data": spec.to_dict()}
        configs[variant_name(model, point)] = resolve_config(values, preset=preset)
    if next(iter(configs.values())).uses_gene_table and not gene_tables:
        raise PtragError(f"{model} needs gene embeddings: pass --genes TABLE.")
    return points, configs


def _summarise(
    metrics: pd.DataFrame,
    out: Path,
    model: str,
    grid: Mapping[str, Sequence[Any]],
    variants: Mapping[str, Mapping[str, Any]],
    ground_truth: str | Path | None,
) -> pd.DataFrame:
    """The sweep's table (a row per variant, then one per baseline), written as ``sweep.csv``,
    ``sweep.md`` and ``sweep.png``."""
    from ptrag.eval.stats import baseline_comparison
    from ptrag.eval.table_format import metric_infos

    vs = baseline_comparison(metrics, "energy", BASELINE).set_index("model")
    metric_cols = [i.column for i in metric_infos(str(metrics["mode"].iloc[0]), metrics.columns)]
    rows = [_variant_row(name, point, metrics, metric_cols, vs, out, ground_truth) for name, point in variants.items()]
    rows += [_baseline_row(name, metrics, metric_cols, vs, grid) for name in BASELINES]
    table = pd.DataFrame(rows)
    atomic_write_csv(out / "sweep.csv", table)
    atomic_write_text(out / "sweep.md", sweep_markdown(table, model, list(grid)))
    plot_sweep(table, list(grid), out / "sweep.png", title=f"{model} sweep")
    return table


def _variant_row(
    name: str,
    point: Mapping[str, Any],
    metrics: pd.DataFrame,
    metric_cols: Sequence[str],
    vs: pd.DataFrame,
    out: Path,
    ground_truth: str | Path | None,
) -> dict[str, Any]:
    """The sweep table's row of one variant: its options, best validation energy, contexts per
    cell, retrieval precision / recall (with ``ground_truth``), mean test metrics and the
    comparison with the control baseline."""
    m = metrics[metrics["model"] == name]
    summary = json.loads((out / "runs" / name / "train_summary.json").read_text())
    row: dict[str, Any] = {"variant": name, **point, "val_energy": summary["val_energy"]}
    rlog = out / "pred" / f"{name}.retrieval.csv"
    retrieval = pd.read_csv(rlog) if rlog.is_file() else None
    row["mean_contexts"] = np.nan if retrieval is None else mean_selected_contexts(retrieval)
    if ground_truth and retrieval is not None:
        row.update(_against_truth(retrieval, ground_truth, name))
    row.update(m[metric_cols].mean().to_dict())
    row["better_than_control"] = vs.loc[name, "better_than_control"]
    row["wilcoxon_p"] = vs.loc[name, "wilcoxon_p"]
    return row


def _baseline_row(
    name: str,
    metrics: pd.DataFrame,
    metric_cols: Sequence[str],
    vs: pd.DataFrame,
    grid: Mapping[str, Sequence[Any]],
) -> dict[str, Any]:
    """The sweep table's row of one baseline: its mean test metrics and, except for the control
    baseline itself, its comparison with the control baseline."""
    base = metrics[metrics["model"] == name]
    versus = (
        {"better_than_control": np.nan, "wilcoxon_p": np.nan}
        if name == BASELINE
        else {c: vs.loc[name, c] for c in ("better_than_control", "wilcoxon_p")}
    )
    return {
        "variant": name,
        **{k: np.nan for k in grid},
        "val_energy": np.nan,
        "mean_contexts": np.nan,
        **base[metric_cols].mean().to_dict(),
        **versus,
    }


TRUTH_COLUMNS = ("precision_topk", "recall_topk", "precision_selected", "recall_selected")


def _against_truth(rlog: pd.DataFrame, ground_truth: str | Path, name: str) -> dict[str, float]:
    from ptrag.eval.retrieval import retrieval_against_truth

    pr = retrieval_against_truth(rlog, ground_truth, name).set_index("cell_type")
    return {c: float(pr.loc["all", c]) for c in TRUTH_COLUMNS}


def _value(v: Any) -> str:
    """A swept option's value as text (numbers without trailing zeros)."""
    return f"{v:g}" if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) else str(v)


def sweep_markdown(table: pd.DataFrame, model: str, options: Sequence[str]) -> str:
    """The sweep table in Markdown (swept options, val energy, contexts, key test metrics)."""
    from ptrag.eval.table_format import format_value, md_table

    cols = [
        *options,
        "val_energy",
        "mean_contexts",
        *[c for c in TRUTH_COLUMNS if c in table],
        *[c for c in PLOT_METRICS if c in table],
        "better_than_control",
        "wilcoxon_p",
    ]
    names = {
        **{o: SHORT.get(o, o) for o in options},
        "val_energy": "best val energy ↓",
        "mean_contexts": "contexts per cell",
        "better_than_control": "energy < control (groups)",
        "precision_topk": "precision Stage 1",
        "recall_topk": "recall Stage 1",
        "precision_selected": "precision selected",
        "recall_selected": "recall selected",
        "wilcoxon_p": "Wilcoxon p vs control",
        **{c: lab for c, (lab, _) in PLOT_METRICS.items()},
    }
    rows = []
    for _, r in table.iterrows():
        label = f"{r['variant']} baseline" if r["variant"] in BASELINES else r["variant"]
        rows.append(
            [
                label,
                *("" if pd.isna(r[c]) else (_value(r[c]) if c in options else format_value(float(r[c]))) for c in cols),
            ]
        )
    return f"### Sweep of {model}\n\n" + md_table(["variant", *[names[c] for c in cols]], rows) + "\n"


#: Line colour and style of each baseline in the sweep plots (control: grey dashed).
BASELINE_STYLES = [("grey", "--"), ("tab:brown", ":"), ("tab:olive", ":"), ("tab:cyan", "-."), ("tab:pink", "-.")]


def plot_sweep(table: pd.DataFrame, options: Sequence[str], path: str | Path, title: str = "sweep") -> Path:
    """Line plots of the key test metrics (and contexts per cell) against the first swept
    option, one line per value of the second; the baselines as horizontal lines (control
    dashed grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = table[~table["variant"].isin(BASELINES)]
    bases = table[table["variant"].isin(BASELINES)].set_index("variant")
    x = options[0]
    hue = options[1] if len(options) > 1 else None
    panels = [c for c in PLOT_METRICS if c in table] + (
        ["mean_contexts"] if runs["mean_contexts"].notna().any() else []
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    xs = sorted(runs[x].unique())
    positions = {v: i for i, v in enumerate(xs)}  # evenly spaced: the paper's grids are not linear
    for ax, col in zip(axes[0], panels, strict=True):
        groups = runs.groupby(hue, sort=True) if hue else [(None, runs)]
        for key, g in groups:
            g = g.sort_values(x)
            ax.plot(
                [positions[v] for v in g[x]],
                g[col],
                marker="o",
                label=f"{SHORT.get(hue, hue)} {_value(key)}" if hue else None,
            )
        for name, style in zip(bases.index, BASELINE_STYLES, strict=False):
            if col in bases and pd.notna(bases.loc[name, col]):
                ax.axhline(float(bases.loc[name, col]), color=style[0], linestyle=style[1], linewidth=1, label=name)
        ax.set_xticks(range(len(xs)), [_value(v) for v in xs])
        ax.set_xlabel(SHORT.get(x, x))
        ax.set_title(PLOT_METRICS[col][0] if col in PLOT_METRICS else "contexts per cell", fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=110)
