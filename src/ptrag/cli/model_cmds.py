"""``ptrag train`` and ``ptrag predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ptrag.cli.options import Backed, Layer, ObsmKey
from ptrag.errors import PtragError, check_output
from ptrag.train.config import PRESETS, TrainConfig

console = Console()


def _default(name: str) -> str:
    base = getattr(TrainConfig(), name)
    cpu = PRESETS["cpu"].get(name, base)
    paper = PRESETS["paper"].get(name, base)
    return f"[default: {cpu}]" if cpu == paper else f"[default: cpu preset {cpu}, paper preset {paper}]"


def _o(flag: str, name: str, text: str):
    return typer.Option(flag, help=f"{text} {_default(name)}", show_default=False)


def train_cmd(
    data: Annotated[Path, typer.Option("--data", help="Perturb-seq AnnData file (.h5ad).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    model: Annotated[
        str | None, _o("--model", "model", "state | state_genept | vanilla_rag | pt_rag | pt_rag_response.")
    ] = None,
    genes: Annotated[
        list[Path] | None,
        typer.Option(
            "--genes",
            help="Gene-embedding table(s) (GenePT pickle, CSV/TSV, parquet, npz); repeat to concatenate. "
            "Required by the embedding models.",
        ),
    ] = None,
    gene_aliases: Annotated[
        Path | None,
        typer.Option(
            "--gene-aliases", help="CSV alias,symbol for perturbation names spelled differently in the table."
        ),
    ] = None,
    split: Annotated[
        Path | None, typer.Option("--split", help="cell-load split TOML; made from --task when absent.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with any training option (and a [data] table).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset", help="cpu (small) or paper (hidden 128, S 64, batch 64, K 32, 50k steps). [default: cpu]"
        ),
    ] = None,
    task: Annotated[str | None, _o("--task", "task", "fewshot | unseen-perturbation (without --split).")] = None,
    target_cell_type: Annotated[
        str | None,
        typer.Option("--target-cell-type", help="Held-out cell type of the few-shot task (without --split)."),
    ] = None,
    fewshot: Annotated[
        float | None, _o("--fewshot", "fewshot", "Fraction of the target's perturbations that train.")
    ] = None,
    max_steps: Annotated[int | None, _o("--max-steps", "max_steps", "Training steps.")] = None,
    val_every: Annotated[int | None, _o("--val-every", "val_every", "Validate every N steps.")] = None,
    batch_size: Annotated[int | None, _o("--batch-size", "batch_size", "Sets per batch.")] = None,
    cell_set_size: Annotated[int | None, _o("--cell-set-size", "cell_set_size", "Cells per set (S).")] = None,
    hidden: Annotated[int | None, _o("--hidden", "hidden", "Hidden width.")] = None,
    n_layers: Annotated[int | None, _o("--n-layers", "n_layers", "Transformer blocks.")] = None,
    n_heads: Annotated[int | None, _o("--n-heads", "n_heads", "Attention heads.")] = None,
    ffn: Annotated[int | None, _o("--ffn", "ffn", "Feed-forward width.")] = None,
    topk: Annotated[int | None, _o("--topk", "topk", "Retrieved candidates K (RAG models).")] = None,
    tau: Annotated[float | None, _o("--tau", "tau", "Gumbel-Softmax temperature (pt_rag).")] = None,
    sparsity_weight: Annotated[
        float | None, _o("--sparsity-weight", "sparsity_weight", "lambda_sparse (pt_rag).")
    ] = None,
    sparsity_scale: Annotated[
        str | None,
        _o(
            "--sparsity-scale",
            "sparsity_scale",
            "control (lambda relative to the batch's predict-the-control energy) | absolute (pt_rag).",
        ),
    ] = None,
    residual_base: Annotated[
        str | None,
        _o(
            "--residual-base",
            "residual_base",
            "none (predict a change of the control cells) | "
            "context_mean (a change on top of the cell type's mean training change).",
        ),
    ] = None,
    calibration: Annotated[
        str | None,
        _o(
            "--calibration",
            "calibration",
            "none | validation (after training, scale the predicted change's set mean and per-cell spread "
            "toward the residual base, two scalars fitted on the validation sets).",
        ),
    ] = None,
    empty_selection: Annotated[
        str | None,
        _o(
            "--empty-selection",
            "empty_selection",
            "best (an empty selection takes its best candidate) | null (a null-context triplet always added) | "
            "paper (z = 0) | keep (z keeps h_ctrl + h_pert) (pt_rag).",
        ),
    ] = None,
    aggregation: Annotated[
        str | None, _o("--aggregation", "aggregation", "sum (Eq. 7) | mean of the selected triplets (pt_rag).")
    ] = None,
    train_selection: Annotated[
        str | None,
        _o(
            "--train-selection",
            "train_selection",
            "sample (straight-through Gumbel, the paper's) | threshold | expected (pt_rag).",
        ),
    ] = None,
    identity_init: Annotated[
        bool | None,
        typer.Option(
            "--identity-init/--no-identity-init",
            help="Start the triplet projection as h_ctrl + h_pert (+ a small context term) (pt_rag). [default: yes]",
            show_default=False,
        ),
    ] = None,
    eval_selection: Annotated[
        str | None,
        _o(
            "--eval-selection",
            "eval_selection",
            "expected (the expectation of the training selection) | threshold | sample (pt_rag).",
        ),
    ] = None,
    optimizer: Annotated[
        str | None, _o("--optimizer", "optimizer", "adamw (decoupled weight decay) | adam (L2 in the gradient).")
    ] = None,
    lr: Annotated[float | None, _o("--lr", "lr", "Learning rate.")] = None,
    weight_decay: Annotated[
        float | None, _o("--weight-decay", "weight_decay", "Weight decay (see --optimizer).")
    ] = None,
    n_genes: Annotated[int | None, _o("--n-genes", "n_genes", "Highly variable genes (on training cells).")] = None,
    cell_encoder: Annotated[
        str | None, _o("--cell-encoder", "cell_encoder", "mlp (expression) | obsm (precomputed, frozen) | pca.")
    ] = None,
    cell_obsm_key: Annotated[
        str | None, typer.Option("--cell-obsm-key", help="obsm key of precomputed cell embeddings (e.g. X_state).")
    ] = None,
    missing_genes: Annotated[
        str | None, _o("--missing-genes", "missing_genes", "error | drop: perturbations without a gene vector.")
    ] = None,
    match_batch: Annotated[
        bool | None,
        typer.Option(
            "--match-batch/--no-match-batch",
            help="Pair controls from the same batch. [default: no]",
            show_default=False,
        ),
    ] = None,
    early_stopping: Annotated[
        int | None, _o("--early-stopping", "early_stopping", "Patience in validations (0: off).")
    ] = None,
    seed: Annotated[int | None, _o("--seed", "seed", "Seed.")] = None,
    accelerator: Annotated[str | None, _o("--accelerator", "accelerator", "auto | cpu | gpu.")] = None,
    devices: Annotated[str | None, _o("--devices", "devices", "Number of devices or auto.")] = None,
    strategy: Annotated[
        str | None, _o("--strategy", "strategy", "Lightning strategy (ddp for several GPUs / nodes).")
    ] = None,
    precision: Annotated[str | None, _o("--precision", "precision", "32-true | bf16-mixed | 16-mixed.")] = None,
    num_workers: Annotated[int | None, _o("--num-workers", "num_workers", "DataLoader workers.")] = None,
    pert_col: Annotated[
        str | None,
        typer.Option("--pert-col", help="obs column of the perturbation. [default: gene]", show_default=False),
    ] = None,
    cell_type_col: Annotated[
        str | None,
        typer.Option(
            "--cell-type-col", help="obs column of the cell type ('' for one). [default: cell_type]", show_default=False
        ),
    ] = None,
    batch_col: Annotated[
        str | None,
        typer.Option(
            "--batch-col", help="obs column of the batch ('' for none). [default: gem_group]", show_default=False
        ),
    ] = None,
    control: Annotated[
        str | None, typer.Option("--control", help="Control label. [default: non-targeting]", show_default=False)
    ] = None,
    layer: Layer = None,
    obsm_key: ObsmKey = None,
    backed: Backed = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
) -> None:
    """Train STATE, STATE+GenePT, Vanilla RAG, PT-RAG or PT-RAG over responses; write a run folder."""
    check_output(out, "folder")
    local = dict(locals())
    from ptrag.train.config import config_file_values, read_run_config, resolve_config
    from ptrag.train.fit import train
    from ptrag.train.resume import resume_config

    data_over = {
        k: local[k]
        for k in ("pert_col", "cell_type_col", "batch_col", "control", "layer", "obsm_key")
        if local[k] is not None
    }
    skip = {
        "data",
        "out",
        "genes",
        "gene_aliases",
        "split",
        "config",
        "preset",
        "backed",
        "resume",
        *data_over,
        "layer",
        "obsm_key",
        "pert_col",
        "cell_type_col",
        "batch_col",
        "control",
    }
    over = {k: v for k, v in local.items() if k not in skip}
    if data_over:
        over["data"] = data_over
    if resume and (out / "config.toml").is_file():
        file_keys = config_file_values(config) if config is not None else {}
        cfg = resume_config(read_run_config(out), {**file_keys, **over, "preset": preset}, out)
    else:
        cfg = resolve_config(over, config, preset)
    result = train(cfg, data, out, split, list(genes or []), backed=backed, resume=resume, gene_aliases=gene_aliases)
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


def predict_cmd(
    run: Annotated[Path, typer.Option("--run", help="Run folder written by `ptrag train`.")],
    data: Annotated[Path, typer.Option("--data", help="h5ad file with the control cells (the training file).")],
    out: Annotated[
        Path,
        typer.Option("--out", help="Prediction file (.h5ad); a .retrieval.csv is written beside it for RAG models."),
    ],
    split: Annotated[str, typer.Option("--split", help="Split whose groups to predict: train | val | test.")] = "test",
    perturbations: Annotated[
        str | None,
        typer.Option(
            "--perturbations",
            help="Comma-separated perturbations to predict instead of a split (unseen ones need --genes).",
        ),
    ] = None,
    cell_type: Annotated[str | None, typer.Option("--cell-type", help="Cell type for --perturbations.")] = None,
    genes: Annotated[
        list[Path] | None, typer.Option("--genes", help="Gene table(s) with vectors of new perturbations.")
    ] = None,
    n_cells: Annotated[
        int | None,
        typer.Option("--n-cells", help="Cells per new perturbation. [default: the run's set size]", show_default=False),
    ] = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best | last | a checkpoint path.")] = "best",
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Write a baseline instead of the model's prediction, on the same cell sets: "
            "control | perturb_mean | context_mean | additive | linear "
            "(each set = relu(its matched control cells + the baseline's mean change, from training groups only); "
            "docs/metrics.md).",
        ),
    ] = None,
    control_baseline: Annotated[
        bool,
        typer.Option("--control-baseline", help="The same as --baseline control (each set's matched control cells)."),
    ] = False,
    backed: Backed = False,
) -> None:
    """Predict held-out perturbations (or new ones from their gene vectors) from a run."""
    check_output(out, "file")
    from ptrag.errors import PtragError, check_choice
    from ptrag.train.baselines import BASELINES
    from ptrag.train.predict import predict, write_prediction

    if baseline is not None:
        check_choice("--baseline", baseline, BASELINES)
    if control_baseline and baseline not in (None, "control"):
        raise PtragError(
            f"--control-baseline means --baseline control; it contradicts --baseline {baseline}: give one."
        )
    if out.suffix != ".h5ad":
        raise PtragError(f"--out {out}: prediction files are AnnData; give a path ending in .h5ad.")
    perts = [p.strip() for p in perturbations.split(",") if p.strip()] if perturbations else None
    pred = predict(
        run,
        data,
        split,
        perts,
        cell_type,
        list(genes or []),
        n_cells,
        checkpoint,
        backed=backed,
        baseline="control" if control_baseline else baseline,
    )
    paths = write_prediction(pred, out)
    n = int((~pred.adata.obs["is_control"]).sum())
    console.print(
        f"predicted {n} cells of "
        f"{pred.adata.obs.loc[~pred.adata.obs['is_control'], 'perturbation'].nunique()} perturbations -> "
        + ", ".join(str(p) for p in paths.values())
    )


def calibrate_cmd(
    run: Annotated[Path, typer.Option("--run", help="Run folder written by `ptrag train`.")],
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
