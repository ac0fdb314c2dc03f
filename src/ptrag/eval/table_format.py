"""Rendering of result tables: values, Markdown, LaTeX and CSV, with the significance-mark legend.

* :func:`format_value` — a metric value with about 3 significant digits (paper style).
* :func:`md_table` — a Markdown table (first column left-aligned, the others right-aligned).
* :class:`ComparisonTable` — a built comparison table (:func:`ptrag.eval.comparison.comparison_table`)
  and its Markdown, LaTeX and CSV forms; its legend explains the significance marks.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ptrag.errors import check_choice
from ptrag.eval.metrics import METRICS, MetricInfo
from ptrag.eval.vcc import VCC_COLUMN

#: ``reference`` of a table whose marks test each model against the row's best baseline.
BEST_BASELINE = "best-baseline"


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


def metric_infos(mode: str, columns: Sequence[str]) -> list[MetricInfo]:
    """The metrics of definition set ``mode`` present among ``columns``, in table order.

    Parameters
    ----------
    mode
        The metric set (``ptrag`` or ``gge``).
    columns
        Columns of a per-group metrics table.

    Returns
    -------
    list[MetricInfo]
    """
    check_choice("mode", mode, tuple(METRICS))
    return [m for m in METRICS[mode] if m.column in columns]


def md_escape(s: str) -> str:
    """``s`` with ``|`` escaped, for a Markdown table cell."""
    return str(s).replace("|", "\\|")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: first column left-aligned, the others right-aligned.

    Parameters
    ----------
    header
        Column titles.
    rows
        Cells, one list per row.

    Returns
    -------
    str
        The table, ending with a newline.
    """
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    for r in rows:
        lines.append("| " + " | ".join(md_escape(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


def safe_name(s: str) -> str:
    """``s`` as a file-name stem: runs of other characters than ``A-Za-z0-9_.-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s)).strip("_") or "unnamed"


def _latex_escape(s: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", str(s))


def _latex_marks(s: str) -> str:
    return "" if not s else r"\textsuperscript{" + r"\dag" * len(s) + "}"


_LATEX_ARROW = {"↑": r"$\uparrow$", "↓": r"$\downarrow$"}


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
        return f"### {self.title}\n\n" + md_table(header, body) + f"\n{self._legend()}\n"

    def to_latex(self) -> str:
        """The table as a LaTeX ``table`` (booktabs)."""
        esc = _latex_escape
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
            cells = [f"{label} {_LATEX_ARROW[r.info.arrow]}"]
            for mo in self.models:
                txt = format_value(r.mean.get(mo, math.nan))
                txt = rf"\textbf{{{txt}}}" if mo in r.best else txt
                cells.append(txt + _latex_marks(r.mark.get(mo, "")))
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


#: Column names of :meth:`ComparisonTable.to_frame` that a model may not take.
RESERVED_COLUMNS = frozenset({"metric_group", "metric", "metric_label", "direction", "best_model", "reference_model"})
