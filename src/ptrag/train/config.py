"""Run configuration: presets, TOML config files, validation.

A run's configuration is resolved in this order: the dataclass defaults, the chosen
``preset`` (``cpu`` for a 2-core machine, ``paper`` for the paper's configuration), a TOML
config file, then the options given on the command line. The resolved configuration is
written to ``RUN_DIR/config.toml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import tomli_w

from ptrag.data.io import ColumnSpec
from ptrag.errors import PtragError, atomic_write_text, read_toml

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


@dataclass
class TrainConfig:
    """Everything that defines a training run (besides the data paths).

    Parameters
    ----------
    model
        ``state`` (one-hot), ``state_genept``, ``vanilla_rag``, ``pt_rag`` or ``pt_rag_response``
        (PT-RAG over the training groups' observed responses; docs/training.md).
    preset
        ``cpu`` (small, minutes on 2 cores) or ``paper`` (hidden 128, S = 64, batch 64,
        K = 32, 50k steps).
    hidden, n_layers, n_heads, ffn, cell_encoder_layers, dropout
        Network sizes (see :class:`ptrag.nn.generator.ModelConfig`).
    topk
        K, retrieved candidates per query (RAG models).
    tau
        Gumbel-Softmax temperature (PT-RAG).
    sparsity_weight
        lambda_sparse, weight of the mean selected fraction in the PT-RAG loss.
    residual_base
        What the generator's change is added to: ``none`` (the control cells, the paper's
        residual) or ``context_mean`` (the control cells shifted by the mean change of their
        cell type's training groups, arc-state's ContextMean baseline; the network learns the
        residual on top of it).
    calibration
        ``validation``: after training, fit two scales of the network's change on the
        validation sets (its set mean, ``alpha``, and each cell's deviation from it, ``beta``;
        :mod:`ptrag.train.calibrate`), applied by ``ptrag predict``; ``none``: predict with the
        network as trained.
    sparsity_scale
        ``control`` (the sparsity term is lambda x the batch's predict-the-control energy x
        mean(w): lambda is relative to the data's energy scale) or ``absolute`` (lambda x
        mean(w), the paper's form).
    empty_selection
        PT-RAG's rule for a cell that selects nothing (see
        :class:`ptrag.nn.generator.ModelConfig`): ``best`` (its best-scoring candidate),
        ``null`` (a null-context triplet always added), ``paper`` (z = 0) or ``keep``
        (h_ctrl + h_pert always added).
    aggregation
        PT-RAG's ``sum`` (Eq. 7) or ``mean`` of the selected projected triplets.
    eval_selection
        PT-RAG's selection at evaluation: ``expected`` (the expectation of the training
        selection), ``threshold`` (p_include > 0.5) or ``sample``; ``all`` (train and eval):
        every candidate, no selection (an ablation).
    response_candidates, response_context, response_readout, response_agreement
        ``pt_rag_response``'s Stage-1 rule, whether the contexts encode the observed responses,
        whether the prediction starts from the selected groups' mean shift and whether the
        response agreement elsewhere ranks, selects and weights the entries (see
        :class:`ptrag.nn.generator.ModelConfig`; ablations, set in a ``--config`` TOML).
    cell_set_size
        S, cells per set.
    batch_size
        Sets per batch.
    n_genes
        Highly variable genes selected on training cells (all genes when fewer).
    cell_encoder
        What the cell encoder reads: ``mlp`` (expression), ``obsm`` (precomputed embeddings
        in ``adata.obsm[cell_obsm_key]``, frozen) or ``pca`` (PCA scores fit on training cells).
    cell_obsm_key
        obsm key of precomputed cell embeddings (``cell_encoder = "obsm"``).
    missing_genes
        ``error`` or ``drop``: what to do with perturbations absent from the gene table.
    match_batch
        Pair perturbed cells with controls of the same batch.
    optimizer
        ``adamw`` (default): Adam with *decoupled* weight decay (each step multiplies every
        weight by ``1 - lr * weight_decay``); ``adam``: ``torch.optim.Adam``, whose weight
        decay is an L2 term added to the gradient and then rescaled by Adam. With one-hot
        perturbations a row of the encoder gets a data gradient only when its perturbation is
        in the batch, so under ``adam`` the rescaled L2 term alone pulls it to zero at about
        ``lr`` per step in between, and STATE stops telling perturbations apart (measured in
        ``docs/training.md``); ``adam`` is kept to reproduce that.
    lr, weight_decay, grad_clip
        Learning rate, weight decay (applied by the optimiser, see ``optimizer``) and
        gradient-norm clipping.
    max_steps, val_every
        Training steps and validation interval (steps).
    early_stopping
        Patience in validations (0: off).
    seed
        Seed of everything (split, sets, initialisation, Gumbel noise).
    task
        ``fewshot`` (cross-cell-type) or ``unseen-perturbation``; used when no split file is given.
    target_cell_type
        Target cell type of the few-shot task.
    fewshot
        Fraction of the target's perturbations that train (few-shot), or held out
        (unseen-perturbation).
    accelerator, devices, strategy, precision, num_workers
        Lightning Trainer settings.
    data
        Column spec of the data (``[data]`` table in TOML).
    """

    model: ModelName = "pt_rag"
    preset: Literal["cpu", "paper"] = "cpu"
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn: int = 256
    cell_encoder_layers: int = 2
    dropout: float = 0.0
    topk: int = 16
    tau: float = 0.5
    sparsity_weight: float = 0.1
    sparsity_scale: Literal["control", "absolute"] = "control"
    residual_base: Literal["none", "context_mean"] = "none"
    calibration: Literal["none", "validation"] = "none"
    empty_selection: Literal["best", "null", "paper", "keep"] = "best"
    aggregation: Literal["sum", "mean"] = "sum"
    train_selection: Literal["sample", "threshold", "expected", "all"] = "sample"
    identity_init: bool = True
    eval_selection: Literal["expected", "threshold", "sample", "all"] = "expected"
    response_candidates: Literal["both", "same", "other"] = "both"
    response_context: bool = True
    response_readout: bool = True
    response_agreement: bool = True
    cell_set_size: int = 32
    batch_size: int = 16
    n_genes: int = 2000
    cell_encoder: Literal["mlp", "obsm", "pca"] = "mlp"
    cell_obsm_key: str = ""
    missing_genes: Literal["error", "drop"] = "error"
    match_batch: bool = False
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 5e-4
    grad_clip: float = 1.0
    max_steps: int = 400
    val_every: int = 100
    early_stopping: int = 0
    seed: int = 0
    task: Literal["fewshot", "unseen-perturbation"] = "fewshot"
    target_cell_type: str = ""
    fewshot: float = 0.3
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    data: dict = field(default_factory=lambda: ColumnSpec().to_dict())

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
        """The :class:`ptrag.nn.generator.ModelConfig` of this run."""
        from ptrag.nn.generator import ModelConfig

        return ModelConfig(
            conditioning=self.conditioning,
            hidden=self.hidden,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            ffn=self.ffn,
            cell_encoder_layers=self.cell_encoder_layers,
            dropout=self.dropout,
            topk=self.topk,
            tau=self.tau,
            empty_selection=self.empty_selection,
            aggregation=self.aggregation,
            train_selection=self.train_selection,
            identity_init=self.identity_init,
            eval_selection=self.eval_selection,
            response_candidates=self.response_candidates,
            response_context=self.response_context,
            response_readout=self.response_readout,
            response_agreement=self.response_agreement,
        )

    def validate(self) -> None:
        """Raise :class:`PtragError` naming the first out-of-range option."""
        checks = [
            (self.hidden >= 1, "--hidden must be at least 1"),
            (self.n_layers >= 1, "--n-layers must be at least 1"),
            (
                self.n_heads >= 1 and self.hidden % self.n_heads == 0,
                f"--n-heads ({self.n_heads}) must divide --hidden ({self.hidden})",
            ),
            (self.ffn >= 1, "--ffn must be at least 1"),
            (self.topk >= 1, "--topk must be at least 1"),
            (self.tau > 0, f"--tau must be > 0 (got {self.tau})"),
            (self.sparsity_weight >= 0, f"--sparsity-weight must be >= 0 (got {self.sparsity_weight})"),
            (self.cell_set_size >= 2, f"--cell-set-size must be at least 2 (got {self.cell_set_size})"),
            (self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})"),
            (self.n_genes >= 1, f"--n-genes must be at least 1 (got {self.n_genes})"),
            (self.lr > 0, f"--lr must be > 0 (got {self.lr})"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})"),
            (self.grad_clip >= 0, f"--grad-clip must be >= 0 (got {self.grad_clip})"),
            (self.max_steps >= 1, f"--max-steps must be at least 1 (got {self.max_steps})"),
            (self.val_every >= 1, f"--val-every must be at least 1 (got {self.val_every})"),
            (self.early_stopping >= 0, "--early-stopping must be >= 0"),
            (0 < self.fewshot < 1, f"--fewshot must be between 0 and 1 (got {self.fewshot})"),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1) (got {self.dropout})"),
            (self.num_workers >= 0, "--num-workers must be >= 0"),
            (self.cell_encoder != "obsm" or bool(self.cell_obsm_key), "--cell-encoder obsm needs --cell-obsm-key"),
        ]
        for ok, msg in checks:
            if not ok:
                raise PtragError(msg + ".")
        _check_literals(self)

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
    ),
}


def _check_literals(cfg: TrainConfig) -> None:
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        t = hints[f.name]
        if get_origin(t) is Literal and getattr(cfg, f.name) not in get_args(t):
            raise PtragError(
                f"invalid value {getattr(cfg, f.name)!r} for --{f.name.replace('_', '-')}: "
                f"choose one of {', '.join(map(str, get_args(t)))}."
            )


def coerce_option(name: str, value: Any, source: str) -> Any:
    """``value`` of the :class:`TrainConfig` option ``name`` in the option's type (a whole float
    from an int; ``[data]`` completed with the default columns), or :class:`PtragError` naming
    ``source`` (a file, ``option``, ``--grid NAME``)."""
    hints = get_type_hints(TrainConfig)
    t = hints[name]
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
