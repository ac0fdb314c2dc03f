"""Options of :class:`ptrag.nn.generator.PerturbationModel` (pure data, no torch modules).

:class:`ModelConfig` declares every model option with its validation; :data:`PRESETS` the two
sizes (``cpu``, ``paper``). Re-exported by :mod:`ptrag.nn.generator` and :mod:`ptrag.nn`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ptrag.errors import PtragError
from ptrag.model_checks import (  # the choices live beside the checks (torch-free); re-exported here
    CONDITIONINGS,
    EMPTY_SELECTIONS,
    EVAL_SELECTIONS,
    RESPONSE_CANDIDATES,
    check_model_options,
)

__all__ = ["CONDITIONINGS", "EMPTY_SELECTIONS", "EVAL_SELECTIONS", "PRESETS", "RESPONSE_CANDIDATES", "ModelConfig"]


@dataclass
class ModelConfig:
    """Model hyper-parameters (the data-side ones, set size / batch / optimiser, live elsewhere).

    Parameters
    ----------
    conditioning
        ``"none"`` (STATE / STATE+GenePT), ``"vanilla_rag"``, ``"pt_rag"`` or
        ``"pt_rag_response"`` (PT-RAG over the training groups' observed responses,
        :mod:`ptrag.nn.responses`).
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
        ``p_include > 0.5``) or ``"sample"`` (Gumbel noise, as in training). ``"all"`` (train
        and eval): every candidate with weight 1, no selection (an ablation).
    fused_triplets
        Exact memory-light PT-RAG computation that never builds the ``[B, S, K, 3H]`` triplets.
    response_candidates
        ``pt_rag_response``'s Stage-1 rule (:func:`ptrag.nn.responses.candidate_scores`):
        ``"both"`` (the query's own entries in other cell types, then its cell type's entries),
        ``"same"`` (its cell type's entries only) or ``"other"`` (other cell types' first).
    response_context
        ``pt_rag_response``: the context part of a triplet encodes the entry's observed response
        (``h_k = PertEnc(gene) + RespEnc(summary) + e_same``); ``False``: gene vector and flag only.
    response_readout
        ``pt_rag_response``: the prediction starts from the selected entries' mean observed
        shift, ``relu(ctrl + sum_k w_k shift_k / sum_k w_k + Decoder(...))``; ``False``: from the
        control cells, as the other models.
    response_agreement
        ``pt_rag_response``: the response agreement elsewhere (:meth:`ptrag.nn.responses.
        ResponseIndex.agreement`) also ranks Stage 1, biases the selector's include logit by a
        learned ``gain * (agreement - centre)`` and weights the readout (a softmax of
        ``agreement / T`` over the selected entries of other perturbations, mixed with the mean of
        the query's own selected entries elsewhere with a learned share); ``False``: gene cosine
        ranking, selector alone, uniform mean of the selected shifts.
    response_transfer
        ``pt_rag_response``: the readout scales each other cell type's shifts by how that cell
        type's responses transfer to the query's, measured on the training groups
        (:mod:`ptrag.nn.transfer`); the response agreement weighs each other
        cell type by how far "perturbations that act alike there" carries to the query's cell
        type (:func:`ptrag.nn.transfer.similarity_transfer`). ``False`` (default): shifts read as
        observed, every shared cell type counts alike in the agreement (measured better on the
        synthetic benchmark and on devel.h5ad, docs/training.md). ``"auto"``: per query cell
        type, whichever of the two predicts that cell type's training groups better, leave one
        out (:func:`ptrag.nn.readout.transfer_cell_types`).
    response_flat
        ``pt_rag_response``: a cell type whose training groups the readout's softmax predicts no
        better (leave one out) than equal weights reads its retrieved entries of other
        perturbations with equal weights (:mod:`ptrag.nn.readout`); ``False``: the softmax
        everywhere.
    """

    conditioning: Literal["none", "vanilla_rag", "pt_rag", "pt_rag_response"] = "none"
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
    train_selection: Literal["sample", "threshold", "expected", "all"] = "sample"
    identity_init: bool = True
    eval_selection: Literal["expected", "threshold", "sample", "all"] = "expected"
    fused_triplets: bool = True
    response_candidates: Literal["both", "same", "other"] = "both"
    response_context: bool = True
    response_readout: bool = True
    response_agreement: bool = True
    response_transfer: bool | Literal["auto"] = False
    response_flat: bool = True

    def validate(self, option: Callable[[str], str] | None = None) -> None:
        """Raise :class:`PtragError` naming the first out-of-range option
        (:func:`ptrag.model_checks.check_model_options`, shared with
        :meth:`ptrag.train.config.TrainConfig.validate`).

        Parameters
        ----------
        option
            How a message names an option (e.g. ``"hidden"`` -> ``"--hidden"`` for a command
            line); default ``model option NAME``.
        """
        check_model_options(self, option)

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
