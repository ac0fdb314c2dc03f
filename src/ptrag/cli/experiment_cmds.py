"""``ptrag experiment ...``: the paper's experiments as one command each."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from ptrag.cli.options import with_data_columns
from ptrag.errors import check_output

if TYPE_CHECKING:
    from ptrag.data.io import ColumnSpec

console = Console()

experiment_app = typer.Typer(help="The paper's experiments, one command each (resumable).", no_args_is_help=True)

Genes = Annotated[
    list[Path] | None, typer.Option("--genes", help="Gene table(s) for the embedding models; repeat to join several.")
]
Preset = Annotated[str, typer.Option("--preset", help="cpu or paper.")]
MaxSteps = Annotated[
    int | None, typer.Option("--max-steps", help="Training steps per run. [default: the preset's]", show_default=False)
]


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    from ptrag.errors import PtragError

    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise PtragError(f"--seeds {text!r}: give comma-separated integers, e.g. 1,2,3.") from None


def _overrides(max_steps: int | None, **options) -> dict:
    from ptrag.experiments.cross_celltype import step_overrides

    return {**step_overrides(max_steps), **{k: v for k, v in options.items() if v is not None}}


def _command() -> list[str]:
    from ptrag.cli import current_command

    return list(current_command)


#: The metrics of the printed summary of Table 1 (the full table is in the report).
SUMMARY_METRICS = ("pearson_delta", "mse", "energy", "discrimination_score_l1", "overlap_at_N", "vcc_score")


def summary_table(table_csv: Path):
    """A compact Table 1 for a terminal: one row per model or baseline, a few key metrics, the
    best mean of each column in bold."""
    import pandas as pd
    from rich.table import Table

    from ptrag.eval.tables import format_value
    from ptrag.train.baselines import BASELINES

    t = pd.read_csv(table_csv).set_index("metric")
    cols = [m for m in SUMMARY_METRICS if m in t.index]
    models = [c[:-5] for c in t.columns if c.endswith("_mark")]
    models = [m for m in models if m not in BASELINES] + [m for m in models if m in BASELINES]
    table = Table(
        title="Table 1, key metrics (models, then baselines; all metrics with significance marks: tables/table_all.md)"
    )
    table.add_column("model", no_wrap=True)
    for c in cols:
        table.add_column(
            f"{t.loc[c, 'metric_label'].replace(' (all genes)', '')} {t.loc[c, 'direction']}", justify="right"
        )
    for i, m in enumerate(models):
        if i and m in BASELINES and models[i - 1] not in BASELINES:
            table.add_section()
        cells = []
        for c in cols:
            txt = format_value(float(t.loc[c, m]))
            cells.append(f"[bold]{txt}[/bold]" if m in str(t.loc[c, "best_model"]).split(";") else txt)
        table.add_row(m, *cells)
    return table


def show_result(result) -> None:
    """Print a summary of Table 1 of an experiment and where its report is."""
    if result.pooled is not None:
        if console.width >= 150:  # wide enough for every metric row and column
            console.print(Markdown((result.pooled / "table_all.md").read_text()))
        console.print(summary_table(result.pooled / "table_all.csv"))
    summary = result.out_dir / "retrieval" / "summary.md"
    if summary.is_file():
        console.print(Markdown(summary.read_text().split("\n\n")[0]))
    if result.report is not None:
        console.print(
            f"Report: {result.report} and {result.report.with_suffix('.html')} "
            f"({', '.join(report_parts(result.out_dir))}); everything else in {result.out_dir}/."
        )


def report_parts(out_dir: Path) -> list[str]:
    """What an experiment folder's report shows, for the closing line: only what was produced."""
    optional = {
        "heatmap": out_dir / "retrieval" / "jaccard.png",
        "sweeps": out_dir / "sweeps",
        "cost": out_dir / "cost.csv",
    }
    return ["tables", *(name for name, path in optional.items() if path.exists()), "commands"]


ExpOut = Annotated[Path, typer.Option("--out", help="Experiment folder (a second call resumes it).")]
ExpData = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Perturb-seq AnnData file (.h5ad). [default: the embedded synthetic benchmark, simulated into OUT/data]",
        show_default=False,
    ),
]
Models = Annotated[str, typer.Option("--models", help="Comma-separated models.")]
CellTypes = Annotated[
    str | None,
    typer.Option("--cell-types", help="Comma-separated target cell types. [default: all]", show_default=False),
]
Fewshot = Annotated[float, typer.Option("--fewshot", help="Fraction of the target's perturbations that train.")]
Seeds = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")]
TopK = Annotated[
    int | None, typer.Option("--topk", help="Retrieved candidates K. [default: the preset's]", show_default=False)
]
SparsityWeight = Annotated[
    float | None, typer.Option("--sparsity-weight", help="lambda_sparse of pt_rag. [default: 0.1]", show_default=False)
]
ResidualBase = Annotated[
    str | None,
    typer.Option(
        "--residual-base",
        help="none | context_mean | auto: what every model's predicted change is added to "
        "(auto: chosen per run; see ptrag train --help). [default: auto; paper preset none]",
        show_default=False,
    ),
]
Calibration = Annotated[
    str | None,
    typer.Option(
        "--calibration",
        help="none | validation | fallback | auto: every model's calibration on the validation sets "
        "(see ptrag train --help). [default: auto; paper preset none]",
        show_default=False,
    ),
]
Sweeps = Annotated[
    bool,
    typer.Option(
        "--sweeps/--no-sweeps",
        help="Also run the paper's sweeps (pt_rag lambda x K, vanilla_rag K) on the first seed's split of the first "
        "target.",
    ),
]
Cost = Annotated[bool, typer.Option("--cost/--no-cost", help="Measure the cost table (parameters, FLOPs, step time).")]
GroundTruth = Annotated[
    Path | None,
    typer.Option(
        "--ground-truth",
        help="Ground-truth context pairs (ground_truth.csv of `ptrag simulate`) for retrieval precision/recall.",
    ),
]
ALL_MODELS = "state,state_genept,vanilla_rag,pt_rag,pt_rag_response"


@with_data_columns
def cross_celltype_cmd(
    spec: ColumnSpec,
    out: ExpOut,
    data: ExpData = None,
    genes: Genes = None,
    models: Models = ALL_MODELS,
    cell_types: CellTypes = None,
    fewshot: Fewshot = 0.3,
    seeds: Seeds = "0",
    preset: Preset = "cpu",
    max_steps: MaxSteps = None,
    topk: TopK = None,
    sparsity_weight: SparsityWeight = None,
    residual_base: ResidualBase = None,
    calibration: Calibration = None,
    sweeps: Sweeps = False,
    cost: Cost = True,
    ground_truth: GroundTruth = None,
) -> None:
    """Few-shot cross-cell-type protocol: for each seed and target cell type, split, train every
    model, predict its test perturbations, evaluate against the control baseline; then Table 1
    over all targets and seeds, per-target tables, the retrieval analysis, the cost table,
    optionally the sweeps, and a Markdown + HTML report."""
    check_output(out, "folder")
    from ptrag.experiments.cross_celltype import cross_celltype

    options = dict(topk=topk, sparsity_weight=sparsity_weight, residual_base=residual_base, calibration=calibration)
    result = cross_celltype(
        data,
        out,
        list(genes or []),
        _csv(models),
        _csv(cell_types) or None,
        fewshot,
        _seeds(seeds),
        preset,
        _overrides(max_steps, **options),
        spec,
        sweeps=sweeps,
        cost=cost,
        ground_truth=ground_truth,
        command=_command(),
    )
    show_result(result)


Grid = Annotated[
    list[str] | None,
    typer.Option(
        "--grid",
        help="option=v1,v2 (e.g. sparsity_weight=0,0.1,1); repeat for a product grid. "
        "[default: the paper's grid of the model]",
        show_default=False,
    ),
]
SweepGroundTruth = Annotated[
    Path | None,
    typer.Option(
        "--ground-truth",
        help="Ground-truth context pairs (ground_truth.csv of `ptrag simulate`): "
        "adds retrieval precision/recall of Stage 1 and of PT-RAG's selection.",
    ),
]


def _grid(grid: list[str] | None, model: str) -> dict:
    """The sweep's grid: the given ``--grid`` options, else the paper's grid of ``model``."""
    from ptrag.errors import PtragError
    from ptrag.experiments.sweep import PAPER_SWEEPS, parse_grid

    if grid:
        return parse_grid(grid)
    if model in PAPER_SWEEPS:
        return PAPER_SWEEPS[model]
    raise PtragError(
        f"the paper sweeps only pt_rag, pt_rag_response and vanilla_rag: give --grid option=v1,v2 for {model}."
    )


@with_data_columns
def sweep_cmd(
    spec: ColumnSpec,
    data: Annotated[Path, typer.Option("--data", help="Perturb-seq AnnData file (.h5ad).")],
    split: Annotated[Path, typer.Option("--split", help="Split TOML (its test perturbations are evaluated).")],
    model: Annotated[str, typer.Option("--model", help="Model to sweep.")],
    out: Annotated[Path, typer.Option("--out", help="Sweep folder (a second call resumes it).")],
    grid: Grid = None,
    genes: Genes = None,
    preset: Preset = "cpu",
    max_steps: MaxSteps = None,
    seed: Annotated[int, typer.Option("--seed", help="Training seed.")] = 0,
    ground_truth: SweepGroundTruth = None,
) -> None:
    """Sensitivity sweep: train one model at every point of a grid on one split, predict and
    evaluate its test perturbations beside the control baseline; table (sweep.csv/.md) and line
    plots (sweep.png)."""
    check_output(out, "folder")
    from ptrag.experiments.report import record_command
    from ptrag.experiments.sweep import sweep

    g = _grid(grid, model)
    table = sweep(
        data,
        split,
        out,
        model,
        g,
        list(genes or []),
        preset,
        _overrides(max_steps),
        seed,
        spec,
        ground_truth=ground_truth,
    )
    record_command(out, _command())
    console.print(Markdown((out / "sweep.md").read_text()))
    console.print(f"{len(table) - 1} runs; table and plot in {out} (sweep.csv, sweep.md, sweep.png).")


def report_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder of `ptrag experiment cross-celltype`.")],
) -> None:
    """Rebuild report.md and report.html of an experiment folder from its files."""
    from ptrag.experiments.report import write_report

    md, html = write_report(out)
    console.print(f"Report: {md} and {html}.")


def register(app: typer.Typer) -> None:
    """Add the ``experiment`` command group."""
    experiment_app.command("cross-celltype")(cross_celltype_cmd)
    experiment_app.command("sweep")(sweep_cmd)
    experiment_app.command("report")(report_cmd)
    app.add_typer(experiment_app, name="experiment")
