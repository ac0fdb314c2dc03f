"""One Markdown and one HTML report per experiment folder.

:func:`write_report` reads what :func:`ptrag.experiments.cross_celltype.cross_celltype` left in
the folder (commands, splits, run summaries, comparison tables, retrieval analysis, sweeps,
cost table) and writes ``report.md`` and ``report.html`` beside them. Figures are the PNG files
of the folder, linked by relative path (the HTML shows them when opened in place). Everything
in the report is read from files, so it can be rebuilt at any time with
``ptrag experiment report --out DIR``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ptrag.errors import PtragError, atomic_write_text
from ptrag.eval.tables import format_value
from ptrag.experiments.plots_baselines import BASELINE_FIGURES
from ptrag.train.baselines import BASELINES

COMMANDS_FILE = "commands.txt"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
code, pre { background: #f6f6f6; }
pre { padding: 0.7em; overflow-x: auto; }
img { max-width: 100%; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
"""


def record_command(out_dir: str | Path, argv: list[str]) -> None:
    """Append the command line that worked on ``out_dir`` to its ``commands.txt``."""
    import shlex

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    line = " ".join(shlex.quote(a) for a in argv)
    path = out / COMMANDS_FILE
    previous = path.read_text() if path.is_file() else ""
    if line not in previous.splitlines():
        atomic_write_text(path, previous + line + "\n")


def _table(df: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as a Markdown table: whole-number columns as integers with thousands
    separators, other numbers with about 3 significant digits, NaN as an empty cell."""
    from ptrag.eval.table_format import md_table

    df = df.reset_index() if index else df
    whole = {
        c
        for c in df.columns
        if pd.api.types.is_numeric_dtype(df[c])
        and not pd.api.types.is_bool_dtype(df[c])
        and df[c].dropna().map(lambda v: float(v).is_integer()).all()
    }
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isnan(float(v)):
                cells.append("")
            elif c in whole:
                cells.append(f"{int(v):,}" if c not in ("seed",) else str(int(v)))
            elif isinstance(v, float):
                cells.append(format_value(v))
            else:
                cells.append(str(v))
        rows.append(cells)
    return md_table([str(c) for c in df.columns], rows)


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _demote(md: str) -> str:
    """Shift ``###`` captions down to ``####`` inside a report section."""
    return re.sub(r"^### ", "#### ", md, flags=re.M)


def _versus(r: pd.Series, model: str, base: str, higher: bool, alpha: float) -> str:
    """``"<model> <mean> beats it | ties | is worse (q = …)"`` against the best baseline ``base``.

    The q of the pair is read when the row's tests are against one of the two (the row's
    reference); otherwise the verdict is on the means."""
    v, vb = float(r[model]), float(r[base])
    ref = r.get("reference_model")
    ref = str(ref) if pd.notna(ref) and str(ref) else str(r["best_model"]).split(";")[0]
    q = r.get(f"{base}_q") if ref == model else r.get(f"{model}_q") if ref == base else math.nan
    better = v > vb if higher else v < vb
    if pd.notna(q):
        verdict = "ties" if q >= alpha else "beats it" if better else "is worse"
        return f"{model} {format_value(v)} {verdict} (q = {float(q):.2g})"
    verdict = "beats it" if better else "ties" if v == vb else "is worse"
    return f"{model} {format_value(v)} {verdict} (no test)"


def winners(table_csv: Path, baselines: Sequence[str] = BASELINES, alpha: float = 0.05) -> str:
    """A sentence per metric row: the best baseline, and each trained model against it.

    Parameters
    ----------
    table_csv
        A comparison table's CSV (``table_all.csv``; :meth:`ComparisonTable.to_frame`).
    baselines
        The names that are baselines; every other model of the table is a trained model.
    alpha
        Significance level of the q-values.

    Returns
    -------
    str
        Markdown bullets, ``""`` without the file. Per row: which baseline has the best mean
        (``"baseline B wins"`` when it is the row's best mean, else ``"model M wins"``) and,
        for each trained model (best first), whether it beats that baseline, ties or is worse:
        by the q of their test where the table has one (tests are against the row's
        reference, by default its best mean; q ≥ ``alpha`` is a tie), otherwise by the means
        (``no test``).
    """
    if not table_csv.is_file():
        return ""
    t = pd.read_csv(table_csv)
    models = [c[:-5] for c in t.columns if c.endswith("_mark")]
    lines = []
    for _, r in t.iterrows():
        higher = r["direction"] == "↑"
        mean = {m: float(r[m]) for m in models if pd.notna(r[m])}
        order = sorted(mean, key=lambda m: -mean[m] if higher else mean[m])
        bases = [m for m in order if m in baselines]
        trained = [m for m in order if m not in baselines]
        head = f"- **{r['metric_label']} {r['direction']}**: "
        if not bases or not trained:
            best = f"{order[0]} ({format_value(mean[order[0]])})" if order else "no values"
            lines.append(head + f"best mean {best}; no {'baseline' if not bases else 'trained model'} to compare with.")
            continue
        b = bases[0]
        versus = ", ".join(_versus(r, m, b, higher, alpha) for m in trained)
        if order[0] == b or mean[order[0]] == mean[b]:
            lines.append(head + f"baseline {b} wins ({format_value(mean[b])}); {versus}.")
        else:
            lines.append(head + f"model {order[0]} wins; best baseline {b} ({format_value(mean[b])}): {versus}.")
    return "\n".join(lines)


def write_report(out_dir: str | Path, title: str = "ptrag cross-cell-type experiment") -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for an experiment folder.

    Parameters
    ----------
    out_dir
        Folder of ``ptrag experiment cross-celltype``.
    title
        Report title.

    Returns
    -------
    tuple of Path
        The Markdown and the HTML report.
    """
    import markdown

    from ptrag import __version__

    out = Path(out_dir)
    man = _read_manifest(out)
    parts = [
        f"# {title}\n",
        f"Written {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by ptrag {__version__} "
        "from the files in this folder.\n",
    ]
    parts += _commands_section(out)
    parts += _setup_section(out, man)
    parts += _table1_section(out, man)
    parts += _per_target_section(out, man)
    parts += _retrieval_section(out)
    parts += _training_section(out, man)
    parts += _sweeps_section(out)
    parts += _cost_section(out, man)

    md = "\n".join(parts)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, _html(markdown.markdown(md, extensions=["tables", "fenced_code"]), title))
    return md_path, html_path


def _read_manifest(out: Path) -> dict:
    """The experiment's ``experiment.json``; a :class:`PtragError` when the folder has none."""
    manifest_path = out / "experiment.json"
    if not manifest_path.is_file():
        raise PtragError(
            f"{out} holds no experiment.json: is it the --out folder of `ptrag experiment cross-celltype`?"
        )
    return json.loads(manifest_path.read_text())


def _commands_section(out: Path) -> list[str]:
    """The report's commands section: the command lines recorded in ``commands.txt``."""
    cmds = _read(out / COMMANDS_FILE).strip()
    return [
        "## Commands\n\nThe commands that made this folder (rerunning them resumes, redoing nothing finished):\n",
        "```bash\n" + (cmds or "# (run through the Python API)") + "\n```\n",
    ]


def _setup_section(out: Path, man: dict) -> list[str]:
    """The report's setup section: data, targets, models, splits and validation energies."""
    parts = ["## Setup\n"]
    parts.append(
        f"- Data: `{man['data']}` ({man['n_cells']:,} cells, {man['n_genes']:,} genes, cell types "
        f"{', '.join(man['cell_types'])}).\n"
        f"- Targets (held out in turn): {', '.join(man['targets'])}; few-shot fraction {man['fewshot']}; "
        f"seeds {', '.join(map(str, man['seeds']))}.\n"
        f"- Models: {', '.join(man['models'])}; preset `{man['preset']}`; options {man['options']}.\n"
        f"- Gene tables: {', '.join(f'`{g}`' for g in man['gene_tables']) or 'none'}.\n"
    )
    splits = out / "splits.csv"
    if splits.is_file():
        parts.append("Perturbations per split of the target cell type:\n\n" + _table(pd.read_csv(splits)) + "\n")
    val = out / "validation.csv"
    if val.is_file():
        parts.append(
            "Best validation energy (the checkpoint that predicts; `control` = predicting the control "
            "cells):\n\n" + _table(pd.read_csv(val)) + "\n"
        )
    return parts


def _table1_section(out: Path, man: dict) -> list[str]:
    """The report's Table 1 (all target cell types), its verdicts against the baselines, the
    baseline figures, the control-referenced table and the seed-to-seed table."""
    tables = out / "tables"
    parts = ["## Table 1: all target cell types\n"]
    parts.append(
        f"Test perturbations of every target cell type{' and every seed, pooled' if len(man['seeds']) > 1 else ''} "
        "(one sample per (seed, cell type, perturbation)); the control baseline predicts the control cells.\n\n"
    )
    parts.append(_demote(_read(tables / "table_all.md")) + "\n")
    parts += _baselines_subsection(tables)
    vs = tables / "vs_control" / "table_all.md"
    if vs.is_file():
        parts.append("\nThe same, each model tested against the control baseline:\n\n" + _demote(_read(vs)) + "\n")
    seeds_md = tables / "seeds.md"
    if seeds_md.is_file():
        parts.append(
            "### Seed to seed\n\nMean over seeds ± standard deviation of each seed's mean:\n\n" + _read(seeds_md) + "\n"
        )
    return parts


def _baselines_subsection(tables: Path) -> list[str]:
    """Table 1's comparison with the baselines: the verdicts of :func:`winners`, the table tested
    against the best baseline, and the baseline figures."""
    parts = []
    vsb = tables / "vs_baseline"
    win = winners(vsb / "table_all.csv" if (vsb / "table_all.csv").is_file() else tables / "table_all.csv")
    if win:
        parts.append(
            "### Against the baselines\n\nDoes any model beat the simple baselines? Per metric, the best "
            f"baseline (best mean of {', '.join(BASELINES)}) and each trained model against it: `beats it` / "
            "`ties` / `is worse` by the paired Wilcoxon test against that baseline (BH-adjusted over the "
            "table; q ≥ 0.05 is a tie), or by the means where no test applies (`no test`):\n\n" + win + "\n"
        )
    if (vsb / "table_all.md").is_file():
        parts.append(
            "Table 1 with each model tested against the row's best baseline:\n\n"
            + _demote(_read(vsb / "table_all.md"))
            + "\n"
        )
    for png, alt in BASELINE_FIGURES.items():
        if (tables / png).is_file():
            parts.append(f"![{alt}](tables/{png})\n")
    return parts


def _per_target_section(out: Path, man: dict) -> list[str]:
    """The report's per-target tables (Tables 3–6), for the targets that have one."""
    tables = out / "tables"
    per_target = [t for t in man["targets"] if (tables / f"table_{_safe(t)}.md").is_file()]
    if not per_target:
        return []
    return ["## Tables 3–6: per target cell type\n"] + [
        _demote(_read(tables / f"table_{_safe(t)}.md")) + "\n" for t in per_target
    ]


def _retrieval_section(out: Path) -> list[str]:
    """The report's retrieval analysis (PT-RAG): ``retrieval/summary.md`` and its heatmaps."""
    rdir = out / "retrieval"
    if not rdir.is_dir():
        return []
    parts = ["## Retrieval analysis (PT-RAG)\n", _read(rdir / "summary.md") + "\n"]
    if (rdir / "jaccard.png").is_file():
        parts.append("![Jaccard index of the selected contexts between cell types](retrieval/jaccard.png)\n")
    if (rdir / "jaccard_truth.png").is_file():
        parts.append("![Jaccard index of the ground truth's informative contexts](retrieval/jaccard_truth.png)\n")
    return parts


def _training_section(out: Path, man: dict) -> list[str]:
    """The report's training curves (``training.png``), when the folder has them."""
    if not (out / "training.png").is_file():
        return []
    return [
        "## Training curves\n",
        f"Seed {man['seeds'][0]}: validation energy of every model against the predict-the-control "
        "energy (dashed), and the number of contexts a PT-RAG cell selects over training (training "
        "batches: Gumbel samples, smoothed; validation: the expected selection that predicts). A "
        "collapse of the selection shows as the curve falling to its floor of 1.\n",
        "![Training curves](training.png)\n",
    ]


def _sweeps_section(out: Path) -> list[str]:
    """The report's sensitivity sweeps: each ``sweeps/*/sweep.md`` with its plot."""
    sweeps = sorted((out / "sweeps").glob("*/sweep.md")) if (out / "sweeps").is_dir() else []
    if not sweeps:
        return []
    parts = ["## Sensitivity sweeps\n", _read(out / "sweeps" / "README.md") + "\n"]
    for s in sweeps:
        parts.append(_demote(_read(s)) + "\n")
        png = s.with_suffix(".png")
        if png.is_file():
            parts.append(f"![{s.parent.name} sweep]({png.relative_to(out).as_posix()})\n")
    return parts


#: Columns of ``cost.csv`` shown in the report, in order.
_COST_COLUMNS = [
    "name",
    "parameters",
    "batch_size",
    "cell_set_size",
    "n_genes",
    "topk",
    "gflop_per_batch",
    "mflop_per_cell",
    "ms_per_step",
    "time_vs_first",
]


def _cost_section(out: Path, man: dict) -> list[str]:
    """The report's cost section: parameters, FLOPs and step times of ``cost.csv``."""
    cost = out / "cost.csv"
    if not cost.is_file():
        return []
    c = pd.read_csv(cost)
    parts = [
        "## Cost\n\nParameters, FLOPs (forward + backward, `torch.utils.flop_counter`) per batch and per "
        "cell, and the measured training-step time on this machine (runs of the first seed and "
        "target, timed interleaved; `time_vs_first` = step time / the first model's):\n\n"
        + _table(c[[k for k in _COST_COLUMNS if k in c]])
        + "\n"
    ]
    if "machine" in man:
        parts.append(f"Machine: {man['machine']}.\n")
    return parts


def _html(body: str, title: str) -> str:
    """A standalone HTML page around the report's body (the Markdown rendered as HTML)."""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _safe(name: str) -> str:
    from ptrag.eval.table_format import safe_name

    return safe_name(name)
