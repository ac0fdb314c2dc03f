"""PT-RAG's Stage 2: per-cell selection of the retrieved candidates (pure torch).

:class:`TripletSelector` scores each (cell, candidate) triplet ``c_k = [h_ctrl ; h_pert ; h_k]``
with a LayerNorm + 2-layer MLP, draws a hard 0/1 selection with straight-through
Gumbel-Softmax in training (the expected selection at evaluation) and aggregates the projected
triplets ``sum_k w_k h'_k``. Its *fused* form never builds the ``[B, S, K, 3H]`` triplet
tensor (see :meth:`TripletSelector.scores`); :class:`_TripletScorer` computes the one
``B x S x K x H`` activation block by block (float32 on the CPU: one compiled loop,
:mod:`ptrag.nn.scorer_cpu`).

Nothing here normalises across the batch: one cell's selection depends only on its own
cell, its own set's perturbation and that set's candidates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ptrag.errors import PtragError, check_choice

_CHUNK_ELEMENTS = 1 << 18  # elements of one [b, S, K, H] block: stays in the CPU's cache
_COMPILED = True  # float32 CPU blocks through ptrag.nn.scorer_cpu; see torch_scorer


@contextlib.contextmanager
def torch_scorer() -> Iterator[None]:
    """Within this block the scorer runs as torch operations, not the compiled CPU loop.

    Same function, slower; what :class:`torch.utils.flop_counter.FlopCounterMode` can count
    (it sees torch's matrix products, not a compiled loop) and the reference the benchmark
    times the loop against.
    """
    global _COMPILED
    before, _COMPILED = _COMPILED, False
    try:
        yield
    finally:
        _COMPILED = before


def _compiled(*tensors: torch.Tensor) -> bool:
    """Whether the scorer block runs as :mod:`ptrag.nn.scorer_cpu`'s compiled loop."""
    if not _COMPILED or any(t.device.type != "cpu" for t in tensors):
        return False
    from ptrag.nn import scorer_cpu

    return scorer_cpu.usable(*tensors)


class _TripletScorer(torch.autograd.Function):
    """Second half of the fused PT-RAG scorer, computed block by block.

    ``logits = gelu((a[:, :, None] + c[:, None]) * r[..., None] + bias) @ w2.T + b2`` with
    ``a`` ``[B, S, H]`` (per cell), ``c`` ``[B, K, H]`` (per candidate), ``r`` ``[B, S, K]``
    (per pair, a reciprocal standard deviation, > 0), ``bias`` ``[H]``, ``w2`` ``[2, H]``,
    ``b2`` ``[2]``; output ``[B, S, K, 2]``.

    The hidden activation is the only ``B x S x K x H`` quantity of PT-RAG. Autograd would keep
    it (and the pre-activation) for the backward pass and stream several such tensors through
    memory; here forward and backward walk over blocks of sets small enough to stay in cache,
    keep nothing of that size between the passes (the block is recomputed in the backward),
    and reduce with: ``g_a = sum_k gx r``, ``g_c = sum_s gx r``, ``g_r = sum_h gx (a + c)`` and
    ``g_bias = sum gx``; ``gx`` is scaled by ``r`` in place once the unscaled sums are taken.
    Float32 on the CPU takes :mod:`ptrag.nn.scorer_cpu` instead: the same function as one
    compiled loop per pass, three to four times faster (unless within :func:`torch_scorer`).
    """

    @staticmethod
    def _blocks(a: torch.Tensor, c: torch.Tensor):
        b, s, h = a.shape
        if a.device.type != "cpu":  # accelerators want one large kernel, not cache-sized blocks
            return [slice(0, b)]
        step = max(1, _CHUNK_ELEMENTS // max(1, s * c.shape[1] * h))
        return [slice(i, min(b, i + step)) for i in range(0, b, step)]

    @staticmethod
    def forward(ctx, a, c, r, bias, w2, b2):
        ctx.save_for_backward(a, c, r, bias, w2)
        if _compiled(a, c, r, bias, w2, b2):  # float32 on the CPU: one compiled loop
            from ptrag.nn import scorer_cpu

            return scorer_cpu.forward(a, c, r, bias, w2, b2)
        out = a.new_empty(a.shape[0], a.shape[1], c.shape[1], w2.shape[0])
        for blk in _TripletScorer._blocks(a, c):
            x = torch.addcmul(bias, a[blk, :, None, :] + c[blk, None, :, :], r[blk, ..., None])
            out[blk] = torch.nn.functional.linear(F.gelu(x), w2, b2)
        return out

    @staticmethod
    def backward(ctx, g_out):
        a, c, r, bias, w2 = ctx.saved_tensors
        if _compiled(a, c, r, bias, w2, g_out):
            from ptrag.nn import scorer_cpu

            return scorer_cpu.backward(a, c, r, bias, w2, g_out)
        g_a, g_c, g_r = torch.empty_like(a), torch.empty_like(c), torch.empty_like(r)
        g_bias, g_w2 = torch.zeros_like(bias), torch.zeros_like(w2)
        g_out = g_out.contiguous()
        for blk in _TripletScorer._blocks(a, c):
            centred = a[blk, :, None, :] + c[blk, None, :, :]
            x = torch.addcmul(bias, centred, r[blk, ..., None])
            go = g_out[blk]
            g_w2.addmm_(go.reshape(-1, go.shape[-1]).T, F.gelu(x).reshape(-1, x.shape[-1]))
            gx = torch.ops.aten.gelu_backward(go @ w2, x)
            g_r[blk] = torch.linalg.vecdot(gx, centred)
            g_bias += gx.sum(dim=(0, 1, 2))
            gx.mul_(r[blk, ..., None])  # gx r, in place: the unscaled sums are taken
            g_a[blk] = gx.sum(dim=2)
            g_c[blk] = gx.sum(dim=1)
        g_b2 = g_out.sum(dim=(0, 1, 2))
        return g_a, g_c, g_r, g_bias, g_w2, g_b2


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 sum and sum of squares over the last dimension."""
    x = x.float()
    return x.sum(-1), x.square().sum(-1)


class TripletSelector(nn.Module):
    """PT-RAG stage 2: per-cell, per-candidate Gumbel selection and projected aggregation.

    For cell ``s`` of set ``b`` and candidate ``k`` the triplet is
    ``c = [h_ctrl[b,s] ; h_pert[b] ; h_ctx[b,k]]`` (``3H``).

    * scorer: ``LayerNorm(3H) -> Linear(3H, H) -> GELU -> Linear(H, 2)`` gives logits
      ``(exclude, include)``;
    * projection: ``h' = Linear(3H, H)(c)``, on the **raw** triplet, as in the paper
      (``h'_k = MLP_proj(c_k)``; the LayerNorm belongs to the scorer). The selection decision
      is thereby scale-invariant, while the projection keeps the encoders' scale, which is also
      the scale of the other terms of ``z`` (``h_ctrl + h_pert`` in the ``keep`` form).

    Parameters
    ----------
    hidden
        Width ``H``.
    tau
        Gumbel-Softmax temperature (> 0).

    Notes
    -----
    Parameter count: ``6H`` (LayerNorm) ``+ (3H*H + H) + (2H + 2) + (3H*H + H)``.
    """

    def __init__(self, hidden: int, tau: float = 0.5, identity_init: bool = False) -> None:
        super().__init__()
        if tau <= 0:
            raise PtragError(f"tau must be > 0 (got {tau}).")
        self.hidden = hidden
        self.tau = float(tau)
        self.norm = nn.LayerNorm(3 * hidden)
        self.score_in = nn.Linear(3 * hidden, hidden)
        self.act = nn.GELU()
        self.score_out = nn.Linear(hidden, 2)
        self.proj = nn.Linear(3 * hidden, hidden)
        if identity_init:
            # proj([h_ctrl; h_pert; h_k]) = h_ctrl + h_pert + (small) W_k h_k at initialisation
            with torch.no_grad():
                eye = torch.eye(hidden)
                self.proj.weight[:, : 2 * hidden] = torch.cat([eye, eye], dim=1)
                self.proj.weight[:, 2 * hidden :] *= 0.1
                self.proj.bias.zero_()

    # ---------------------------------------------------------------- scoring
    def scores(
        self, h_ctrl: torch.Tensor, h_pert: torch.Tensor, h_ctx: torch.Tensor, fused: bool = True
    ) -> torch.Tensor:
        """Selection logits ``(exclude, include)`` of every (cell, candidate) pair.

        The fused form uses that a Linear on a concatenation is a sum of per-part Linears and
        that LayerNorm statistics of the concatenation follow from per-part sums and sums of
        squares. With ``gamma``, ``beta`` the LayerNorm affine, ``W`` the first scorer layer
        and ``x_p`` the three parts::

            mu      = (sum x_a + sum x_b + sum x_c) / 3H
            var     = (sum x_a^2 + sum x_b^2 + sum x_c^2) / 3H - mu^2
            W LN(c) = (sum_p (W_p * gamma_p) x_p  -  mu * (W gamma)) / sqrt(var + eps) + W beta

        so only ``[B, S, H]``, ``[B, H]`` and ``[B, K, H]`` products are computed before the
        broadcast to ``[B, S, K, H]``; the ``[B, S, K, 3H]`` triplets never exist.

        Parameters
        ----------
        h_ctrl
            ``[B, S, H]`` cell embeddings.
        h_pert
            ``[B, H]`` query perturbation embeddings.
        h_ctx
            ``[B, K, H]`` candidate embeddings.
        fused
            Memory-light exact form (default) or the naive materialising form.

        Returns
        -------
        torch.Tensor
            ``[B, S, K, 2]`` logits.
        """
        if not fused:
            c = self._triplets(h_ctrl, h_pert, h_ctx)
            return self.score_out(self.act(self.score_in(self.norm(c))))
        h = self.hidden
        d = 3 * h
        w = self.score_in.weight  # [H, 3H]
        gamma, beta = self.norm.weight, self.norm.bias
        w_t = w * gamma  # W diag(gamma), [H, 3H]
        wa, wb, wc = w_t[:, :h], w_t[:, h : 2 * h], w_t[:, 2 * h :]
        u = w_t.sum(dim=1)  # W gamma, [H]
        bias = self.score_in.bias + w @ beta  # [H]
        # moments in float32 even under autocast (E[x^2] - mu^2 must not be formed in bf16/fp16,
        # just as torch runs layer_norm in float32 under autocast)
        sa, qa = _moments(h_ctrl)  # [B, S]
        sb, qb = _moments(h_pert)  # [B]
        sc, qc = _moments(h_ctx)  # [B, K]
        mu = (sa[:, :, None] + sb[:, None, None] + sc[:, None, :]) / d  # [B, S, K]
        ex2 = (qa[:, :, None] + qb[:, None, None] + qc[:, None, :]) / d
        rstd = torch.rsqrt((ex2 - mu.square()).clamp_min(0.0) + self.norm.eps)  # [B, S, K]
        # per-part products, each with its share of the "- mu * W gamma" centring term
        pa = h_ctrl @ wa.T - (sa / d)[..., None] * u  # [B, S, H]
        pb = h_pert @ wb.T - (sb / d)[..., None] * u  # [B, H]
        pc = h_ctx @ wc.T - (sc / d)[..., None] * u  # [B, K, H]
        # gelu((pa + pb + pc) * rstd + bias): the first (and only) [B, S, K, H] tensor
        if isinstance(self.act, nn.GELU) and self.act.approximate == "none" and not torch.is_autocast_enabled():
            return _TripletScorer.apply(pa, pc + pb[:, None, :], rstd, bias, self.score_out.weight, self.score_out.bias)
        centred = pa[:, :, None, :] + (pc + pb[:, None, :])[:, None, :, :]
        return self.score_out(self.act(torch.addcmul(bias, centred, rstd[..., None])))

    # ------------------------------------------------------------ aggregation
    def aggregate(
        self,
        w: torch.Tensor,
        h_ctrl: torch.Tensor,
        h_pert: torch.Tensor,
        h_ctx: torch.Tensor,
        fused: bool = True,
        null: bool = False,
        mean: bool = False,
    ) -> torch.Tensor:
        """``sum_k w[b,s,k] * proj(c[b,s,k])`` for every cell (``+ proj([h_ctrl; h_pert; 0])``
        with ``null``: a null-context triplet that always enters the sum); divided by the
        total weight (``sum_k w``, plus 1 for the null triplet) with ``mean``.

        Fused: ``proj(c) = A[b,s] + Bp[b] + C[b,k] + bias`` with per-part products, so the sum is
        ``(sum_k w) * (A + Bp + bias) + w @ C`` (a batched matmul; no ``[B, S, K, H]`` tensor).

        Parameters
        ----------
        w
            ``[B, S, K]`` selection weights.
        h_ctrl, h_pert, h_ctx
            As in :meth:`scores`.
        fused
            Memory-light exact form (default) or the naive materialising form.
        null
            Add the null-context triplet ``proj([h_ctrl; h_pert; 0])``.
        mean
            Weighted mean instead of sum (a cell with zero total weight gets 0).

        Returns
        -------
        torch.Tensor
            ``[B, S, H]`` aggregated context.
        """
        if not fused:
            c = self._triplets(h_ctrl, h_pert, h_ctx)
            z = (w[..., None] * self.proj(c)).sum(dim=2)
            if null:
                z = z + self.proj(self._triplets(h_ctrl, h_pert, torch.zeros_like(h_ctx[:, :1])))[:, :, 0]
            if mean:
                z = z / (w.sum(dim=-1, keepdim=True) + (1.0 if null else 0.0)).clamp_min(1e-6)
            return z
        h = self.hidden
        wp = self.proj.weight
        a = h_ctrl @ wp[:, :h].T  # [B, S, H]
        bp = h_pert @ wp[:, h : 2 * h].T + self.proj.bias  # [B, H]
        c = h_ctx @ wp[:, 2 * h :].T  # [B, K, H]
        n_sel = w.sum(dim=-1, keepdim=True) + (1.0 if null else 0.0)  # [B, S, 1]
        if mean:  # (n (a + bp) + w @ c) / n, with n >= 1 under the best / null rules
            return (a + bp[:, None, :]) * (n_sel > 0) + torch.bmm(w, c) / n_sel.clamp_min(1e-6)
        return n_sel * (a + bp[:, None, :]) + torch.bmm(w, c)

    # -------------------------------------------------------------- selection
    def select(
        self,
        logits: torch.Tensor,
        mode: Literal["sample", "threshold", "expected", "all"],
        empty: Literal["none", "best"] = "none",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Selection weights from logits.

        ``sample``: straight-through Gumbel-Softmax (``torch.nn.functional.gumbel_softmax``):
        the forward value is exactly 0/1 and includes candidate ``k`` with probability
        ``p_k = softmax(logits)[..., 1]`` (the hard sample is the argmax of the perturbed
        logits, whatever ``tau``), the gradient is that of the soft Gumbel sample.
        ``expected``: the expectation of the training selection, ``E[w_k]`` (no noise; soft
        values in ``[0, 1]``, differentiable). ``all``: every candidate (no selection).
        ``threshold``: ``w = [p_k > 0.5]`` with the
        straight-through gradient of ``p_k`` when gradients are enabled.

        ``empty="best"``: a cell whose selection is empty gets its highest-scoring candidate
        (``argmax_k p_k``) instead, so that every cell keeps at least one triplet. Under
        sampling the candidates are drawn independently, so the selection is empty with
        probability ``prod_j (1 - p_j)`` and the expectation is
        ``E[w_k] = p_k + prod_j (1 - p_j) * [k = argmax_j p_j]``.

        Parameters
        ----------
        logits
            ``[..., K, 2]`` (exclude, include) logits.
        mode
            ``"sample"``, ``"threshold"`` or ``"expected"``.
        empty
            ``"none"`` (an empty selection stays empty) or ``"best"``.

        Returns
        -------
        w : torch.Tensor
            ``[..., K]`` selection weights.
        p_include : torch.Tensor
            ``[..., K]`` softmax include probability.
        """
        check_choice("selection mode", mode, ("sample", "threshold", "expected", "all"))
        check_choice("empty-selection rule", empty, ("none", "best"))
        # two classes: softmax(logits)[..., 1] = sigmoid(include - exclude), one [..., K] pass
        diff = logits[..., 1] - logits[..., 0]
        p_include = torch.sigmoid(diff)
        if mode == "all":  # no selection (an ablation): every candidate, weight 1
            return torch.ones_like(p_include), p_include
        best = None
        if empty == "best":
            best = F.one_hot(p_include.argmax(dim=-1), p_include.shape[-1]).to(p_include.dtype)
        if mode == "expected":
            w = p_include
            if best is not None:
                w = w + torch.prod(1.0 - p_include, dim=-1, keepdim=True) * best
            return (w if torch.is_grad_enabled() else w.detach()), p_include
        if mode == "sample":
            # same estimator as F.gumbel_softmax(hard=True), written as hard + (soft - soft) so
            # that the forward value is exactly 0/1 (torch's hard - soft + soft can be off by an ulp);
            # its soft sample, softmax((logits + g) / tau)[..., 1] with g = -log(Exp(1)) drawn as
            # torch draws it, as the sigmoid of the difference
            log_e = torch.empty_like(logits).exponential_().log()
            soft = torch.sigmoid((diff - log_e[..., 1] + log_e[..., 0]) / self.tau)
            hard = (soft > 0.5).to(logits.dtype)  # argmax of the two-class sample
        else:
            soft = p_include
            hard = (p_include > 0.5).to(logits.dtype)
        if best is not None:
            none = hard.sum(dim=-1, keepdim=True) == 0
            hard = torch.where(none, best, hard)
        w = hard + (soft - soft.detach()) if torch.is_grad_enabled() else hard
        return w, p_include

    @staticmethod
    def _triplets(h_ctrl: torch.Tensor, h_pert: torch.Tensor, h_ctx: torch.Tensor) -> torch.Tensor:
        b, s, h = h_ctrl.shape
        k = h_ctx.shape[1]
        return torch.cat(
            [
                h_ctrl[:, :, None, :].expand(b, s, k, h),
                h_pert[:, None, None, :].expand(b, s, k, h),
                h_ctx[:, None, :, :].expand(b, s, k, h),
            ],
            dim=-1,
        )
