"""Options of :class:`ptrag.nn.generator.PerturbationModel` (pure data, no torch modules).

:class:`ModelConfig` declares every model option with its validation; :data:`PRESETS` the two
sizes (``cpu``, ``paper``). Re-exported by :mod:`ptrag.nn.generator` and :mod:`ptrag.nn`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ptrag.errors import PtragError, check_choice

CONDITIONINGS = ("none", "vanilla_rag", "pt_rag")
EMPTY_SELECTIONS = ("best", "null", "paper", "keep")
EVAL_SELECTIONS = ("expected", "threshold", "sample")


@dataclass
class ModelConfig:
    """Model hyper-parameters (the data-side ones, set size / batch / optimiser, live elsewhere).

    Parameters
    ----------
    conditioning
        ``"none"`` (STATE / STATE+GenePT), ``"vanilla_rag"`` or ``"pt_rag"``.
    hidden
        Width ``H`` of ``h_ctrl``, ``h_pert``, contexts and the backbone.
    n_layers
        Llama blocks in the backbone.
    n_heads
        Attention heads (backbone and vanilla cross-attention); must divide ``hidden``.
    ffn
        Llama SwiGLU intermediate size.
    cell_encoder_layers
        Linear layers of the cell encoder.
    dropout
        Dropout in the encoders, the backbone attention and the vanilla cross-attention.
    topk
        Retrieved candidates ``K`` per query.
    tau
        Gumbel-Softmax temperature (PT-RAG).
    empty_selection
        PT-RAG's rule for a cell that selects no candidate. ``"best"``: ``z = sum_k w_k h'_k``
        and an empty selection is replaced by the highest-scoring candidate (every cell keeps
        one triplet; selecting stays the only way ``h_ctrl`` and ``h_pert`` reach the
        backbone). ``"null"``: ``z = proj([h_ctrl; h_pert; 0]) + sum_k w_k h'_k``.
        ``"paper"``: ``z = sum_k w_k h'_k`` (empty: ``z = 0``, the reference code).
        ``"keep"``: ``z = h_ctrl + h_pert + sum_k w_k h'_k`` (contexts optional).
    aggregation
        ``"sum"``: ``sum_k w_k h'_k`` (Eq. 7); ``"mean"``: ``sum_k w_k h'_k / sum_k w_k`` (the
        scale of ``z`` does not grow with the number of selected contexts).
    train_selection
        Selection in training: ``"sample"`` (straight-through Gumbel-Softmax, the paper's) or
        ``"threshold"`` (deterministic ``p_include > 0.5`` with the straight-through gradient).
    eval_selection
        Selection in eval mode: ``"expected"`` (the expectation of the training selection,
        ``E[w_k]``, noise-free and deterministic), ``"threshold"`` (include iff
        ``p_include > 0.5``) or ``"sample"`` (Gumbel noise, as in training).
    fused_triplets
        Exact memory-light PT-RAG computation that never builds the ``[B, S, K, 3H]`` triplets.
    """

    conditioning: Literal["none", "vanilla_rag", "pt_rag"] = "none"
    hidden: int = 128
    n_layers: int = 4
    n_heads: int = 8
    ffn: int = 512
    cell_encoder_layers: int = 2
    dropout: float = 0.0
    topk: int = 32
    tau: float = 0.5
    empty_selection: Literal["best", "null", "paper", "keep"] = "best"
    aggregation: Literal["sum", "mean"] = "sum"
    train_selection: Literal["sample", "threshold", "expected"] = "sample"
    identity_init: bool = True
    eval_selection: Literal["expected", "threshold", "sample"] = "expected"
    fused_triplets: bool = True

    def validate(self) -> None:
        """Raise :class:`PtragError` naming the first out-of-range option."""
        check_choice("conditioning", self.conditioning, CONDITIONINGS)
        check_choice("empty_selection", self.empty_selection, EMPTY_SELECTIONS)
        check_choice("eval_selection", self.eval_selection, EVAL_SELECTIONS)
        check_choice("aggregation", self.aggregation, ("sum", "mean"))
        check_choice("train_selection", self.train_selection, EVAL_SELECTIONS)
        for name in ("hidden", "n_layers", "n_heads", "ffn", "cell_encoder_layers", "topk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PtragError(f"model option {name} must be an integer >= 1 (got {value!r}).")
        if self.hidden % self.n_heads != 0:
            raise PtragError(
                f"model option n_heads ({self.n_heads}) must divide hidden ({self.hidden}): "
                "choose n_heads among the divisors of hidden."
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise PtragError(f"model option dropout must be in [0, 1) (got {self.dropout!r}).")
        if not isinstance(self.tau, (int, float)) or isinstance(self.tau, bool) or not float(self.tau) > 0.0:
            raise PtragError(f"model option tau (Gumbel-Softmax temperature) must be > 0 (got {self.tau!r}).")
        if not isinstance(self.fused_triplets, bool):
            raise PtragError(f"model option fused_triplets must be true or false (got {self.fused_triplets!r}).")

    def to_dict(self) -> dict:
        """Plain dict of the options (for hparams / TOML)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> ModelConfig:
        """Build and validate a config from a mapping; unknown keys raise :class:`PtragError`.

        Parameters
        ----------
        values
            Option names to values (missing options take their defaults).

        Returns
        -------
        ModelConfig
            The validated config.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PtragError(
                f"unknown model option(s) {', '.join(unknown)}: known options are {', '.join(sorted(known))}."
            )
        cfg = cls(**dict(values))
        cfg.validate()
        return cfg


PRESETS: dict[str, ModelConfig] = {
    "cpu": ModelConfig(hidden=64, n_layers=2, n_heads=4, ffn=256, cell_encoder_layers=2, topk=16, tau=0.5),
    "paper": ModelConfig(hidden=128, n_layers=4, n_heads=8, ffn=512, cell_encoder_layers=2, topk=32, tau=0.5),
}
"""Model-size presets (conditioning ``none``; use ``dataclasses.replace(p, conditioning=...)``)."""
