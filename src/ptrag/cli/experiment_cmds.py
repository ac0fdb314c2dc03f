"""``ptrag experiment ...``: the paper's experiments as one command each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markdown import Markdown

from ptrag.cli.options import BatchCol, CellTypeCol, Control, Layer, ObsmKey, PertCol, column_spec

console = Console()

experiment_app = typer.Typer(help="The paper's experiments, one command each (resumable).", no_args_is_help=True)


def _csv(text: Optional[str]) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def cross_celltype_cmd(
    data: Annotated[Path, typer.Option("--data", help="Perturb-seq AnnData file (.h5ad).")],
    out: Annotated[Path, typer.Option("--out", help="Experiment folder (a second call resumes it).")],
    genes: Annotated[Optional[list[Path]], typer.Option("--genes", help="Gene table(s) for the embedding models; repeat to join several.")] = None,
    models: Annotated[str, typer.Option("--models", help="Comma-separated models.")] = "state,state_genept,vanilla_rag,pt_rag",
    cell_types: Annotated[Optional[str], typer.Option("--cell-types", help="Comma-separated target cell types. [default: all]", show_default=False)] = None,
    fewshot: Annotated[float, typer.Option("--fewshot", help="Fraction of the target's perturbations that train.")] = 0.3,
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated seeds.")] = "0",
    preset: Annotated[str, typer.Option("--preset", help="cpu or paper.")] = "cpu",
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Training steps per run. [default: the preset's]", show_default=False)] = None,
    topk: Annotated[Optional[int], typer.Option("--topk", help="Retrieved candidates K. [default: the preset's]", show_default=False)] = None,
    sparsity_weight: Annotated[Optional[float], typer.Option("--sparsity-weight", help="lambda_sparse of pt_rag. [default: 0.1]", show_default=False)] = None,
    pert_col: PertCol = "gene",
    cell_type_col: CellTypeCol = "cell_type",
    batch_col: BatchCol = "gem_group",
    control: Control = "non-targeting",
    layer: Layer = None,
    obsm_key: ObsmKey = None,
) -> None:
    """Few-shot cross-cell-type protocol: for each seed and target cell type, split, train every
    model, predict its test perturbations, evaluate against the control baseline, and build the
    paper's tables (overall and per target)."""
    from ptrag.errors import PtragError
    from ptrag.experiments.cross_celltype import cross_celltype

    try:
        seed_list = [int(s) for s in _csv(seeds)]
    except ValueError:
        raise PtragError(f"--seeds {seeds!r}: give comma-separated integers, e.g. 1,2,3.") from None
    overrides = {k: v for k, v in (("max_steps", max_steps), ("topk", topk), ("sparsity_weight", sparsity_weight)) if v is not None}
    if max_steps is not None:
        overrides["val_every"] = max(1, max_steps // 6)
    spec = column_spec(pert_col, cell_type_col, batch_col, control, layer, obsm_key)
    result = cross_celltype(data, out, list(genes or []), _csv(models), _csv(cell_types) or None, fewshot, seed_list,
                            preset, overrides, spec)
    for seed, tables in result.tables.items():
        console.print(Markdown((tables / "table_all.md").read_text()))
        console.print(f"seed {seed}: tables (overall and per target) in {tables}")


def register(app: typer.Typer) -> None:
    """Add the ``experiment`` command group."""
    experiment_app.command("cross-celltype")(cross_celltype_cmd)
    app.add_typer(experiment_app, name="experiment")
