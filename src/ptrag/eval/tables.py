"""Result tables: per-run summaries and the paper's model-comparison tables.

* :func:`summary_table` — mean ± std of every metric per model, per cell type and overall
  (``summary.csv`` / ``summary.md`` of ``ptrag evaluate``).
* :func:`comparison_table` — the layout of the paper's Tables 1–2 (models as columns, metric
  rows grouped, ↑/↓, best mean in bold, significance marks), and restricted to one cell type,
  of Tables 3–6. Rendered as Markdown, LaTeX and CSV.
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
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ptrag.errors import PtragError, atomic_write_csv, atomic_write_text, check_choice
from ptrag.eval.metrics import METRICS, MetricInfo
from ptrag.eval.stats import KEYS, lookup_test, pairwise_tests
from ptrag.eval.vcc import VCC_BASELINE, VCC_COLUMN, vcc_info, vcc_of_models

log = logging.getLogger("ptrag")

ALL = "all"


def format_value(v: float) -> str:
    """Format a metric value with about 3 significant digits (paper style).

    Parameters
    ----------
    v
        Value.

    Returns
    -------
    str
    """
    if v is None or not np.isfinite(v):
        return "nan"
    a = abs(v)
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.1 or a == 0:
        return f"{v:.3f}"
    return f"{v:.3g}"


def _infos(mode: str, columns: Sequence[str]) -> list[MetricInfo]:
    check_choice("mode", mode, tuple(METRICS))
    return [m for m in METRICS[mode] if m.column in columns]


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
    infos = _infos(mode, metrics.columns)
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
        parts.append(_md_table(header, body))
    return "\n".join(parts) + "\n"


def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- comparison tables


@dataclass
class ComparisonRow:
    """One metric row of a comparison table."""

    info: MetricInfo
    mean: dict[str, float]
    std: dict[str, float]
    n: dict[str, int]
    best: list[str]
    reference: str | None
    q: dict[str, float] = field(default_factory=dict)
    mark: dict[str, str] = field(default_factory=dict)


@dataclass
class ComparisonTable:
    """A comparison table (paper Tables 1–6 layout) and the tests behind its marks.

    Attributes
    ----------
    title
        Caption.
    models
        Column order.
    rows
        Metric rows, in group order.
    tests
        All pairwise tests of the table (:func:`ptrag.eval.stats.pairwise_tests`).
    test
        Which test gives the marks.
    reference
        The fixed reference model, or ``None`` (each row's best model).
    vcc_baseline
        The baseline of the VCC score row (the last row), or ``None`` when there is none.
    """

    title: str
    models: list[str]
    rows: list[ComparisonRow]
    tests: pd.DataFrame
    test: str
    reference: str | None
    vcc_baseline: str | None = None

    def _legend(self) -> str:
        ref = (
            "the best baseline of the row (no mark)"
            if self.reference == BEST_BASELINE
            else f"model {self.reference}"
            if self.reference
            else "the best model of the row"
        )
        name = "Mann–Whitney U" if self.test == "mannwhitney" else "paired Wilcoxon signed-rank"
        return (
            f"Best mean in bold. Marks: {name} test against {ref}, Benjamini–Hochberg adjusted "
            "over all tests of the table: † q < 0.01, †† q < 0.05, ††† q < 0.1."
        ) + "".join(
            f" {r.info.label}: cell-eval's Virtual Cell Challenge score, each metric's mean normalised "
            f"against {self.vcc_baseline} (0 = that baseline, 1 = perfect; a metric worse than the baseline "
            "counts 0) and averaged; not tested."
            for r in self.rows
            if r.info.column == VCC_COLUMN
        )

    def to_markdown(self) -> str:
        """The table as Markdown (groups as bold rows)."""
        header = ["Metric", *self.models]
        body: list[list[str]] = []
        group = None
        for r in self.rows:
            if r.info.group != group:
                group = r.info.group
                body.append([f"**{group}**", *[""] * len(self.models)])
            cells = [f"{r.info.label} {r.info.arrow}"]
            for mo in self.models:
                txt = format_value(r.mean.get(mo, math.nan)) + r.mark.get(mo, "")
                cells.append(f"**{txt}**" if mo in r.best else txt)
            body.append(cells)
        return f"### {self.title}\n\n" + _md_table(header, body) + f"\n{self._legend()}\n"

    def to_latex(self) -> str:
        """The table as a LaTeX ``table`` (booktabs)."""

        def esc(s: str) -> str:
            return re.sub(r"([&%$#_{}])", r"\\\1", str(s))

        def marks(s: str) -> str:
            return "" if not s else r"\textsuperscript{" + r"\dag" * len(s) + "}"

        lab = {"↑": r"$\uparrow$", "↓": r"$\downarrow$"}
        n = len(self.models)
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            r"\caption{" + esc(self.title) + ". " + esc(self._legend()).replace("†", r"\dag{}") + "}",
            r"\begin{tabular}{l" + "r" * n + "}",
            r"\toprule",
            "Metric & " + " & ".join(esc(m) for m in self.models) + r" \\",
            r"\midrule",
        ]
        group = None
        for r in self.rows:
            if r.info.group != group:
                if group is not None:
                    lines.append(r"\midrule")
                group = r.info.group
                lines.append(r"\multicolumn{" + str(n + 1) + r"}{l}{\textit{" + esc(group) + r"}} \\")
            label = esc(r.info.label).replace("²", r"$^2$").replace("Δ", r"$\Delta$")
            cells = [f"{label} {lab[r.info.arrow]}"]
            for mo in self.models:
                txt = format_value(r.mean.get(mo, math.nan))
                txt = rf"\textbf{{{txt}}}" if mo in r.best else txt
                cells.append(txt + marks(r.mark.get(mo, "")))
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"

    def to_frame(self) -> pd.DataFrame:
        """The table as a wide DataFrame (the CSV output).

        Columns: ``metric_group, metric, metric_label, direction, best_model,
        reference_model``, then per model ``<model>`` (mean), ``<model>_std``, ``<model>_n``,
        ``<model>_q`` (adjusted p against the reference) and ``<model>_mark``.
        """
        rows = []
        for r in self.rows:
            row: dict[str, object] = {
                "metric_group": r.info.group,
                "metric": r.info.column,
                "metric_label": r.info.label,
                "direction": r.info.arrow,
                "best_model": ";".join(r.best),
                "reference_model": r.reference or "",
            }
            for mo in self.models:
                row[mo] = r.mean.get(mo, math.nan)
                row[f"{mo}_std"] = r.std.get(mo, math.nan)
                row[f"{mo}_n"] = r.n.get(mo, 0)
                row[f"{mo}_q"] = r.q.get(mo, math.nan)
                row[f"{mo}_mark"] = r.mark.get(mo, "")
            rows.append(row)
        return pd.DataFrame(rows)


_RESERVED = {"metric_group", "metric", "metric_label", "direction", "best_model", "reference_model"}


#: ``reference`` of a table whose marks test each model against the row's best baseline.
BEST_BASELINE = "best-baseline"


def _check_reference(reference: str | None, models: Sequence[str], baselines: Sequence[str]) -> None:
    if reference == BEST_BASELINE:
        if not any(b in models for b in baselines):
            raise PtragError(f"--reference {BEST_BASELINE} needs a baseline among the models ({', '.join(models)}).")
    elif reference is not None and reference not in models:
        raise PtragError(f"--reference {reference!r} is not one of the models: {', '.join(models)}.")


def _best_models(mean: dict[str, float], higher_is_better: bool) -> list[str]:
    finite = {mo: x for mo, x in mean.items() if np.isfinite(x)}
    if not finite:
        return []
    target = max(finite.values()) if higher_is_better else min(finite.values())
    return [mo for mo, x in finite.items() if x == target]


def _vcc_row(metrics: pd.DataFrame, models: list[str], baseline: str) -> ComparisonRow | None:
    """The VCC score row (no test), or ``None`` when no VCC metric or no baseline value."""
    scores, used = vcc_of_models(metrics[metrics["model"].isin(models)], baseline)
    if not scores:
        return None
    counts = metrics["model"].value_counts()
    mean = {mo: scores.get(mo, math.nan) for mo in models}
    n = {mo: int(counts.get(mo, 0)) for mo in models}
    return ComparisonRow(
        vcc_info(baseline, used), mean, {mo: math.nan for mo in models}, n, _best_models(mean, True), None
    )


def comparison_table(
    metrics: pd.DataFrame,
    mode: Literal["ptrag", "gge"] = "ptrag",
    reference: str | None = None,
    test: Literal["mannwhitney", "wilcoxon"] = "mannwhitney",
    models: Sequence[str] | None = None,
    title: str = "All cell types",
    vcc_baseline: str | None = VCC_BASELINE,
    baselines: Sequence[str] = (),
) -> ComparisonTable:
    """Build a comparison table of several models.

    Parameters
    ----------
    metrics
        One row per (model, cell_type, perturbation); restrict it to one cell type for the
        per-cell-type tables.
    mode
        The metric set (``ptrag`` or ``gge``).
    reference
        Compare every model with this one (``--reference``); by default each metric row's
        best model; :data:`BEST_BASELINE`: each row's best baseline (best mean among
        ``baselines``).
    test
        ``"mannwhitney"`` (the paper's) or ``"wilcoxon"`` (paired on cell type + perturbation).
    models
        Column order (all models, sorted, when ``None``).
    title
        Caption.
    baselines
        Which models are baselines (for ``reference=BEST_BASELINE``).
    vcc_baseline
        Add the Virtual Cell Challenge score against this baseline as the last row
        (:func:`ptrag.eval.vcc.vcc_scores`; ``ptrag`` mode, only when the baseline is one of
        ``models`` and a VCC metric is present); ``None``: no such row.

    Returns
    -------
    ComparisonTable
    """
    check_choice("--test", test, ("mannwhitney", "wilcoxon"))
    models = list(models) if models is not None else sorted(metrics["model"].unique())
    clash = [mo for mo in models if mo in _RESERVED]
    if clash:
        raise PtragError(f"model name {clash[0]!r} is reserved in the comparison tables; rename the model.")
    _check_reference(reference, models, baselines)
    infos = _infos(mode, metrics.columns)
    # a cell-type-scope metric repeats one value over the groups of a cell type: no per-group test
    tested = [m.column for m in infos if m.tested]
    tests = pairwise_tests(metrics, tested, models) if len(models) > 1 else pd.DataFrame()
    fam = "mwu" if test == "mannwhitney" else "wilcoxon"
    rows = []
    for m in infos:
        mean, std, n = {}, {}, {}
        for mo in models:
            v = metrics.loc[metrics["model"] == mo, m.column].astype(float)
            mean[mo] = float(v.mean())
            std[mo] = float(v.std(ddof=1)) if v.notna().sum() > 1 else math.nan
            n[mo] = int(v.notna().sum())
        best = _best_models(mean, m.higher_is_better)
        if reference == BEST_BASELINE:
            ref = next(iter(_best_models({b: mean[b] for b in baselines if b in mean}, m.higher_is_better)), None)
        else:
            ref = reference if reference is not None else (best[0] if best else None)
        row = ComparisonRow(m, mean, std, n, best, ref)
        if ref is not None and len(models) > 1:
            for mo in models:
                if mo == ref:
                    continue
                t = lookup_test(tests, m.column, ref, mo)
                if t is not None:
                    row.q[mo] = float(t[f"{fam}_q"])
                    row.mark[mo] = str(t[f"{fam}_mark"])
        rows.append(row)
    vcc = _vcc_row(metrics, models, vcc_baseline) if mode == "ptrag" and vcc_baseline in models else None
    return ComparisonTable(
        title, models, rows + ([vcc] if vcc else []), tests, test, reference, vcc_baseline if vcc else None
    )


# ------------------------------------------------------------------ ptrag compare


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "unnamed"


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
    _check_reference(reference, models, baselines)
    tables = {ALL: comparison_table(metrics, mode, reference, test, models, "All cell types", baselines=baselines)}
    for ct in sorted(metrics["cell_type"].unique()):
        sub = metrics[metrics["cell_type"] == ct]
        tables[ct] = comparison_table(sub, mode, reference, test, models, f"Cell type {ct}", baselines=baselines)
    out_dir = Path(out_dir)
    tests = []
    used: set[str] = set()
    for key, t in tables.items():
        stem = "table_" + _safe_name(key)
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
