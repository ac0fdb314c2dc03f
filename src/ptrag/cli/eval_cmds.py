"""``ptrag evaluate`` and ``ptrag compare``: score predictions and tabulate model comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from ptrag.cli.options import DATA_FLAGS, Backed, with_data_columns
from ptrag.errors import check_output

if TYPE_CHECKING:
    from ptrag.data.io import ColumnSpec

console = Console()

Preds = Annotated[
    list[Path],
    typer.Option("--pred", help="Prediction file (.h5ad from ptrag predict); repeat for several models."),
]
Real = Annotated[
    Path, typer.Option("--real", help="Observed Perturb-seq data (.h5ad) the predictions are scored against.")
]
EvalRun = Annotated[Path, typer.Option("--run", help="Run folder (genes.txt, pca.npz, config.toml).")]
EvalOut = Annotated[Path, typer.Option("--out", help="Output folder for metrics.parquet/csv and summary.csv/md.")]
Mode = Annotated[
    str,
    typer.Option(
        "--mode", help="Metric definitions: ptrag (stated in docs/metrics.md) or gge (gge-eval 1.0.1 compatibility)."
    ),
]
DegPval = Annotated[float, typer.Option("--deg-pval", help="ptrag mode: DEG when the Welch p-value is below this.")]
DegCorrection = Annotated[
    str,
    typer.Option(
        "--deg-correction", help="ptrag mode: none (raw p, as in the paper) or bh (Benjamini–Hochberg per group)."
    ),
]
DegMinLfc = Annotated[
    float, typer.Option("--deg-min-lfc", help="ptrag mode: also require |mean change| >= this (log-normalised units).")
]
CellEval = Annotated[
    bool,
    typer.Option(
        "--cell-eval/--no-cell-eval",
        help="ptrag mode: also compute cell-eval's metrics (PDS, DE overlap, ...; "
        "they hold each cell type's control cells in memory).",
    ),
]
GgeDegLfc = Annotated[
    float, typer.Option("--gge-deg-lfc", help="gge mode: minimum |log2 fold change| of a DEG (authors' script: 0.05).")
]
GgeDegPval = Annotated[
    float, typer.Option("--gge-deg-pval", help="gge mode: maximum p-value of a DEG (authors' script: 0.1).")
]
ModelNames = Annotated[
    list[str] | None,
    typer.Option(
        "--name", help="Model name of each --pred file, in order (default: the file's uns['ptrag']['model'])."
    ),
]


def _eval_columns(run_data: dict, given: dict) -> tuple[ColumnSpec, list[str]]:
    """The data columns of an evaluation: the run's ``[data]`` table, overridden by the data flags
    ``given``; and the columns left at ptrag's default (optional, as they were for training)."""
    from ptrag.data.io import ColumnSpec

    base = ColumnSpec.from_dict(run_data) if run_data else ColumnSpec()
    fields = {f: getattr(base, f) for f in ColumnSpec.__dataclass_fields__}
    defaults = []
    for name in DATA_FLAGS:
        if name in given:
            value = given[name]
            fields[name] = (value or None) if name in ("cell_type_col", "batch_col") else value
        elif name not in run_data or fields[name] == getattr(ColumnSpec(), name):
            # a run's [data] table lists every column; one left at ptrag's default stays
            # optional here as it was for training (e.g. no gem_group column in the file)
            defaults.append(name)
    return ColumnSpec(**fields), defaults


@with_data_columns(overrides=True)
def evaluate_cmd(
    pred: Preds,
    real: Real,
    run: EvalRun,
    out: EvalOut,
    mode: Mode = "ptrag",
    spec: dict | None = None,  # the data flags given (@with_data_columns)
    backed: Backed = False,
    deg_pval: DegPval = 0.05,
    deg_correction: DegCorrection = "none",
    deg_min_lfc: DegMinLfc = 0.0,
    cell_eval: CellEval = True,
    gge_deg_lfc: GgeDegLfc = 0.05,
    gge_deg_pval: GgeDegPval = 0.1,
    model_names: ModelNames = None,
) -> None:
    """Score prediction files against the observed data, per (cell type, perturbation).

    The data flags default to the "data" table of RUN_DIR/config.toml when present; flags
    given on the command line override it.
    """
    check_output(out, "folder")
    from ptrag.errors import check_choice
    from ptrag.eval.evaluate import evaluate, load_run
    from ptrag.eval.gge import GGEOptions
    from ptrag.eval.metrics import MetricOptions
    from ptrag.eval.tables import summary_markdown, summary_table

    check_choice("--mode", mode, ("ptrag", "gge"))
    columns, defaults = _eval_columns(load_run(run).data, spec or {})
    options = MetricOptions(
        deg_pval=deg_pval, deg_correction=deg_correction, deg_min_lfc=deg_min_lfc, cell_eval=cell_eval
    )
    gge_options = GGEOptions(deg_lfc=gge_deg_lfc, deg_pval=gge_deg_pval)
    metrics = evaluate(pred, real, run, out, mode, columns, defaults, backed, options, gge_options, model_names)
    console.print(Markdown(summary_markdown(summary_table(metrics, mode), mode)))
    console.print(f"metrics of {len(metrics)} (model, cell type, perturbation) rows written to {out}")


def compare_cmd(
    eval_dirs: Annotated[
        list[Path], typer.Argument(help="Output folders of ptrag evaluate (one or more models each).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the tables (Markdown, LaTeX, CSV) and tests.csv.")],
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference", help="Mark significance against this model; default: against each metric's best model."
        ),
    ] = None,
    test: Annotated[
        str, typer.Option("--test", help="Test behind the marks: mannwhitney (the paper's) or wilcoxon (paired).")
    ] = "mannwhitney",
) -> None:
    """Compare models: the paper's Table 1/2 layout overall and per cell type (Tables 3-6)."""
    check_output(out, "folder")
    from ptrag.eval.tables import compare_evaluations

    tables = compare_evaluations(eval_dirs, out, reference=reference, test=test)
    console.print(Markdown(tables["all"].to_markdown()))
    console.print(f"{len(tables)} tables (overall + per cell type) and tests.csv written to {out}")


def retrieval_cmd(
    log: Annotated[
        list[Path],
        typer.Option("--log", help="Retrieval log(s) of PT-RAG predictions (<prediction>.retrieval.csv); repeat."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for top_contexts.csv, jaccard.csv, jaccard_queries.csv and jaccard.png."),
    ],
    top: Annotated[int, typer.Option("--top", help="Contexts per (cell type, query) in top_contexts.csv.")] = 5,
    min_fraction: Annotated[
        float,
        typer.Option(
            "--min-fraction",
            help="A context is selected when at least this fraction of the query's cells selected it (without --top).",
        ),
    ] = 0.5,
    jaccard_top: Annotated[
        int | None,
        typer.Option(
            "--jaccard-top",
            help="Jaccard of the N contexts most often selected per query and cell type "
            "(the paper's rule: 10 of K = 32) instead of --min-fraction.",
        ),
    ] = None,
) -> None:
    """PT-RAG retrieval analysis: most selected contexts per query and cell type, and the
    Jaccard overlap of the selections between cell types (table and heatmap)."""
    check_output(out, "folder")
    from ptrag.errors import PtragError, atomic_write_csv
    from ptrag.eval.retrieval import jaccard_matrix, plot_jaccard, read_retrieval_logs, top_contexts

    if top < 1:
        raise PtragError(f"--top must be at least 1 (got {top}).")
    rlog = read_retrieval_logs(log)
    tops = top_contexts(rlog, top)
    jac, cnt = jaccard_matrix(rlog, min_fraction, jaccard_top)
    atomic_write_csv(out / "top_contexts.csv", tops)
    atomic_write_csv(out / "jaccard.csv", jac, index=True)
    atomic_write_csv(out / "jaccard_queries.csv", cnt, index=True)
    plot_jaccard(jac, out / "jaccard.png")
    console.print(jac.round(3).to_string())
    console.print(f"top contexts, Jaccard matrix (and its query counts) and heatmap written to {out}")


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` and ``compare``."""
    app.command("evaluate")(evaluate_cmd)
    app.command("compare")(compare_cmd)
    app.command("retrieval")(retrieval_cmd)
