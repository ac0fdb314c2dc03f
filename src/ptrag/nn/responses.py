"""Response-aware retrieval (``conditioning="pt_rag_response"``; pure torch).

The database holds one entry per *training* (perturbation, cell type) group, with what the
training cells observed about it: its mean change from its cell type's control mean over the
run's genes (``shift``, ``[E, G]``), a compact summary of that change (``summary``, ``[E, R]``:
its PCA-50 scores and its log cell count, standardised) and the perturbation's gene vector.
:class:`ResponseIndex` keeps all of it as buffers, so it travels in the checkpoint.

Stage 1 (fixed) ranks the entries of a query ``(p, t)`` by tiers, then by the cosine of the gene
vectors (:func:`candidate_scores`); ``candidates="both"`` (the default):

1. ``p``'s own entries in the other cell types (what the query did elsewhere);
2. the entries of ``t`` (how this cell type responded to similar perturbations);
3. the other cell types' entries of other perturbations, only to fill ``K`` when the first two
   tiers hold fewer than ``K`` entries.

The query's own entry ``(p, t)`` is never a candidate (it is a held-out group at prediction
and the answer itself in training). ``"same"`` drops tier 1 (tier 3 then takes its place as a
last resort), ``"other"`` ranks tier 3 before the target's entries. A perturbation that no cell
type trained (``p = -1``) has no tier 1: it gets its cell type's gene-vector neighbours.

**Response agreement** (:meth:`ResponseIndex.agreement`): for a query ``(p, t)`` and an entry of
perturbation ``c``, the mean over the cell types ``u != t`` in which both ``p`` and ``c`` trained of
the cosine of their observed shifts in ``u``. It says whether ``c`` acted like ``p`` where both were
seen, which the gene vectors cannot (they are blind to the cell type and to module programs), and
it never reads a group of ``t``, so the query's own group cannot leak into it. With
``agreement=True``, Stage 1 ranks the entries within a tier by ``gene cosine + agreement`` (by the
gene cosine alone where the agreement is undefined: ``p`` or ``c`` trained in no other cell
type, or the entry is ``p``'s own).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ptrag.errors import PtragError
from ptrag.nn.retrieval import l2_normalise, resize_buffers
from ptrag.nn.transfer import pair_dots, pair_similarity_sums, similarity_transfer, transfer

#: Rank offsets of the three tiers (a rank score lies in [-2, 2], so tiers never interleave).
_TIER = {"own": 16.0, "same": 8.0, "other": 0.0, "last": -8.0}
CANDIDATE_RULES = ("both", "same", "other")


def candidate_scores(
    sim: torch.Tensor,
    entry_pert: torch.Tensor,
    entry_ct: torch.Tensor,
    query_pert: torch.Tensor,
    query_ct: torch.Tensor,
    rule: str = "both",
) -> torch.Tensor:
    """Stage-1 ranking scores ``[B, E]`` of every entry for every query (higher is first).

    Parameters
    ----------
    sim
        ``[B, E]`` cosine of the query's gene vector to each entry's.
    entry_pert, entry_ct
        ``[E]`` perturbation and cell-type ids of the entries.
    query_pert, query_ct
        ``[B]`` ids of the queries (``-1``: unknown to the database).
    rule
        ``"both"``, ``"same"`` or ``"other"`` (module docstring).

    Returns
    -------
    torch.Tensor
        ``sim`` plus each entry's tier offset; ``-inf`` for the query's own entry.
    """
    own = entry_pert[None, :] == query_pert[:, None]
    same = entry_ct[None, :] == query_ct[:, None]
    tier = {
        "both": (_TIER["own"], _TIER["same"], _TIER["other"]),
        "same": (_TIER["last"], _TIER["same"], _TIER["other"]),
        "other": (_TIER["own"], _TIER["other"], _TIER["same"]),
    }[rule]
    offset = torch.where(same, tier[1], tier[2])
    offset = torch.where(own & ~same, tier[0], offset)
    scores = sim + offset
    return scores.masked_fill(own & same & (query_pert[:, None] >= 0), float("-inf"))


def agreement_prior(agree: torch.Tensor, gain: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` addition to the selector's include logit: ``gain * (agree - centre)`` where the
    agreement is defined, 0 where it is NaN (NaN-free arithmetic, so no NaN reaches a gradient)."""
    known = ~torch.isnan(agree)
    return gain * (torch.where(known, agree, 0.0) - centre) * known


def per_query(flag: bool | torch.Tensor, query_ct: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool of a choice (a bool, or ``[n_cell_types]`` bool per cell type) for queries of
    cell types ``query_ct`` (outside the table: ``True``)."""
    if isinstance(flag, bool):
        return torch.full(query_ct.shape, flag, dtype=torch.bool, device=query_ct.device)
    inside = (query_ct >= 0) & (query_ct < len(flag))
    return flag.to(query_ct.device)[query_ct.clamp(0, len(flag) - 1)] | ~inside


def choice_key(flag: bool | torch.Tensor) -> bool | tuple[bool, ...]:
    """A per-cell-type choice as a hashable value (for caches)."""
    return flag if isinstance(flag, bool) else tuple(bool(x) for x in flag.tolist())


class Retrieved(NamedTuple):
    """What :meth:`ResponseIndex.search` returns (``[B, K]`` each, in rank order)."""

    sim: torch.Tensor  #: cosine of the gene vectors (not the rank score)
    idx: torch.Tensor  #: long entry rows
    same: torch.Tensor  #: bool, the entry is of the query's cell type
    agree: torch.Tensor | None  #: response agreement, NaN where undefined (``None``: not asked for)


class ResponseIndex(nn.Module):
    """Training groups with their observed responses, as buffers (see the module docstring).

    Parameters
    ----------
    vectors
        ``[E, D]`` gene vector of each entry's perturbation.
    entry_pert, entry_ct
        ``[E]`` long ids: the perturbation (a row of the run's perturbation table) and the cell
        type of each entry.
    shift
        ``[E, G]`` mean change of each entry from its cell type's control mean (training cells).
    summary
        ``[E, R]`` what the context encoder reads of the response.
    pert_names, cell_type_names
        Names of the perturbation and cell-type ids (for the retrieval log).
    control_mean
        ``[n_cell_types, G]`` mean of each cell type's control cells (``None``: zeros).
    """

    def __init__(
        self,
        vectors: torch.Tensor,
        entry_pert: torch.Tensor,
        entry_ct: torch.Tensor,
        shift: torch.Tensor,
        summary: torch.Tensor,
        pert_names: Sequence[str] = (),
        cell_type_names: Sequence[str] = (),
        control_mean: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        e = vectors.shape[0]
        n_ct = int(entry_ct.max()) + 1 if e else 1
        if control_mean is None:
            control_mean = torch.zeros(max(n_ct, len(cell_type_names)), shift.shape[1])
        for name, t in (("entry_pert", entry_pert), ("entry_ct", entry_ct), ("shift", shift), ("summary", summary)):
            if t.shape[0] != e:
                raise PtragError(f"response database: {name} has {t.shape[0]} rows for {e} entries.")
        for name, t in (("vectors", vectors), ("shift", shift), ("summary", summary)):
            if not bool(torch.isfinite(t).all()):
                raise PtragError(f"response database: {name} holds NaN or infinite values.")
        self.register_buffer("raw", vectors.detach().float().clone())
        self.register_buffer("unit", l2_normalise(self.raw))
        self.register_buffer("entry_pert", entry_pert.detach().long().clone())
        self.register_buffer("entry_ct", entry_ct.detach().long().clone())
        self.register_buffer("shift", shift.detach().float().clone())
        self.register_buffer("summary", summary.detach().float().clone())
        self.register_buffer("control_mean", torch.as_tensor(control_mean).detach().float().clone())
        self._derive()
        self.pert_names = [str(x) for x in pert_names]
        self.cell_type_names = [str(x) for x in cell_type_names]

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def search(
        self,
        query_vec: torch.Tensor,
        query_pert: torch.Tensor,
        query_ct: torch.Tensor,
        k: int,
        rule: str = "both",
        agreement: bool = False,
        weighted: bool | torch.Tensor = True,
    ) -> Retrieved:
        """Top-K entries of each query (ranked by gene cosine, plus the response agreement with
        ``agreement=True``, weighed as :meth:`agreement`'s ``weighted`` says; see the module
        docstring).

        The result depends on the query's ``(perturbation, cell type)`` and gene vector only, and
        the database is fixed, so queries of a known perturbation with its own gene vector are
        answered from a table of every ``(perturbation, cell type)`` pair, searched once per
        ``(k, rule, agreement)`` and device (:meth:`_pair_table`); other queries are searched.
        """
        if k > len(self) - 1:
            raise PtragError(f"topk = {k} exceeds the {len(self)} response-database entries minus the query's own.")
        if self._known_pairs(query_vec, query_pert, query_ct):
            sim, idx, agree = self._pair_table(k, rule, agreement, weighted)
            row = query_pert * self.entry_table.shape[1] + query_ct
            sim, idx, agree = sim[row], idx[row], None if agree is None else agree[row]
        else:
            sim, idx, agree = self._search(query_vec, query_pert, query_ct, k, rule, agreement, weighted)
        same = self.entry_ct[idx] == query_ct[:, None]
        return Retrieved(sim, idx, same, agree)

    def _search(self, query_vec, query_pert, query_ct, k: int, rule: str, agreement: bool, weighted=True):
        """Stage 1 itself: ``(sim, idx, agree)`` ``[B, K]`` (``agree`` ``None`` without agreement)."""
        with torch.no_grad(), torch.autocast(device_type=query_vec.device.type, enabled=False):
            cos = l2_normalise(query_vec.detach().float()) @ self.unit.T
            rank, agree = cos, None
            if agreement:  # computed only when it is used
                agree, known = self.agreement(query_pert, query_ct, weighted)
                rank = cos + agree
                agree = torch.where(known, agree, torch.nan)
            scores = candidate_scores(rank, self.entry_pert, self.entry_ct, query_pert, query_ct, rule)
            _, idx = torch.topk(scores, k, dim=1)
        return cos.gather(1, idx), idx, None if agree is None else agree.gather(1, idx)

    def _known_pairs(self, query_vec: torch.Tensor, query_pert: torch.Tensor, query_ct: torch.Tensor) -> bool:
        """Every query is a perturbation with an entry, a cell type of the table, and carries the
        perturbation's own gene vector (so the pair table answers it exactly)."""
        n_p, n_c = self.entry_table.shape
        if len(query_pert) == 0 or not bool(((query_pert >= 0) & (query_pert < n_p)).all()):
            return False
        if not bool(((query_ct >= 0) & (query_ct < n_c)).all()):
            return False
        rows = self.pert_row[query_pert]
        return bool((rows >= 0).all()) and torch.equal(query_vec.detach().float(), self.raw[rows])

    def _pair_table(self, k: int, rule: str, agreement: bool, weighted=True):
        """Stage 1 of every ``(perturbation, cell type)`` pair (row ``p * n_cell_types + t``), in
        chunks of 256 queries; kept until the database is reloaded."""
        key = (k, rule, agreement, choice_key(weighted), str(self.raw.device))
        if key not in self._pairs:
            pert, ct = self._every_pair()
            vec = self.raw[self.pert_row.clamp_min(0)[pert]]
            parts = [
                self._search(vec[i : i + 256], pert[i : i + 256], ct[i : i + 256], k, rule, agreement, weighted)
                for i in range(0, len(pert), 256)
            ]
            agree = None if not agreement else torch.cat([a for _, _, a in parts])
            self._pairs = {key: (torch.cat([s for s, _, _ in parts]), torch.cat([i for _, i, _ in parts]), agree)}
        return self._pairs[key]

    def _every_pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(perturbation, cell type)`` ids of every pair of the entry table, row
        ``p * n_cell_types + t`` (the pair tables' layout)."""
        n_p, n_c = self.entry_table.shape
        dev = self.entry_table.device
        return torch.arange(n_p, device=dev).repeat_interleave(n_c), torch.arange(n_c, device=dev).repeat(n_p)

    def _derive(self) -> None:
        """The buffers derived from the saved ones (not in the checkpoint; rebuilt after loading):
        unit shifts, the ``(perturbation, cell type) -> entry`` table (``-1``: no entry) and each
        entry's place among its cell type's entries."""
        e, dev = len(self), self.shift.device
        n_p = int(self.entry_pert.max()) + 1 if e else 1
        n_c = int(self.entry_ct.max()) + 1 if e else 1
        table = torch.full((n_p, n_c), -1, dtype=torch.long, device=dev)
        table[self.entry_pert, self.entry_ct] = torch.arange(e, device=dev)
        column = torch.zeros(e, dtype=torch.long, device=dev)
        for u in range(n_c):
            rows_u = (self.entry_ct == u).nonzero().squeeze(1)
            column[rows_u] = torch.arange(len(rows_u), device=dev)
        pert_row = torch.full((n_p,), -1, dtype=torch.long, device=dev)  # an entry of each perturbation
        pert_row[self.entry_pert] = torch.arange(e, device=dev)  # (their gene vectors are the same)
        derived = (("unit_shift", l2_normalise(self.shift)), ("entry_table", table), ("entry_column", column))
        unit = derived[0][1]
        transfer_sums = (("pair_dots", pair_dots(self.shift, table)), ("pair_sims", pair_similarity_sums(unit, table)))
        for name, value in (*derived, ("pert_row", pert_row), *transfer_sums):
            self.register_buffer(name, value, persistent=False)
        self._pairs: dict = {}  # Stage 1 of every pair, per (k, rule, agreement, device)
        self.memo: dict = {}  # what the model derives once from the database (ptrag.nn.readout)

    def agreement(
        self, query_pert: torch.Tensor, query_ct: torch.Tensor, weighted: bool | torch.Tensor = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Response agreement of every entry with every query (module docstring).

        Parameters
        ----------
        query_pert, query_ct
            ``[B]`` perturbation and cell-type ids of the queries (``-1``: unknown).
        weighted
            Weigh each cell type by its similarity transfer; ``False``: every shared other cell
            type counts 1; a ``[n_cell_types]`` bool: per query cell type (the model's
            ``response_transfer``, :func:`ptrag.nn.readout.model_transfer`).

        Returns
        -------
        agree : torch.Tensor
            ``[B, E]`` mean over the shared other cell types of the shifts' cosine times that cell
            type's similarity transfer to the query's (:func:`ptrag.nn.transfer.
            similarity_transfer`: weak evidence shrinks the agreement toward 0; 0 where undefined).
        known : torch.Tensor
            ``[B, E]`` bool, the agreement is defined (at least one shared other cell type with a
            positive similarity transfer, and the entry is not the query's own perturbation).
        """
        e, dev = len(self), self.shift.device
        table, column = self.entry_table, self.entry_column
        n_p, n_c = table.shape
        known_q = (query_pert >= 0) & (query_pert < n_p)  # a perturbation with no entry has no row
        q_rows = torch.where(known_q[:, None], table[query_pert.clamp(0, n_p - 1)], -1)  # [B, n_c]
        e_rows = table[self.entry_pert]  # [E, n_c]: each entry's perturbation in every cell type
        # per cell type u, the query's shift in u against the shifts of u's entries only: B x G x E
        # multiply-adds in all (not n_c times that)
        dots = torch.zeros(len(query_pert), n_c, e, device=dev)
        for u in range(n_c):
            rows_u = (self.entry_ct == u).nonzero().squeeze(1)
            d_u = self.unit_shift[q_rows[:, u].clamp_min(0)] @ self.unit_shift[rows_u].T  # [B, E_u]
            dots[:, u] = d_u.gather(1, column[e_rows[:, u].clamp_min(0)][None].expand(len(query_pert), -1))
        cts = torch.arange(n_c, device=dev)
        ok = (q_rows[:, :, None] >= 0) & (e_rows.T[None] >= 0) & (query_ct[:, None, None] != cts[None, :, None])
        # each cell type u weighed by how far similarity in u carries to the query's (ptrag.nn.transfer)
        w = torch.ones(len(query_pert), n_c, device=dev)
        if weighted is not False:
            sims = similarity_transfer(self.pair_sims, query_pert, query_ct)
            w = sims if weighted is True else torch.where(per_query(weighted, query_ct)[:, None], sims, w)
        w = torch.where(ok, w[:, :, None], 0.0)
        count = ok.sum(1)
        known = ((w > 0).sum(1) > 0) & (self.entry_pert[None, :] != query_pert[:, None])
        return torch.where(known, (w * dots).sum(1) / count.clamp_min(1), 0.0), known

    def transfer(self, query_pert: torch.Tensor, query_ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(beta, rho2)`` ``[B, n_cell_types]``: how each cell type's shifts transfer to each
        query's cell type, measured without the query's perturbation (:mod:`ptrag.nn.transfer`).

        It depends on the query's ``(perturbation, cell type)`` alone and the database is fixed,
        so queries of known pairs are answered from a table of every pair, computed once per
        device (in chunks of 256 pairs); other queries are computed."""
        n_p, n_c = self.entry_table.shape
        inside = (query_pert >= 0) & (query_pert < n_p) & (query_ct >= 0) & (query_ct < n_c)
        if len(query_pert) == 0 or not bool(inside.all()):
            return transfer(self.pair_dots, self.entry_table, query_pert, query_ct)
        key = ("transfer", str(self.shift.device))
        if key not in self.memo:
            pert, ct = self._every_pair()
            parts = [
                transfer(self.pair_dots, self.entry_table, pert[i : i + 256], ct[i : i + 256])
                for i in range(0, len(pert), 256)
            ]
            self.memo[key] = (torch.cat([b for b, _ in parts]), torch.cat([r for _, r in parts]))
        beta, rho2 = self.memo[key]
        row = query_pert * n_c + query_ct
        return beta[row], rho2[row]

    def own_summary(self, query_pert: torch.Tensor, query_ct: torch.Tensor) -> torch.Tensor:
        """``[B, R]`` mean summary of each query's own entries in the *other* cell types (what
        the query perturbation did elsewhere; zeros where it trains nowhere else). The query's
        cell type is never read: in training its group is the target."""
        own = (self.entry_pert[None, :] == query_pert[:, None]) & (self.entry_ct[None, :] != query_ct[:, None])
        w = (own & (query_pert[:, None] >= 0)).to(self.summary.dtype)
        return (w @ self.summary) / w.sum(-1, keepdim=True).clamp_min(1.0)

    def set_centring(self, ctrl_expr: torch.Tensor, query_ct: torch.Tensor) -> torch.Tensor:
        """``[B, 1, G]`` ``control_mean[ct] - mean_set(ctrl)``: added to the control cells, it takes
        their set's sampling error out of the mean (zero for a cell type outside the table)."""
        known = (query_ct >= 0) & (query_ct < self.control_mean.shape[0])
        pop = self.control_mean[query_ct.clamp(0, self.control_mean.shape[0] - 1)].to(ctrl_expr.dtype)
        set_mean = ctrl_expr.mean(1)
        return torch.where(known[:, None], pop - set_mean, torch.zeros_like(set_mean))[:, None, :]

    def labels(self, rows: Sequence[int]) -> list[tuple[str, str]]:
        """``(perturbation, cell type)`` names of entry rows."""
        perts, cts = self.entry_pert[list(rows)].tolist(), self.entry_ct[list(rows)].tolist()
        return [(self.pert_names[p], self.cell_type_names[c]) for p, c in zip(perts, cts, strict=True)]

    def get_extra_state(self) -> dict:
        return {"pert_names": list(self.pert_names), "cell_type_names": list(self.cell_type_names)}

    def set_extra_state(self, state: dict) -> None:
        self.pert_names = [str(x) for x in state.get("pert_names", [])]
        self.cell_type_names = [str(x) for x in state.get("cell_type_names", [])]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(self, state_dict, prefix)  # a placeholder database takes the checkpoint's sizes
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._derive()


def placeholder_index(n_genes: int, pert_dim: int, summary_dim: int, n_entries: int = 2) -> ResponseIndex:
    """A database of the right widths (``n_entries`` zero rows), replaced by ``load_state_dict``."""
    z, e = torch.zeros, n_entries
    return ResponseIndex(
        z(e, pert_dim), torch.arange(e), torch.zeros(e, dtype=torch.long), z(e, n_genes), z(e, summary_dim)
    )
