"""``ptrag train`` and ``ptrag predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ptrag.cli.options import Backed, DataPath, GeneAliases, with_data_columns
from ptrag.cli.train_options import (
    TRAIN_OPTION_NAMES,
    ConfigFile,
    Resume,
    RunOut,
    SplitFile,
    TrainGenes,
    with_train_options,
)
from ptrag.errors import PtragError, check_output

console = Console()


@with_train_options
@with_data_columns(overrides=True)
def train_cmd(
    data: DataPath,
    out: RunOut,
    genes: TrainGenes = None,
    gene_aliases: GeneAliases = None,
    split: SplitFile = None,
    config: ConfigFile = None,
    options: dict | None = None,  # the training options given (@with_train_options)
    spec: dict | None = None,  # the data flags given (@with_data_columns)
    backed: Backed = False,
    resume: Resume = False,
) -> None:
    """Train STATE, STATE+GenePT, Vanilla RAG, PT-RAG or PT-RAG over responses; write a run folder."""
    check_output(out, "folder")
    from ptrag.train.config import config_file_values, read_run_config, resolve_config
    from ptrag.train.fit import train
    from ptrag.train.resume import resume_config

    over = {**options, **({"data": spec} if spec else {})}
    if resume and (out / "config.toml").is_file():
        file_keys = config_file_values(config) if config is not None else {}
        # kept as it was: on --resume a --config file's value of an option with a flag is not applied
        cfg = resume_config(read_run_config(out), {**file_keys, **dict.fromkeys(TRAIN_OPTION_NAMES), **over}, out)
    else:
        cfg = resolve_config(over, config)
    result = train(cfg, data, out, split, list(genes or []), backed=backed, resume=resume, gene_aliases=gene_aliases)
    from ptrag.train.distributed import is_rank_zero

    if not is_rank_zero(result):  # the other ranks of a DDP run: rank 0 prints the summary
        return
    console.print(
        f"[bold]{cfg.model}[/]: {result.n_parameters:,} parameters; validation energy "
        f"{_fmt(result.val_energy)} (predict-the-control baseline {_fmt(result.val_energy_control)})"
        + (
            ""
            if result.val_selected_contexts is None
            else f"; contexts a validation cell selects: {result.val_selected_contexts:.2f} of {cfg.topk}"
        )
        + f". Run folder: {out}"
    )


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


RunDir = Annotated[Path, typer.Option("--run", help="Run folder written by `ptrag train`.")]
PredictOut = Annotated[
    Path,
    typer.Option("--out", help="Prediction file (.h5ad); a .retrieval.csv is written beside it for RAG models."),
]
PredictSplit = Annotated[str, typer.Option("--split", help="Split whose groups to predict: train | val | test.")]
Perturbations = Annotated[
    str | None,
    typer.Option(
        "--perturbations",
        help="Comma-separated perturbations to predict instead of a split (unseen ones need --genes).",
    ),
]
NCells = Annotated[
    int | None,
    typer.Option("--n-cells", help="Cells per new perturbation. [default: the run's set size]", show_default=False),
]
Baseline = Annotated[
    str | None,
    typer.Option(
        "--baseline",
        help="Write a baseline instead of the model's prediction, on the same cell sets: "
        "control | perturb_mean | context_mean | additive | linear "
        "(each set = relu(its matched control cells + the baseline's mean change, from training groups only); "
        "docs/metrics.md).",
    ),
]
ControlBaseline = Annotated[
    bool,
    typer.Option("--control-baseline", help="The same as --baseline control (each set's matched control cells)."),
]


def _predict_baseline(baseline: str | None, control_baseline: bool, out: Path) -> str | None:
    """The baseline to write (``None``: the model's prediction), checking the options."""
    from ptrag.errors import check_choice
    from ptrag.train.baselines import BASELINES

    if baseline is not None:
        check_choice("--baseline", baseline, BASELINES)
    if control_baseline and baseline not in (None, "control"):
        raise PtragError(
            f"--control-baseline means --baseline control; it contradicts --baseline {baseline}: give one."
        )
    if out.suffix != ".h5ad":
        raise PtragError(f"--out {out}: prediction files are AnnData; give a path ending in .h5ad.")
    return "control" if control_baseline else baseline


def predict_cmd(
    run: RunDir,
    data: Annotated[Path, typer.Option("--data", help="h5ad file with the control cells (the training file).")],
    out: PredictOut,
    split: PredictSplit = "test",
    perturbations: Perturbations = None,
    cell_type: Annotated[str | None, typer.Option("--cell-type", help="Cell type for --perturbations.")] = None,
    genes: Annotated[
        list[Path] | None, typer.Option("--genes", help="Gene table(s) with vectors of new perturbations.")
    ] = None,
    n_cells: NCells = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best | last | a checkpoint path.")] = "best",
    baseline: Baseline = None,
    control_baseline: ControlBaseline = False,
    backed: Backed = False,
) -> None:
    """Predict held-out perturbations (or new ones from their gene vectors) from a run."""
    check_output(out, "file")
    from ptrag.train.predict import predict, write_prediction

    which = _predict_baseline(baseline, control_baseline, out)
    perts = [p.strip() for p in perturbations.split(",") if p.strip()] if perturbations else None
    pred = predict(
        run, data, split, perts, cell_type, list(genes or []), n_cells, checkpoint, backed=backed, baseline=which
    )
    paths = write_prediction(pred, out)
    n = int((~pred.adata.obs["is_control"]).sum())
    console.print(
        f"predicted {n} cells of "
        f"{pred.adata.obs.loc[~pred.adata.obs['is_control'], 'perturbation'].nunique()} perturbations -> "
        + ", ".join(str(p) for p in paths.values())
    )


def calibrate_cmd(
    run: RunDir,
    data: Annotated[Path, typer.Option("--data", help="The run's h5ad file.")],
    genes: Annotated[list[Path] | None, typer.Option("--genes", help="The run's gene table(s).")] = None,
) -> None:
    """Fit (or refit) a trained run's calibration on its validation sets (what
    `ptrag train --calibration validation` does after training) and store it in its checkpoints."""
    from ptrag.train.calibrate import calibrate_run

    fitted = calibrate_run(run, data, list(genes or []))
    if not fitted:
        raise PtragError(f"{run}: the run has no validation sets to calibrate on; nothing was changed.")
    for name, c in fitted.items():
        console.print(f"{name}.ckpt: {c.describe()}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``predict``."""
    app.command("train")(train_cmd)
    app.command("predict")(predict_cmd)
    app.command("calibrate")(calibrate_cmd)
    app.command("demo")(demo_cmd)


def demo_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="Experiment folder: synthetic data, runs, predictions, tables, report.")
    ] = Path("ptrag_demo"),
    max_steps: Annotated[
        int | None,
        typer.Option("--max-steps", help="Training steps per model. [default: the cpu preset's]", show_default=False),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the splits and the trainings.")] = 0,
    models: Annotated[
        str, typer.Option("--models", help="Comma-separated models to train.")
    ] = "state,state_genept,vanilla_rag,pt_rag,pt_rag_response",
    cell_types: Annotated[
        str,
        typer.Option(
            "--cell-types", help="Comma-separated target cell types of the synthetic benchmark (cellA..cellD)."
        ),
    ] = "cellA,cellB",
) -> None:
    """The main job on the embedded synthetic benchmark: the cross-cell-type experiment (two
    targets, one seed, cpu preset): train the four models, predict, evaluate, compare, report."""
    check_output(out, "folder")
    from ptrag.cli.experiment_cmds import _command, _csv, show_result
    from ptrag.experiments.demo import run_demo

    show_result(run_demo(out, max_steps, seed, _csv(models), _csv(cell_types), command=_command()))
