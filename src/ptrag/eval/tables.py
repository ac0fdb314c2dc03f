"""Result tables: per-run summaries and the paper's model-comparison tables.

* :func:`summary_table` — mean ± std of every metric per model, per cell type and overall
  (``summary.csv`` / ``summary.md`` of ``ptrag evaluate``).
* :func:`comparison_table` — the layout of the paper's Tables 1–2 (models as columns, metric
  rows grouped, ↑/↓, best mean in bold, significance marks), and restricted to one cell type,
  of Tables 3–6. Rendered as Markdown, LaTeX and CSV. Built in :mod:`ptrag.eval.comparison`,
  rendered in :mod:`ptrag.eval.table_format`; both re-exported here.
* :func:`compare_evaluations` — ``ptrag compare``: reads several evaluation folders and writes
  all of the above.

Significance marks: every model is compared with the *reference* of its metric row — the
model given with ``reference`` (``--reference``), or by default the row's best model (best
mean). The best / reference cell carries no mark; another model's cell carries the mark of the
BH-adjusted p-value of its test against the reference (Mann–Whitney U by default, as in the
paper; ``test="wilcoxon"`` for the paired test).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from ptrag.errors import PtragError, atomic_write_csv, atomic_write_text, check_choice
from ptrag.eval.comparison import check_reference, comparison_table
from ptrag.eval.metrics import METRICS
from ptrag.eval.stats import KEYS
from ptrag.eval.table_format import (  # noqa: F401 (re-exported: the table types and formatting)
    BEST_BASELINE,
    ComparisonRow,
    ComparisonTable,
    format_value,
    md_table,
    metric_infos,
    safe_name,
)

log = logging.getLogger("ptrag")

ALL = "all"


# ------------------------------------------------------------------------ summaries


def summary_table(metrics: pd.DataFrame, mode: Literal["ptrag", "gge"] = "ptrag") -> pd.DataFrame:
    """Mean, std and count of every metric per model, per cell type and over all cell types.

    Parameters
    ----------
    metrics
        One row per (model, cell_type, perturbation).
    mode
        Which metric set the table holds.

    Returns
    -------
    pandas.DataFrame
        Columns ``model, cell_type, n_groups`` then ``<metric>_mean, <metric>_std,
        <metric>_n`` per metric (NaNs skipped; std with ddof = 1); ``cell_type == "all"`` for
        the overall rows.
    """
    infos = metric_infos(mode, metrics.columns)
    rows = []
    for model, gm in metrics.groupby("model", sort=True):
        single = (gm["cell_type"] == ALL).all()  # no cell-type column: its one cell type is the pooled scope
        for ct, g in [(ALL, gm)] + ([] if single else list(gm.groupby("cell_type", sort=True))):
            row: dict[str, object] = {"model": model, "cell_type": ct, "n_groups": len(g)}
            for m in infos:
                v = g[m.column].astype(float)
                row[f"{m.column}_mean"] = float(v.mean())
                row[f"{m.column}_std"] = float(v.std(ddof=1)) if v.notna().sum() > 1 else math.nan
                row[f"{m.column}_n"] = int(v.notna().sum())
            rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame, mode: Literal["ptrag", "gge"] = "ptrag") -> str:
    """Markdown of :func:`summary_table`: one table per scope, metrics x models, mean ± std.

    Parameters
    ----------
    summary
        Output of :func:`summary_table`.
    mode
        The metric set.

    Returns
    -------
    str
    """
    infos = [m for m in METRICS[mode] if f"{m.column}_mean" in summary.columns]
    models = list(dict.fromkeys(summary["model"]))
    scopes = [ALL, *sorted(c for c in summary["cell_type"].unique() if c != ALL)]
    parts = [f"# Evaluation summary ({mode} definitions)\n", "Mean ± std over groups (cell type, perturbation).\n"]
    for scope in scopes:
        s = summary[summary["cell_type"] == scope].set_index("model")
        title = "All cell types" if scope == ALL else f"Cell type {scope}"
        n = ", ".join(f"{mo}: {int(s.loc[mo, 'n_groups'])}" for mo in models if mo in s.index)
        parts.append(f"\n## {title}\n\nGroups: {n}\n")
        header = ["Metric", *[mo for mo in models if mo in s.index]]
        body = []
        for m in infos:
            cells = [f"{m.label} {m.arrow}"]
            for mo in header[1:]:
                mean, std = s.loc[mo, f"{m.column}_mean"], s.loc[mo, f"{m.column}_std"]
                cells.append(f"{format_value(mean)} ± {format_value(std)}")
            body.append(cells)
        parts.append(md_table(header, body))
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ ptrag compare


def load_evaluations(eval_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, str]:
    """Read and concatenate the ``metrics.parquet`` of several evaluation folders.

    Parameters
    ----------
    eval_dirs
        Output folders of ``ptrag evaluate``.

    Returns
    -------
    tuple
        ``(metrics, mode)``.
    """
    if not eval_dirs:
        raise PtragError("give at least one evaluation folder (the --out of ptrag evaluate).")
    frames = []
    for d in eval_dirs:
        d = Path(d)
        f = d / "metrics.parquet"
        if not f.is_file():
            raise PtragError(f"{f} not found: is {d} the --out folder of a `ptrag evaluate` run?")
        try:
            df = pd.read_parquet(f)
        except Exception as exc:  # noqa: BLE001 -- any unreadable file is the user's to fix
            raise PtragError(f"{f} could not be read ({exc}); re-run ptrag evaluate.") from exc
        for col in ("model", *KEYS, "mode"):
            if col not in df.columns:
                raise PtragError(f"{f} lacks column {col!r}; re-run ptrag evaluate to regenerate it.")
        df = df.assign(_source=str(d))
        frames.append(df)
    allm = pd.concat(frames, ignore_index=True)
    modes = sorted(allm["mode"].unique())
    if len(modes) != 1:
        raise PtragError(
            f"the evaluation folders mix metric definitions ({', '.join(modes)}); compare folders "
            "evaluated with the same --mode."
        )
    dup = allm.duplicated(["model", *KEYS], keep=False)
    if dup.any():
        srcs = sorted(allm.loc[dup, "_source"].unique())
        model = allm.loc[dup, "model"].iloc[0]
        raise PtragError(
            f"model {model!r} appears in more than one evaluation folder ({', '.join(srcs)}); give each model once."
        )
    return allm.drop(columns="_source"), modes[0]


def common_groups(metrics: pd.DataFrame) -> pd.DataFrame:
    """Keep only the (cell type, perturbation) groups every model was evaluated on."""
    models = metrics["model"].unique()
    counts = metrics.groupby(KEYS)["model"].nunique()
    keep = counts[counts == len(models)].index
    out = metrics.set_index(KEYS).loc[lambda d: d.index.isin(keep)].reset_index()
    dropped = metrics[KEYS].drop_duplicates().shape[0] - len(keep)
    if dropped:
        log.warning(
            "%d (cell type, perturbation) groups are not predicted by every model; the comparison "
            "uses the %d groups common to all models.",
            dropped,
            len(keep),
        )
    if len(keep) == 0:
        raise PtragError("the models have no (cell type, perturbation) group in common; nothing to compare.")
    return out


def compare_evaluations(
    eval_dirs: Sequence[str | Path],
    out_dir: str | Path,
    reference: str | None = None,
    test: Literal["mannwhitney", "wilcoxon"] = "mannwhitney",
) -> dict[str, ComparisonTable]:
    """``ptrag compare``: the paper's comparison tables from several evaluation folders.

    Writes, atomically, into ``out_dir``: ``table_all.{md,tex,csv}`` (Tables 1/2 layout),
    ``table_<cell type>.{md,tex,csv}`` per cell type (Tables 3–6), ``tests.csv`` (every test
    of every table, Mann–Whitney and Wilcoxon side by side, with a ``scope`` column) and
    ``tables.md`` (all Markdown tables together).

    Parameters
    ----------
    eval_dirs
        ``--out`` folders of ``ptrag evaluate``.
    out_dir
        Destination folder.
    reference
        Fixed reference model of the significance marks (default: each row's best model).
    test
        Test behind the marks.

    Returns
    -------
    dict
        ``{"all": table, <cell type>: table, ...}``.
    """
    metrics, mode = load_evaluations(eval_dirs)
    return write_comparison(metrics, mode, out_dir, reference, test)


def write_comparison(
    metrics: pd.DataFrame,
    mode: str,
    out_dir: str | Path,
    reference: str | None = None,
    test: Literal["mannwhitney", "wilcoxon"] = "mannwhitney",
    baselines: Sequence[str] = (),
) -> dict[str, ComparisonTable]:
    """Write the comparison tables of per-group metrics (see :func:`compare_evaluations`).

    Parameters
    ----------
    metrics
        One row per (model, cell type, perturbation), e.g. from :func:`load_evaluations`.
    mode
        Metric definitions of ``metrics`` (``ptrag`` or ``gge``).
    out_dir, reference, test
        As in :func:`compare_evaluations`.
    baselines
        Which models are baselines (``reference=BEST_BASELINE``).

    Returns
    -------
    dict
        ``{"all": table, <cell type>: table, ...}``.
    """
    check_choice("--test", test, ("mannwhitney", "wilcoxon"))
    metrics = common_groups(metrics)
    models = sorted(metrics["model"].unique())
    check_reference(reference, models, baselines)
    tables = {ALL: comparison_table(metrics, mode, reference, test, models, "All cell types", baselines=baselines)}
    for ct in sorted(metrics["cell_type"].unique()):
        sub = metrics[metrics["cell_type"] == ct]
        tables[ct] = comparison_table(sub, mode, reference, test, models, f"Cell type {ct}", baselines=baselines)
    out_dir = Path(out_dir)
    tests = []
    used: set[str] = set()
    for key, t in tables.items():
        stem = "table_" + safe_name(key)
        while stem in used:
            stem += "_"
        used.add(stem)
        atomic_write_text(out_dir / f"{stem}.md", t.to_markdown())
        atomic_write_text(out_dir / f"{stem}.tex", t.to_latex())
        atomic_write_csv(out_dir / f"{stem}.csv", t.to_frame())
        if not t.tests.empty:
            tests.append(t.tests.assign(scope=key))
    atomic_write_csv(out_dir / "tests.csv", (pd.concat(tests, ignore_index=True) if tests else pd.DataFrame()))
    header = f"# Model comparison ({mode} definitions)\n\nModels: {', '.join(models)}.\n\n"
    atomic_write_text(out_dir / "tables.md", header + "\n".join(t.to_markdown() for t in tables.values()))
    return tables
