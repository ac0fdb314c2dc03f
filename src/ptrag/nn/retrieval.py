"""Retrieval for the RAG conditionings (pure torch).

Stage 1 (fixed, non-differentiable): :func:`retrieve` finds the top-K most cosine-similar
*training* perturbations of each query, once per set, with the query's own database row masked
out. :class:`PerturbationIndex` holds the database as buffers (so it travels in the
``state_dict`` / checkpoint, names included) and answers queries.

Stage 2 (learned, PT-RAG): :class:`TripletSelector` scores each (cell, candidate) triplet
``c_k = [h_ctrl ; h_pert ; h_k]`` with a LayerNorm + 2-layer MLP, draws a hard 0/1 selection
with straight-through Gumbel-Softmax in training (deterministic threshold at evaluation) and
aggregates the projected triplets ``sum_k w_k h'_k``. Its *fused* form never builds the
``[B, S, K, 3H]`` triplet tensor (see :meth:`TripletSelector.scores`).

Nothing here normalises across the batch: one cell's selection depends only on its own
cell, its own set's perturbation and that set's candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ptrag.errors import PtragError, check_choice

_NORM_EPS = 1e-12


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension (a zero vector stays zero).

    Parameters
    ----------
    x
        ``[..., D]`` vectors.

    Returns
    -------
    torch.Tensor
        Unit vectors (or zeros), same shape.
    """
    return F.normalize(x, p=2.0, dim=-1, eps=_NORM_EPS)


@torch.no_grad()
def retrieve(
    query_unit: torch.Tensor, db_unit: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-K retrieval with the query's own row excluded (vectorised, no gradient).

    Exclusion is **by index only**: ``exclude[b]`` is the row of query ``b`` in the database
    (``-1`` when the query is not in it, e.g. an unseen perturbation at prediction time). A
    *different* database row whose vector happens to equal the query's (a duplicate embedding
    under another name) is not excluded and is retrieved at cosine 1; deduplicating the
    database is the caller's business.

    Parameters
    ----------
    query_unit
        ``[B, D]`` L2-normalised query vectors (one per set).
    db_unit
        ``[N, D]`` L2-normalised database vectors.
    k
        Number of candidates ``K``; at most ``N - 1`` when some query is excluded, ``N`` otherwise.
    exclude
        ``[B]`` long, the database row to mask for each query, or ``-1`` for none. ``None``
        excludes nothing.

    Returns
    -------
    sim : torch.Tensor
        ``[B, K]`` cosine similarities, sorted descending.
    idx : torch.Tensor
        ``[B, K]`` long database rows of the candidates.
    """
    if query_unit.ndim != 2 or db_unit.ndim != 2 or query_unit.shape[1] != db_unit.shape[1]:
        raise PtragError(
            f"retrieve: query [B, D] and database [N, D] must share D (got {tuple(query_unit.shape)} "
            f"and {tuple(db_unit.shape)})."
        )
    b, n = query_unit.shape[0], db_unit.shape[0]
    scores = query_unit @ db_unit.T  # [B, N]
    n_avail = n
    if exclude is not None:
        if exclude.shape != (b,):
            raise PtragError(f"retrieve: exclude must have shape [{b}] (got {tuple(exclude.shape)}).")
        if bool((exclude >= n).any()) or bool((exclude < -1).any()):
            raise PtragError(f"retrieve: exclude holds rows outside [-1, {n - 1}].")
        has = exclude >= 0
        if bool(has.any()):
            n_avail = n - 1
            rows = torch.arange(b, device=scores.device)[has]
            scores = scores.index_put((rows, exclude[has].to(scores.device)), scores.new_tensor(float("-inf")))
    if not 1 <= k <= n_avail:
        raise PtragError(
            f"topk = {k} candidates asked but only {n_avail} database rows are available "
            f"(database of {n} training perturbations, the query excluded): lower topk."
        )
    sim, idx = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    return sim, idx


def build_query_index(query_names: Sequence[str], database_names: Sequence[str]) -> torch.Tensor:
    """Map perturbation names to their database rows (``-1`` for names not in the database).

    Parameters
    ----------
    query_names
        One name per set of the batch.
    database_names
        Names of the database rows, in row order (must be unique).

    Returns
    -------
    torch.Tensor
        ``[len(query_names)]`` long tensor of rows, ``-1`` where the name is absent.
    """
    lookup = {name: i for i, name in enumerate(database_names)}
    if len(lookup) != len(database_names):
        raise PtragError("retrieval database names are not unique: each training perturbation must appear once.")
    return torch.tensor([lookup.get(name, -1) for name in query_names], dtype=torch.long)


class PerturbationIndex(nn.Module):
    """Retrieval database of training perturbations, stored as buffers.

    Buffers ``raw`` (``[N, D]``, the vectors as given, read by the perturbation encoder) and
    ``unit`` (their L2-normalised copy, used for cosine search) live in the ``state_dict``; the
    row names travel there too as the module's extra state, so a checkpoint is self-contained.
    Loading a ``state_dict`` whose database has a different number of rows resizes the buffers.

    Parameters
    ----------
    vectors
        ``[N, D]`` vectors of the training perturbations only.
    names
        ``N`` unique names in row order (optional; ``None`` stores no names).
    """

    def __init__(self, vectors: torch.Tensor, names: Sequence[str] | None = None) -> None:
        super().__init__()
        if vectors.ndim != 2 or vectors.shape[0] < 1:
            raise PtragError(f"retrieval database must be a non-empty [N, D] matrix (got {tuple(vectors.shape)}).")
        vectors = vectors.detach().to(torch.float32)
        if not bool(torch.isfinite(vectors).all()):
            raise PtragError("retrieval database holds NaN or infinite values: check the gene-embedding table.")
        self.register_buffer("raw", vectors.clone())
        self.register_buffer("unit", l2_normalise(vectors))
        self.names: list[str] | None = None
        self._set_names(names)

    def _set_names(self, names: Sequence[str] | None) -> None:
        if names is None:
            self.names = None
            return
        names = [str(x) for x in names]
        if len(names) != self.raw.shape[0]:
            raise PtragError(
                f"database_names has {len(names)} names for {self.raw.shape[0]} database rows: give one name per row."
            )
        if len(set(names)) != len(names):
            raise PtragError("database_names are not unique: each training perturbation must appear once.")
        self.names = names

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def query_index(self, names: Sequence[str]) -> torch.Tensor:
        """Rows of ``names`` in the database (``-1`` where absent), on the buffers' device."""
        if self.names is None:
            raise PtragError("this retrieval database was built without database_names: cannot look names up.")
        return build_query_index(names, self.names).to(self.raw.device)

    def search(self, query_vec: torch.Tensor, k: int, exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K cosine candidates of raw query vectors ``[B, D]``; see :func:`retrieve`."""
        # float32 cosine search even under autocast: a bf16 matmul would reorder near ties
        with torch.autocast(device_type=query_vec.device.type, enabled=False):
            q = l2_normalise(query_vec.detach().to(self.unit.dtype))
            return retrieve(q, self.unit, k, exclude)

    def get_extra_state(self) -> dict:
        return {"names": None if self.names is None else list(self.names)}

    def set_extra_state(self, state: dict) -> None:
        names = state.get("names") if isinstance(state, dict) else None
        self.names = None if names is None else [str(x) for x in names]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # noqa: D401,E501
        # Accept a database of another size: resize the buffers before the copy.
        for name in ("raw", "unit"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


_CHUNK_ELEMENTS = 1 << 18  # elements of one [b, S, K, H] block: stays in the CPU's cache


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
    and reduce with: ``g_a = sum_k gx r``, ``g_c = sum_s gx r`` and, since
    ``a + c = (x - bias) / r``, ``g_r = (sum_h gx x - gx . bias) / r``.
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
        out = a.new_empty(a.shape[0], a.shape[1], c.shape[1], w2.shape[0])
        for blk in _TripletScorer._blocks(a, c):
            x = torch.addcmul(bias, a[blk, :, None, :] + c[blk, None, :, :], r[blk, ..., None])
            out[blk] = torch.nn.functional.linear(F.gelu(x), w2, b2)
        ctx.save_for_backward(a, c, r, bias, w2)
        return out

    @staticmethod
    def backward(ctx, g_out):
        a, c, r, bias, w2 = ctx.saved_tensors
        g_a, g_c, g_r = torch.empty_like(a), torch.empty_like(c), torch.empty_like(r)
        g_bias, g_w2 = torch.zeros_like(bias), torch.zeros_like(w2)
        g_out = g_out.contiguous()
        for blk in _TripletScorer._blocks(a, c):
            x = torch.addcmul(bias, a[blk, :, None, :] + c[blk, None, :, :], r[blk, ..., None])
            go = g_out[blk]
            y = F.gelu(x)
            g_w2 += go.reshape(-1, go.shape[-1]).T @ y.reshape(-1, y.shape[-1])
            gx = torch.ops.aten.gelu_backward(go @ w2, x)
            rb = r[blk]
            gxr = gx * rb[..., None]
            g_a[blk] = gxr.sum(dim=2)
            g_c[blk] = gxr.sum(dim=1)
            g_r[blk] = (torch.linalg.vecdot(gx, x) - gx @ bias) / rb
            g_bias += gx.sum(dim=(0, 1, 2))
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
        mode: Literal["sample", "threshold", "expected"],
        empty: Literal["none", "best"] = "none",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Selection weights from logits.

        ``sample``: straight-through Gumbel-Softmax (``torch.nn.functional.gumbel_softmax``):
        the forward value is exactly 0/1 and includes candidate ``k`` with probability
        ``p_k = softmax(logits)[..., 1]`` (the hard sample is the argmax of the perturbed
        logits, whatever ``tau``), the gradient is that of the soft Gumbel sample.
        ``expected``: the expectation of the training selection, ``E[w_k]`` (no noise; soft
        values in ``[0, 1]``, differentiable). ``threshold``: ``w = [p_k > 0.5]`` with the
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
        check_choice("selection mode", mode, ("sample", "threshold", "expected"))
        check_choice("empty-selection rule", empty, ("none", "best"))
        p_include = logits.softmax(dim=-1)[..., 1]
        best = F.one_hot(p_include.argmax(dim=-1), p_include.shape[-1]).to(p_include.dtype)
        if mode == "expected":
            w = p_include
            if empty == "best":
                w = w + torch.prod(1.0 - p_include, dim=-1, keepdim=True) * best
            return (w if torch.is_grad_enabled() else w.detach()), p_include
        if mode == "sample":
            # same estimator as F.gumbel_softmax(hard=True), written as hard + (soft - soft) so
            # that the forward value is exactly 0/1 (torch's hard - soft + soft can be off by an ulp)
            soft = F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=-1)[..., 1]
            hard = (soft > 0.5).to(logits.dtype)  # argmax of the two-class sample
        else:
            soft = p_include
            hard = (p_include > 0.5).to(logits.dtype)
        if empty == "best":
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
