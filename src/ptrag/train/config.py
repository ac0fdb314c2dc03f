"""Run configuration: presets, TOML config files, validation.

A run's configuration is resolved in this order: the dataclass defaults, the chosen ``preset``
(``cpu`` for a 2-core machine, ``paper`` for the paper's), a TOML config file, then the options
given on the command line. The resolved configuration is written to ``RUN_DIR/config.toml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import tomli_w

from ptrag.data.io import ColumnSpec
from ptrag.errors import PtragError, atomic_write_text, read_toml
from ptrag.model_checks import check_model_options, option_choices, spell_choices

ModelName = Literal["state", "state_genept", "vanilla_rag", "pt_rag", "pt_rag_response"]
MODELS: tuple[str, ...] = get_args(ModelName)

#: The conditioning and the perturbation representation of each model of the paper.
MODEL_KINDS: dict[str, tuple[str, str]] = {
    "state": ("none", "onehot"),
    "state_genept": ("none", "genes"),
    "vanilla_rag": ("vanilla_rag", "genes"),
    "pt_rag": ("pt_rag", "genes"),
    "pt_rag_response": ("pt_rag_response", "genes"),
}


def _m(help: str, *, cli: bool = True, flag: str | None = None) -> dict[str, Any]:
    """A :class:`TrainConfig` field's declaration: its help text, whether ``ptrag train`` has a
    flag for it (else it is a ``--config`` TOML key only) and the flag when it is not
    ``--`` + the name with ``_`` -> ``-`` (:mod:`ptrag.train.options`)."""
    return {"help": help, "cli": cli, "flag": flag}


def _ablation(help: str) -> Any:
    """A TOML-only bool option, true by default, whose false is an ablation of ``pt_rag_response``."""
    return field(default=True, metadata=_m(help.removesuffix(".") + " (an ablation).", cli=False))


@dataclass
class TrainConfig:
    """Everything that defines a training run (besides the data paths).

    Each field declares its option once, in its ``metadata`` (:func:`_m`: help text, command-line
    flag or TOML only); ``ptrag train``'s flags and the table of docs/training.md ("Every training
    option", :func:`ptrag.train.options.options_markdown`) are generated from it. The model
    options are checked by :func:`ptrag.model_checks.check_model_options` (as by ``ModelConfig.validate``).
    """

    model: ModelName = field(
        default="pt_rag",
        metadata=_m(
            "state | state_genept | vanilla_rag | pt_rag | pt_rag_response (PT-RAG over the training groups' "
            "observed responses; docs/training.md)."
        ),
    )
    preset: Literal["cpu", "paper"] = field(
        default="cpu", metadata=_m("cpu (small) or paper (hidden 128, S 64, batch 64, K 32, 50k steps).")
    )
    hidden: int = field(default=64, metadata=_m("Hidden width."))
    n_layers: int = field(default=2, metadata=_m("Transformer blocks."))
    n_heads: int = field(default=4, metadata=_m("Attention heads (must divide the hidden width)."))
    ffn: int = field(default=256, metadata=_m("Feed-forward width."))
    cell_encoder_layers: int = field(default=2, metadata=_m("Linear layers of the cell encoder.", cli=False))
    dropout: float = field(
        default=0.0,
        metadata=_m("Dropout in the encoders, the backbone attention and the vanilla cross-attention.", cli=False),
    )
    topk: int = field(default=16, metadata=_m("Retrieved candidates K (RAG models)."))
    tau: float = field(default=0.5, metadata=_m("Gumbel-Softmax temperature (pt_rag)."))
    sparsity_weight: float = field(default=0.1, metadata=_m("lambda_sparse (pt_rag)."))
    sparsity_scale: Literal["control", "absolute"] = field(
        default="control",
        metadata=_m("control (lambda relative to the batch's predict-the-control energy) | absolute (pt_rag)."),
    )
    residual_base: Literal["none", "context_mean", "auto"] = field(
        default="auto",
        metadata=_m(
            "none (predict a change of the control cells) | "
            "context_mean (a change on top of the cell type's mean training change) | auto (context_mean where "
            "the target's training groups share their response more than the other cell types transfer it)."
        ),
    )
    calibration: Literal["none", "validation", "fallback", "auto"] = field(
        default="auto",
        metadata=_m(
            "none | validation (after training, scale the predicted change's set mean and per-cell spread toward "
            "the residual base, two scalars fitted on the validation sets) | fallback (validation only where the "
            "network's validation energy is worse than the base's) | auto (validation with the context_mean base, "
            "fallback for pt_rag_response, else none)."
        ),
    )
    empty_selection: Literal["best", "null", "paper", "keep"] = field(
        default="best",
        metadata=_m(
            "best (an empty selection takes its best candidate) | null (a null-context triplet always added) | "
            "paper (z = 0) | keep (z keeps h_ctrl + h_pert) (pt_rag)."
        ),
    )
    aggregation: Literal["sum", "mean"] = field(
        default="sum", metadata=_m("sum (Eq. 7) | mean of the selected triplets (pt_rag).")
    )
    train_selection: Literal["sample", "threshold", "expected", "all"] = field(
        default="sample",
        metadata=_m(
            "sample (straight-through Gumbel, the paper's) | threshold | expected | "
            "all (every candidate, no selection: an ablation) (pt_rag)."
        ),
    )
    identity_init: bool = field(
        default=True, metadata=_m("Start the triplet projection as h_ctrl + h_pert (+ a small context term) (pt_rag).")
    )
    eval_selection: Literal["expected", "threshold", "sample", "all"] = field(
        default="expected",
        metadata=_m("expected (the expectation of the training selection) | threshold | sample | all (pt_rag)."),
    )
    response_candidates: Literal["both", "same", "other"] = field(
        default="both",
        metadata=_m(
            "pt_rag_response's Stage-1 rule: both (the query's own entries in other cell types, then its cell "
            "type's) | same (its cell type's only) | other (other cell types' first); an ablation.",
            cli=False,
        ),
    )
    response_context: bool = _ablation("pt_rag_response: the contexts encode the entries' observed responses.")
    response_readout: bool = _ablation(
        "pt_rag_response: the prediction starts from the selected entries' mean observed shift."
    )
    response_agreement: bool = _ablation(
        "pt_rag_response: the response agreement elsewhere ranks, selects and weights the entries."
    )
    response_transfer: bool | Literal["auto"] = field(
        default=False,
        metadata=_m(
            "pt_rag_response: other cell types' shifts scaled, and their agreement weighed, by how they transfer "
            "to the query's cell type, measured on training groups: false (measured better on both data sets) | "
            "true | auto (per cell type, whichever predicts its training groups better, leave one out).",
            cli=False,
        ),
    )
    response_flat: bool = _ablation(
        "pt_rag_response: equal readout weights in a cell type whose training groups the agreement softmax "
        "predicts no better, leave one out."
    )
    cell_set_size: int = field(default=32, metadata=_m("Cells per set (S)."))
    batch_size: int = field(default=16, metadata=_m("Sets per batch."))
    n_genes: int = field(default=2000, metadata=_m("Highly variable genes (on training cells; all genes when fewer)."))
    cell_encoder: Literal["mlp", "obsm", "pca"] = field(
        default="mlp",
        metadata=_m(
            "mlp (expression) | obsm (precomputed, frozen; --cell-obsm-key) | pca (scores fit on training cells)."
        ),
    )
    cell_obsm_key: str = field(default="", metadata=_m("obsm key of precomputed cell embeddings (e.g. X_state)."))
    missing_genes: Literal["error", "drop"] = field(
        default="error", metadata=_m("error | drop: perturbations without a gene vector.")
    )
    match_batch: bool = field(default=False, metadata=_m("Pair controls from the same batch."))
    optimizer: Literal["adamw", "adam"] = field(
        default="adamw", metadata=_m("adamw (decoupled weight decay) | adam (L2 in the gradient; docs/training.md).")
    )
    lr: float = field(default=1e-3, metadata=_m("Learning rate."))
    weight_decay: float = field(default=5e-4, metadata=_m("Weight decay (see --optimizer)."))
    grad_clip: float = field(default=1.0, metadata=_m("Gradient-norm clipping (0: off).", cli=False))
    max_steps: int = field(default=400, metadata=_m("Training steps."))
    val_every: int = field(default=100, metadata=_m("Validate every N steps."))
    early_stopping: int = field(default=0, metadata=_m("Patience in validations (0: off)."))
    seed: int = field(default=0, metadata=_m("Seed (split, sets, initialisation, Gumbel noise)."))
    task: Literal["fewshot", "unseen-perturbation"] = field(
        default="fewshot", metadata=_m("fewshot | unseen-perturbation (without --split).")
    )
    target_cell_type: str = field(default="", metadata=_m("Held-out cell type of the few-shot task (without --split)."))
    fewshot: float = field(
        default=0.3,
        metadata=_m("Fraction of the target's perturbations that train (unseen-perturbation: that are held out)."),
    )
    accelerator: str = field(default="auto", metadata=_m("auto | cpu | gpu."))
    devices: str = field(default="auto", metadata=_m("Number of devices or auto."))
    strategy: str = field(default="auto", metadata=_m("Lightning strategy (ddp for several GPUs / nodes)."))
    precision: str = field(default="32-true", metadata=_m("32-true | bf16-mixed | 16-mixed."))
    num_workers: int = field(default=0, metadata=_m("DataLoader workers."))
    data: dict = field(
        default_factory=lambda: ColumnSpec().to_dict(),
        metadata=_m(
            "The data's columns: the [data] table (its keys are the data flags' names); on the command line "
            "the data flags --pert-col ... --obsm-key, shared by every command.",
            cli=False,
        ),
    )

    # ------------------------------------------------------------------ helpers
    @property
    def conditioning(self) -> str:
        return MODEL_KINDS[self.model][0]

    @property
    def uses_gene_table(self) -> bool:
        return MODEL_KINDS[self.model][1] == "genes"

    @property
    def column_spec(self) -> ColumnSpec:
        return ColumnSpec.from_dict(self.data)

    def model_config(self):
        """The :class:`ptrag.nn.config.ModelConfig` of this run (its fields of the same name)."""
        from ptrag.nn.config import ModelConfig

        own = {f.name for f in fields(self)}
        shared = {f.name: getattr(self, f.name) for f in fields(ModelConfig) if f.name in own}
        return ModelConfig(conditioning=self.conditioning, **shared)

    def validate(self) -> None:
        """Raise :class:`PtragError` naming the first out-of-range option (the model's options by
        :func:`ptrag.model_checks.check_model_options`, as :meth:`ptrag.nn.config.ModelConfig.validate`
        does; the others here)."""
        _check_literals(self)
        check_model_options(self, option=option_label)  # what ModelConfig.validate checks, torch-free
        checks = [
            (self.sparsity_weight >= 0, f"--sparsity-weight must be >= 0 (got {self.sparsity_weight})"),
            (self.cell_set_size >= 2, f"--cell-set-size must be at least 2 (got {self.cell_set_size})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.n_genes >= 1, f"--n-genes must be at least 1 (got {self.n_genes})"),
            (self.lr > 0, f"--lr must be > 0 (got {self.lr})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (self.grad_clip >= 0, f"{option_label('grad_clip')} must be >= 0 (got {self.grad_clip})"),
            (self.max_steps >= 1, f"--max-steps must be at least 1 (got {self.max_steps})"),
            (self.val_every >= 1, f"--val-every must be at least 1 (got {self.val_every})"),
            (self.early_stopping >= 0, "--early-stopping must be >= 0"),
            (0 < self.fewshot < 1, f"--fewshot must be between 0 and 1 (got {self.fewshot})"),
            (self.num_workers >= 0, "--num-workers must be >= 0"),
            (self.cell_encoder != "obsm" or bool(self.cell_obsm_key), "--cell-encoder obsm needs --cell-obsm-key"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PtragError(msg + ".")

    def to_toml(self, path: str | Path) -> None:
        """Write the resolved configuration (atomically)."""
        d = dataclasses.asdict(self)
        data = d.pop("data")
        atomic_write_text(path, "# ptrag resolved run configuration\n" + tomli_w.dumps({**d, "data": data}))


#: Preset values (applied over the dataclass defaults).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(
        hidden=64,
        n_layers=2,
        n_heads=4,
        ffn=256,
        topk=16,
        cell_set_size=32,
        batch_size=16,
        max_steps=1500,
        val_every=250,
    ),
    "paper": dict(
        hidden=128,
        n_layers=4,
        n_heads=8,
        ffn=512,
        topk=32,
        cell_set_size=64,
        batch_size=64,
        max_steps=50_000,
        val_every=2_000,
        lr=1e-3,
        weight_decay=5e-4,
        n_genes=2000,
        residual_base="none",
        calibration="none",
    ),
}


def option_label(name: str) -> str:
    """How messages name the :class:`TrainConfig` option ``name``: its flag (``--n-heads``), or
    ``config key NAME`` for an option without one (set in a ``--config`` TOML)."""
    name = "model" if name == "conditioning" else name  # the model's conditioning comes from --model
    if name not in TrainConfig.__dataclass_fields__:
        return name
    meta = TrainConfig.__dataclass_fields__[name].metadata
    if not meta.get("cli", True):
        return f"config key {name}"
    return meta.get("flag") or "--" + name.replace("_", "-")


def _check_literals(cfg: TrainConfig) -> None:
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        choices, value = option_choices(hints[f.name]), getattr(cfg, f.name)
        if choices is not None and not any(value is c or (isinstance(c, str) and value == c) for c in choices):
            raise PtragError(
                f"invalid value {value!r} for {option_label(f.name)}: choose one of {', '.join(map(str, choices))}."
            )


def coerce_option(name: str, value: Any, source: str) -> Any:
    """``value`` of the :class:`TrainConfig` option ``name`` in the option's type (a whole float
    from an int; ``[data]`` completed with the default columns), or :class:`PtragError` naming
    ``source`` (a file, ``option``, ``--grid NAME``)."""
    hints = get_type_hints(TrainConfig)
    t = hints[name]
    if get_origin(t) in (Union, UnionType):  # bool | Literal[...]: true, false or a named choice
        choices = option_choices(t) or ()
        if isinstance(value, bool) or (isinstance(value, str) and value in choices):
            return value
        raise PtragError(f"{source}: {name} = {value!r}: choose one of {spell_choices(choices)}.")
    base = type(getattr(TrainConfig(), name)) if get_origin(t) is Literal else t
    if name == "data":
        if not isinstance(value, dict):
            raise PtragError(f"{source}: [data] must be a table of column names.")
        unknown = set(value) - set(ColumnSpec.__dataclass_fields__)
        if unknown:
            raise PtragError(
                f"{source}: unknown key(s) {sorted(unknown)} in [data]; "
                f"known: {', '.join(ColumnSpec.__dataclass_fields__)}."
            )
        return {**ColumnSpec().to_dict(), **{k: ("" if v is None else str(v)) for k, v in value.items()}}
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str and isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise PtragError(f"{source}: {name} = {value!r} has the wrong type; expected {base.__name__}.")


def config_file_values(config_file: str | Path) -> dict[str, Any]:
    """The options a TOML config file sets (checked and coerced; a ``[data]`` table completed)."""
    path = Path(config_file)
    raw = read_toml(path, "config file")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise PtragError(f"{path}: unknown key(s) {sorted(unknown)}; known keys: {', '.join(sorted(known))}.")
    return {k: coerce_option(k, v, str(path)) for k, v in raw.items()}


def resolve_config(
    overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    preset: str | None = None,
) -> TrainConfig:
    """Resolve defaults < preset < config file < explicit overrides, and validate.

    Parameters
    ----------
    overrides
        Explicitly given options (``None`` values are ignored).
    config_file
        A TOML file with any :class:`TrainConfig` keys (and a ``[data]`` table).
    preset
        ``cpu`` or ``paper``; else the config file's ``preset``, else ``cpu``.

    Returns
    -------
    TrainConfig
    """
    values: dict[str, Any] = {}
    known = {f.name for f in fields(TrainConfig)}
    file_values = config_file_values(config_file) if config_file is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - known
    if unknown:
        raise PtragError(f"unknown option(s) {sorted(unknown)}.")
    name = preset or overrides.get("preset") or file_values.get("preset") or "cpu"
    if name not in PRESETS:
        raise PtragError(f"invalid value {name!r} for --preset: choose one of {', '.join(PRESETS)}.")
    values.update(PRESETS[name])
    values["preset"] = name
    values.update(file_values)
    if "data" in overrides:
        values["data"] = {**values.get("data", ColumnSpec().to_dict()), **overrides.pop("data")}
    values.update({k: coerce_option(k, v, "option") for k, v in overrides.items()})
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """Read ``RUN_DIR/config.toml``."""
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise PtragError(
            f"{run_dir} is not a ptrag run folder (no config.toml); pass the --out folder of `ptrag train`."
        )
    return resolve_config(config_file=path)
