"""Where ``pt_rag_response``'s readout should weigh its entries equally (pure torch).

The readout (:func:`ptrag.nn.responses.readout_weights`) gives a set's mean change as a softmax,
over the retrieved entries of other perturbations, of their response agreement (their gene
cosine where it is undefined) at a temperature near 0.05-0.13: it follows the one or two best
ranked entries. That pays where the ranking knows which responses resemble the query's (the
synthetic benchmark), and costs where it does not: on devel.h5ad's K562 (CRISPRa; its training
perturbations train in no other cell type, so the agreement is undefined and the gene cosine
ranks alone) the readout followed one neighbour and its Pearson delta fell to -0.27..-0.05
against 0.26..0.45 for the plain mean of K562's training groups (``context_mean``).

Which holds is measured per cell type on its training groups, before training and never on a
held-out group: each training group is queried as in training (Stage 1 of its own pair, its own
entry excluded, :meth:`~ptrag.nn.responses.ResponseIndex.search`), and the readout's part over
other perturbations (other cell types' shifts scaled by their transfer beta, as in the model)
predicts its observed shift at each temperature of :data:`TEMPERATURES` and with equal weights.
A cell type keeps the softmax only where the best temperature's mean leave-one-out Pearson
correlation beats equal weights' by more than :data:`MARGIN_SE` standard errors of the paired
gain (:func:`ranking_helps`); every other cell type reads its entries with equal weights
(``flat``). The query's own entries in other cell types keep their learned share either way.
"""

from __future__ import annotations

import torch

#: The readout temperatures equal weights are compared with: the learned temperature's start
#: (0.05) and the range it reached after 1,500 steps on devel.h5ad (0.06-0.13), doubled.
TEMPERATURES = (0.05, 0.1, 0.2)

#: How many standard errors the ranking's mean leave-one-out gain over equal weights must reach
#: (about a one-sided 2.5 % test): a cell type with a few training groups, whose fit is noise
#: (devel.h5ad's K562: five), reads flat unless they clearly say otherwise.
MARGIN_SE = 2.0


def leave_one_out_fit(db, k: int, rule: str, transfer: bool, chunk: int = 256) -> torch.Tensor:
    """``[len(TEMPERATURES) + 1, E]`` Pearson correlation of each training entry's observed shift
    with the readout of its Stage-1 candidates at each temperature, and with equal weights (last
    row); NaN where an entry retrieves no other perturbation.

    Parameters
    ----------
    db
        The :class:`~ptrag.nn.responses.ResponseIndex`.
    k, rule
        The model's ``topk`` and ``response_candidates``.
    transfer
        Scale other cell types' shifts by their transfer beta (``response_transfer``).
    chunk
        Entries per pass (memory ``chunk x K x G``).
    """
    e, dev = len(db), db.shift.device
    out = torch.full((len(TEMPERATURES) + 1, e), float("nan"), device=dev)
    found = db.search(db.raw, db.entry_pert, db.entry_ct, k, rule, agreement=True)
    for lo in range(0, e, chunk):
        rows = torch.arange(lo, min(lo + chunk, e), device=dev)
        idx, pert, ct = found.idx[rows], db.entry_pert[rows], db.entry_ct[rows]
        own = ~found.same[rows] & (db.entry_pert[idx] == pert[:, None])
        score = torch.where(torch.isnan(found.agree[rows]), found.sim[rows], found.agree[rows])
        beta = entry_beta(db, transfer, pert, ct, idx)
        other = (~own).to(score.dtype)
        weights = [torch.softmax((score / t).masked_fill(own, -1e4), -1) * other for t in TEMPERATURES]
        weights.append(other / other.sum(-1, keepdim=True).clamp_min(1.0))
        truth = db.shift[rows]
        for i, w in enumerate(weights):
            pred = torch.bmm((w * beta)[:, None], db.shift[idx]).squeeze(1)
            r = pearson_rows(pred, truth)
            out[i, rows] = torch.where(other.sum(-1) > 0, r, float("nan"))
    return out


def entry_beta(db, transfer: bool, query_pert: torch.Tensor, query_ct: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` scale of each retrieved entry's shift in the readout: its cell type's transfer
    beta to the query's (:mod:`ptrag.nn.transfer`; 1 in the query's own cell type), or ones
    without ``transfer`` (``response_transfer``)."""
    if not transfer:
        return torch.ones(idx.shape, dtype=db.shift.dtype, device=idx.device)
    return db.transfer(query_pert, query_ct)[0].gather(1, db.entry_ct[idx])


def flat_cell_types(db, k: int, rule: str, transfer: bool) -> torch.Tensor:
    """``[n_cell_types]`` bool: the cell types whose readout weighs its entries equally (module
    docstring; a cell type with fewer than two measured training groups keeps the softmax).
    Computed once per database, options and device."""
    key = ("flat", k, rule, transfer, db.weighted_agreement, str(db.shift.device))
    cached = db.memo.get(key)
    if cached is None:
        fits = cell_type_fits(db, leave_one_out_fit(db, k, rule, transfer))
        cached = torch.tensor([not ranking_helps(f) for f in fits], dtype=torch.bool, device=db.shift.device)
        db.memo[key] = cached
    return cached


def cell_type_fits(db, fit: torch.Tensor) -> list[torch.Tensor]:
    """Per cell type (database order), the columns of :func:`leave_one_out_fit`'s ``fit`` of its
    entries that were measured (finite at every temperature)."""
    out = []
    for t in range(db.entry_table.shape[1]):
        f = fit[:, db.entry_ct == t]
        out.append(f[:, torch.isfinite(f).all(0)])
    return out


def ranking_z(fit: torch.Tensor) -> float:
    """The best temperature's mean leave-one-out gain over equal weights, in standard errors of
    the paired gain (``fit``: ``[len(TEMPERATURES) + 1, n]``, equal weights last, ``n >= 2``)."""
    d = fit[int(fit[:-1].mean(1).argmax())] - fit[-1]
    return float(d.mean() / (d.std() / fit.shape[1] ** 0.5))


def ranking_helps(fit: torch.Tensor) -> bool:
    """Whether the best temperature's leave-one-out fit beats equal weights' significantly
    (:func:`ranking_z` above :data:`MARGIN_SE`). With fewer than two entries there is nothing to
    measure, and the softmax is kept."""
    return fit.shape[1] < 2 or ranking_z(fit) > MARGIN_SE


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of ``[N, G]`` tensors (NaN for a constant row)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def flat_queries(db, cfg, query_ct: torch.Tensor) -> torch.Tensor | None:
    """``[B]`` bool: the queries whose cell type reads flat (:func:`flat_cell_types` with the
    :class:`~ptrag.nn.config.ModelConfig` ``cfg``'s options); ``None`` without ``response_flat``."""
    if not cfg.response_flat:
        return None
    flat = flat_cell_types(db, cfg.topk, cfg.response_candidates, cfg.response_transfer)
    known = (query_ct >= 0) & (query_ct < len(flat))
    return flat[query_ct.clamp(0, len(flat) - 1)] & known
