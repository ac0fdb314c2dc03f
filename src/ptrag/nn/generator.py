"""The set generator shared by the paper's four systems and ``pt_rag_response`` (torch, no I/O).

One class, :class:`PerturbationModel`; ``ModelConfig.conditioning`` picks how the per-cell
backbone input ``z`` is formed:

============  ===============================  =========================================
system        conditioning / pert vectors      z
============  ===============================  =========================================
STATE         ``none``, one-hot                ``h_ctrl + h_pert``
STATE+GenePT  ``none``, gene embeddings        ``h_ctrl + h_pert``
Vanilla RAG   ``vanilla_rag``, embeddings      ``q + CrossAttn(q, h_1..h_K)``, ``q = h_ctrl + h_pert``
PT-RAG        ``pt_rag``, embeddings           ``sum_k w_k h'_k``, ``h'_k = proj([h_ctrl; h_pert; h_k])``
PT-RAG-R      ``pt_rag_response``, embeddings  as PT-RAG over training *groups*, ``h_k`` with
                                               their observed responses (:mod:`ptrag.nn.responses`)
============  ===============================  =========================================

PT-RAG follows the paper's Eq. 7: the cell and its perturbation reach the backbone only through
the selected triplets. ``empty_selection`` says what a cell whose selection is empty gets:
``"best"`` (default) its highest-scoring candidate; ``"null"`` a null-context triplet
``proj([h_ctrl; h_pert; 0])`` always added; ``"paper"`` nothing (``z = 0``); ``"keep"``
``h_ctrl + h_pert`` always added (ptrag's first form). ``pt_rag_response``: :mod:`ptrag.nn.responses`,
:mod:`ptrag.nn.transfer`, ``docs/training.md``. The backbone is a bidirectional, position-free
Llama stack (:class:`ptrag.nn.backbone.SetTransformer`); the prediction is
``relu(ctrl_expr + Decoder(backbone(z)))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ptrag.errors import PtragError
from ptrag.nn.backbone import SetTransformer
from ptrag.nn.config import CONDITIONINGS, EMPTY_SELECTIONS, EVAL_SELECTIONS, PRESETS, ModelConfig
from ptrag.nn.encoders import CellEncoder, Decoder, PertEncoder, count_parameters
from ptrag.nn.readout import mean_change, model_transfer
from ptrag.nn.responses import ResponseIndex, agreement_prior
from ptrag.nn.retrieval import PerturbationIndex, TripletSelector

__all__ = [
    "CONDITIONINGS",
    "EMPTY_SELECTIONS",
    "EVAL_SELECTIONS",
    "PRESETS",
    "Decoder",
    "ModelConfig",
    "ModelOutput",
    "PerturbationModel",
    "count_parameters",
]


@dataclass
class ModelOutput:
    """What :meth:`PerturbationModel.forward` returns.

    Attributes
    ----------
    pred
        ``[B, S, G]`` predicted log-expression, ``>= 0``.
    candidates
        ``[B, K]`` long database rows of the retrieved candidates (RAG only, else ``None``).
    similarity
        ``[B, K]`` cosine similarity of each candidate to the query (RAG only).
    weights
        ``[B, S, K]`` selection ``w_k`` (PT-RAG only): 0/1 forward values when sampled (training)
        or thresholded, with the straight-through gradient; ``E[w_k]`` in ``[0, 1]`` with
        ``eval_selection="expected"``. ``weights.sum(-1)`` is the number of contexts a cell
        selects (its expectation for ``expected``); ``weights.mean()`` is the sparsity term.
    p_include
        ``[B, S, K]`` softmax include probability (PT-RAG only).
    delta
        ``[B, S, G]`` the change before the ReLU (``pred = relu(base + delta)``): the decoder's,
        plus the selected entries' mean observed shift for ``pt_rag_response``.
    same_cell_type
        ``[B, K]`` bool, the candidate entry is of the query's cell type (``pt_rag_response``).
    agreement
        ``[B, K]`` response agreement of each candidate with the query, NaN where undefined
        (``pt_rag_response`` with ``response_agreement``).
    """

    pred: torch.Tensor
    candidates: torch.Tensor | None = None
    similarity: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    p_include: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    same_cell_type: torch.Tensor | None = None
    agreement: torch.Tensor | None = None


class PerturbationModel(nn.Module):
    """Set generator for STATE, STATE+GenePT, Vanilla RAG, PT-RAG and PT-RAG over responses.

    Parameters
    ----------
    cfg
        Model options (validated here).
    n_genes
        Number of output genes ``G``.
    cell_input_dim
        Width ``Dc`` of what the cell encoder reads.
    pert_dim
        Width ``Dp`` of perturbation vectors (one-hot classes or embedding width).
    database
        ``[N, Dp]`` raw vectors of the **training** perturbations only; required for the RAG
        conditionings (ignored for ``none``). Stored as buffers (raw + L2-normalised) in
        ``state_dict``. To rebuild a model from a checkpoint, a placeholder of any values (even
        another number of rows) may be passed; ``load_state_dict`` restores vectors and names.
    database_names
        Names of the database rows (kept as ``database_names`` and in the ``state_dict``).
    responses
        The response database of ``pt_rag_response`` (training groups only); a placeholder of the
        right widths (:func:`ptrag.nn.responses.placeholder_index`) to rebuild from a checkpoint.

    Notes
    -----
    Parameter count (``H`` hidden, ``L`` blocks, ``F`` ffn, ``Lc`` cell-encoder layers)::

        cell encoder   Dc*H + H + (Lc-1)*(H*H + 3H)
        pert encoder   Dp*H + H + H*H + H
        backbone       2H + L*(4H^2 + 3*H*F + 2H)
        decoder        H*H + H + H*G + G
        vanilla_rag    + 4H^2 + 4H                       (nn.MultiheadAttention)
        pt_rag         + 6H + (3H^2 + H) + (2H + 2) + (3H^2 + H)
        pt_rag_resp.   pt_rag + 2H (e_same) + R*H + H + H*H + H (response encoder, R summary width) + 4
    """

    def __init__(
        self,
        cfg: ModelConfig,
        n_genes: int,
        cell_input_dim: int,
        pert_dim: int,
        database: torch.Tensor | None = None,
        database_names: Sequence[str] | None = None,
        responses: ResponseIndex | None = None,
    ) -> None:
        super().__init__()
        cfg.validate()
        for name, value in (("n_genes", n_genes), ("cell_input_dim", cell_input_dim), ("pert_dim", pert_dim)):
            if int(value) < 1:
                raise PtragError(f"{name} must be >= 1 (got {value}).")
        self.cfg = cfg
        self.n_genes = int(n_genes)
        self.cell_input_dim = int(cell_input_dim)
        self.pert_dim = int(pert_dim)
        h = cfg.hidden

        self.cell_encoder = CellEncoder(cell_input_dim, h, cfg.cell_encoder_layers, cfg.dropout)
        self.pert_encoder = PertEncoder(pert_dim, h, cfg.dropout)
        self.backbone = SetTransformer(h, cfg.n_layers, cfg.n_heads, cfg.ffn, cfg.dropout)
        self.decoder = Decoder(h, n_genes)

        self.index: PerturbationIndex | None = None
        self.cross_attn: nn.MultiheadAttention | None = None
        self.selector: TripletSelector | None = None
        self.responses: ResponseIndex | None = None
        if cfg.conditioning == "pt_rag_response":
            self._init_responses(responses)
        elif cfg.conditioning != "none":
            if database is None:
                raise PtragError(
                    f"conditioning {cfg.conditioning!r} needs a retrieval database (the training "
                    "perturbations' vectors); none was given."
                )
            database = torch.as_tensor(database)
            if database.ndim != 2 or database.shape[1] != pert_dim:
                raise PtragError(
                    f"retrieval database must have shape [N, pert_dim={pert_dim}] (got {tuple(database.shape)})."
                )
            if cfg.topk > database.shape[0] - 1:
                raise PtragError(
                    f"model option topk = {cfg.topk} exceeds the {database.shape[0]} training perturbations "
                    f"of the retrieval database minus the query: use topk <= {database.shape[0] - 1}."
                )
            self.index = PerturbationIndex(database, database_names)
            if cfg.conditioning == "vanilla_rag":
                self.cross_attn = nn.MultiheadAttention(h, cfg.n_heads, dropout=cfg.dropout, batch_first=True)
            else:
                self.selector = TripletSelector(h, cfg.tau, identity_init=cfg.identity_init)

    def _init_responses(self, responses: ResponseIndex | None) -> None:
        """The response database and the parts that read it (``pt_rag_response``)."""
        cfg, h = self.cfg, self.cfg.hidden
        if responses is None:
            raise PtragError("conditioning 'pt_rag_response' needs a response database (the training groups).")
        if responses.raw.shape[1] != self.pert_dim or responses.shift.shape[1] != self.n_genes:
            raise PtragError(
                f"response database must have [E, pert_dim={self.pert_dim}] vectors and [E, n_genes={self.n_genes}] "
                f"shifts (got {tuple(responses.raw.shape)} and {tuple(responses.shift.shape)})."
            )
        if cfg.topk > len(responses) - 1:
            raise PtragError(
                f"model option topk = {cfg.topk} exceeds the {len(responses)} training groups of the response "
                f"database minus the query's own: use topk <= {len(responses) - 1}."
            )
        self.responses = responses
        self.selector = TripletSelector(h, cfg.tau, identity_init=cfg.identity_init)
        r = responses.summary.shape[1]
        self.response_encoder = PertEncoder(r, h, cfg.dropout) if cfg.response_context else None
        self.same_cell_type = nn.Embedding(2, h)  # e_same: the entry is of the query's cell type or not
        nn.init.normal_(self.same_cell_type.weight, std=0.02)
        if cfg.response_agreement:  # [gain, centre, log T, own-share logit] of the agreement's uses
            self.agreement = nn.Parameter(torch.tensor([10.0, 0.3, math.log(0.05), math.log(0.3 / 0.7)]))

    # ------------------------------------------------------------------ helpers
    @property
    def database_names(self) -> list[str] | None:
        """Names of the retrieval database rows (``None`` without a database or names)."""
        return None if self.index is None else self.index.names

    def query_index(self, names: Sequence[str]) -> torch.Tensor:
        """``[len(names)]`` long rows of ``names`` in the retrieval database (``-1`` if absent).

        Parameters
        ----------
        names
            Query perturbation name of each set.

        Returns
        -------
        torch.Tensor
            Long tensor on the model's device.
        """
        if self.index is None:
            return torch.full((len(names),), -1, dtype=torch.long)
        return self.index.query_index(names)

    def _check_inputs(self, ctrl_expr, cell_input, pert_vec, query_index) -> None:
        if ctrl_expr.ndim != 3 or ctrl_expr.shape[-1] != self.n_genes:
            raise PtragError(f"ctrl_expr must be [B, S, G={self.n_genes}] (got {tuple(ctrl_expr.shape)}).")
        b, s = ctrl_expr.shape[:2]
        if tuple(cell_input.shape) != (b, s, self.cell_input_dim):
            raise PtragError(
                f"cell_input must be [B={b}, S={s}, {self.cell_input_dim}] (got {tuple(cell_input.shape)})."
            )
        if tuple(pert_vec.shape) != (b, self.pert_dim):
            raise PtragError(f"pert_vec must be [B={b}, {self.pert_dim}] (got {tuple(pert_vec.shape)}).")
        if tuple(query_index.shape) != (b,):
            raise PtragError(f"query_index must be [B={b}] (got {tuple(query_index.shape)}).")

    # ------------------------------------------------------------------ forward
    def _encode_contexts(self, idx: torch.Tensor, encode) -> torch.Tensor:
        """``encode(rows)`` of the retrieved candidates ``idx`` ``[B, K]`` -> ``[B, K, H]``.

        The sets of a batch retrieve overlapping candidates (similar queries have similar
        neighbours), so each distinct database row is encoded once and gathered: the same
        values as encoding every ``(b, k)``, with fewer rows through the encoder. With dropout
        in training every retrieval is encoded on its own, so each draws its own mask.
        """
        if self.training and self.cfg.dropout > 0:
            return encode(idx)
        rows, inverse = torch.unique(idx, return_inverse=True)
        return encode(rows)[inverse]

    def forward(
        self,
        ctrl_expr: torch.Tensor,
        cell_input: torch.Tensor,
        pert_vec: torch.Tensor,
        query_index: torch.Tensor,
        sample_selection: bool | None = None,
        query_cell_type: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Predict the perturbed set of each control set.

        Parameters
        ----------
        ctrl_expr
            ``[B, S, G]`` control cells' log-expression (the residual base).
        cell_input
            ``[B, S, Dc]`` what the cell encoder reads (expression, obsm embedding, PCA scores).
        pert_vec
            ``[B, Dp]`` query perturbation vectors.
        query_index
            ``[B]`` long: the query's row in the retrieval database, ``-1`` when absent; that
            row is excluded from the query's candidates. For ``pt_rag_response``: the query's
            perturbation id in the response database (``-1``: no training group), whose entry
            in ``query_cell_type`` is excluded. Ignored for ``conditioning="none"``.
        sample_selection
            PT-RAG only. ``None``: Gumbel sampling in training, ``cfg.eval_selection`` in eval.
            ``True``: always sample. ``False``: always the noise-free threshold (with the
            straight-through gradient of ``p_include`` when gradients are enabled).
        query_cell_type
            ``[B]`` long cell-type id of each set (``pt_rag_response``; ``-1``: unknown).

        Returns
        -------
        ModelOutput
            Prediction and, for the RAG conditionings, retrieval and selection tensors.
        """
        self._check_inputs(ctrl_expr, cell_input, pert_vec, query_index)
        h_ctrl = self.cell_encoder(cell_input)  # [B, S, H]
        h_pert = self.pert_encoder(pert_vec)  # [B, H]
        out = ModelOutput(pred=ctrl_expr)
        if self.responses is not None:
            if query_cell_type is None:
                query_cell_type = torch.full_like(query_index, -1)
            query_cell_type = query_cell_type.to(query_index.device)
            if self.response_encoder is not None:  # the query's own response elsewhere joins h_pert
                own = self.responses.own_summary(query_index, query_cell_type)
                h_pert = h_pert + self.response_encoder(own.to(h_pert.dtype))
        if self.cfg.conditioning == "none":
            z = h_ctrl + h_pert[:, None, :]
        elif self.cfg.conditioning == "vanilla_rag":
            h_ctx = self._retrieve(pert_vec, query_index, out)
            q = h_ctrl + h_pert[:, None, :]
            attn, _ = self.cross_attn(q, h_ctx, h_ctx, need_weights=False)
            z = q + attn
        else:
            if self.responses is None:
                h_ctx = self._retrieve(pert_vec, query_index, out)
            else:
                h_ctx = self._retrieve_responses(pert_vec, query_index, query_cell_type, out)
            z = self._select(h_ctrl, h_pert, h_ctx, sample_selection, out)
        if self.responses is not None and self.cfg.response_readout:
            # the readout gives the set's mean change, the network each cell's departure from it
            out.delta = self.decoder.centred(
                self.backbone(z),
                mean_change(self.responses, self.cfg, self.agreement, ctrl_expr, query_index, query_cell_type, out),
            )
        else:
            out.delta = self.decoder(self.backbone(z))
        out.pred = torch.relu(ctrl_expr + out.delta)
        return out

    def _retrieve(self, pert_vec: torch.Tensor, query_index: torch.Tensor, out: ModelOutput) -> torch.Tensor:
        """Stage 1 over the gene vectors of the training perturbations; ``h_ctx`` ``[B, K, H]``."""
        assert self.index is not None
        sim, idx = self.index.search(pert_vec, self.cfg.topk, query_index.to(pert_vec.device))
        out.candidates, out.similarity = idx, sim
        raw = self.index.raw
        return self._encode_contexts(idx, lambda rows: self.pert_encoder(raw[rows].to(pert_vec.dtype)))

    def _retrieve_responses(
        self, pert_vec: torch.Tensor, query_pert: torch.Tensor, query_ct: torch.Tensor, out: ModelOutput
    ) -> torch.Tensor:
        """Stage 1 over the training groups; ``h_k = PertEnc(gene_k) + RespEnc(summary_k) + e_same``."""
        assert self.responses is not None
        db = self.responses
        cfg = self.cfg
        found = db.search(
            pert_vec,
            query_pert,
            query_ct,
            cfg.topk,
            cfg.response_candidates,
            cfg.response_agreement,
            model_transfer(db, cfg),
        )
        idx, same = found.idx, found.same
        out.candidates, out.similarity, out.same_cell_type = idx, found.sim, same
        out.agreement = found.agree

        def encode(rows: torch.Tensor) -> torch.Tensor:
            h = self.pert_encoder(db.raw[rows].to(pert_vec.dtype))
            if self.response_encoder is not None:
                h = h + self.response_encoder(db.summary[rows].to(pert_vec.dtype))
            return h

        return self._encode_contexts(idx, encode) + self.same_cell_type(same.long())

    def _select(self, h_ctrl, h_pert, h_ctx, sample_selection: bool | None, out: ModelOutput) -> torch.Tensor:
        """PT-RAG's Stage 2 and aggregation: ``z`` ``[B, S, H]``; sets ``out.weights`` / ``p_include``."""
        assert self.selector is not None
        fused = self.cfg.fused_triplets
        logits = self.selector.scores(h_ctrl, h_pert, h_ctx, fused=fused)  # [B, S, K, 2]
        if out.agreement is not None:  # include logit + gain * (agreement - centre) where defined
            prior = agreement_prior(out.agreement, self.agreement[0], self.agreement[1])
            logits = logits + torch.stack([torch.zeros_like(prior), prior], -1)[:, None].to(logits.dtype)
        if sample_selection is None:
            mode = self.cfg.train_selection if self.training else self.cfg.eval_selection
        else:
            mode = "sample" if sample_selection else "threshold"
        rule = self.cfg.empty_selection
        w, p_include = self.selector.select(logits, mode, "best" if rule == "best" else "none")
        z = self.selector.aggregate(
            w, h_ctrl, h_pert, h_ctx, fused=fused, null=rule == "null", mean=self.cfg.aggregation == "mean"
        )
        if rule == "keep":
            z = z + h_ctrl + h_pert[:, None, :]
        out.weights, out.p_include = w, p_include
        return z
