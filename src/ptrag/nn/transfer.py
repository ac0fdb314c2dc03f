"""How responses transfer between cell types, measured on training groups (pure torch).

``pt_rag_response`` reads the observed shifts of other cell types' entries: the query
perturbation's own groups elsewhere and, to fill ``K``, other perturbations' groups elsewhere.
Whether a shift seen in cell type ``u`` says anything about cell type ``t`` depends on the pair:
two CRISPRi lines respond alike, a CRISPRa line and a CRISPRi line oppositely. The training
data measures it: over the perturbations ``q`` that trained in both ``t`` and ``u``, the
least-squares slope of ``t``'s shifts on ``u``'s

    beta(t, u) = sum_q <s(q, t), s(q, u)> / (sum_q |s(q, u)|^2 + lambda_u)

and the share of ``t``'s shift energy it explains

    rho2(t, u) = (sum_q <s(q, t), s(q, u)>)^2 / ((sum_q |s(q, u)|^2 + lambda_u) (sum_q |s(q, t)|^2 + lambda_t)),

with ``lambda_c`` the mean squared norm of ``c``'s shifts (``p``'s left out; one
pseudo-perturbation of no transfer: a pair with little shared evidence shrinks toward
``beta = 0``). The readout scales each entry of ``u`` by ``beta(t, u)``
(:meth:`ptrag.nn.generator.PerturbationModel._readout`); ``rho2`` is a diagnostic (gating the
own entries' share by it was measured worse on the synthetic benchmark, docs/training.md).

For a query ``(p, t)`` the sums leave out ``p`` itself (in training ``(p, t)`` is the target);
the query's group never reaches its own prediction, and a held-out group is in no sum (it has
no entry). ``t = u`` gives ``beta = rho2 = 1``; an unknown cell type (``-1``) also 1 (nothing
to measure: the previous behaviour).
"""

from __future__ import annotations

import torch


def pair_dots(shift: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``[n_p, n_c, n_c]`` ``<s(p, t), s(p, u)>`` of every perturbation's entries (0 where
    ``p`` lacks an entry in ``t`` or ``u``); ``shift`` ``[E, G]``, ``table`` ``[n_p, n_c]``
    entry rows (``-1``: none)."""
    n_p, n_c = table.shape
    s = torch.cat([shift.float(), torch.zeros(1, shift.shape[1], device=shift.device)])  # row -1: zeros
    rows = torch.where(table >= 0, table, len(shift))
    out = torch.zeros(n_p, n_c, n_c, device=shift.device)
    for t in range(n_c):
        out[:, t] = torch.einsum("pg,pug->pu", s[rows[:, t]], s[rows])
    return out


def transfer(
    dots: torch.Tensor, table: torch.Tensor, query_pert: torch.Tensor, query_ct: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(beta, rho2)``, each ``[B, n_c]``: the transfer from every cell type ``u`` to each
    query's cell type, without the query's perturbation (module docstring).

    Parameters
    ----------
    dots
        :func:`pair_dots` of the database.
    table
        ``[n_p, n_c]`` entry rows (``-1``: none).
    query_pert, query_ct
        ``[B]`` ids (``-1``: unknown).
    """
    n_p, n_c = table.shape
    has = table >= 0
    ct_known = (query_ct >= 0) & (query_ct < n_c)
    t = query_ct.clamp(0, n_c - 1)
    # every sum over perturbations leaves the query's out by masking (not by subtracting), so
    # the query's own group cannot move its transfer, not even by rounding
    keep = (torch.arange(n_p, device=table.device)[:, None] != query_pert[None, :])[..., None]  # [n_p, B, 1]
    sq = torch.diagonal(dots, dim1=1, dim2=2)  # [n_p, n_c]: |s(q, c)|^2
    both = keep & has[:, t, None] & has[:, None, :]  # [n_p, B, u]: q trained in t and u
    zero = torch.zeros((), device=dots.device)
    num = torch.where(both, dots[:, t, :], zero).sum(0)  # [B, u]
    den = torch.where(both, sq[:, None, :], zero).sum(0)
    tt = torch.where(both, sq[:, t, None], zero).sum(0)
    has_k = keep & has[:, None, :]  # [n_p, B, c]
    lam = torch.where(has_k, sq[:, None, :], zero).sum(0) / has_k.sum(0).clamp_min(1)  # [B, c]
    lam_t = lam.gather(1, t[:, None])
    beta = num / (den + lam).clamp_min(1e-12)
    rho2 = num.square() / ((den + lam) * (tt + lam_t)).clamp_min(1e-24)
    same = torch.arange(n_c, device=table.device)[None, :] == t[:, None]
    one = same | ~ct_known[:, None]
    return torch.where(one, 1.0, beta), torch.where(one, 1.0, rho2)


#: Pseudo-count of perturbation pairs: a similarity transfer measured on ``n`` pairs is trusted
#: ``n / (n + PAIR_PRIOR)``.
PAIR_PRIOR = 10.0


def pair_similarity_sums(unit_shift: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``[n_p, n_c, n_c, 4]`` per perturbation ``q`` and cell-type pair ``(t, u)``: the sums over
    the other perturbations ``c`` trained, as ``q``, in both ``t`` and ``u`` of
    ``cos_t(q, c) cos_u(q, c)``, ``cos_u(q, c)^2``, ``cos_t(q, c)^2`` and 1 (``cos_t``: the cosine
    of two perturbations' shifts in ``t``); the rows of :func:`similarity_transfer`."""
    n_p, n_c = table.shape
    out = torch.zeros(n_p, n_c, n_c, 4, device=table.device)
    # only perturbations trained in two or more cell types enter a sum (t != u), so the
    # [n, n] cosine matrices are built over those alone
    shared = ((table >= 0).sum(1) >= 2).nonzero().squeeze(1)
    sub = table[shared]
    unit = torch.cat([unit_shift.float(), torch.zeros(1, unit_shift.shape[1], device=unit_shift.device)])
    rows = torch.where(sub >= 0, sub, len(unit_shift))
    cos = [unit[rows[:, t]] @ unit[rows[:, t]].T for t in range(n_c)]  # [n, n] each (0 where absent)
    has = (sub >= 0).float()
    off = 1.0 - torch.eye(len(shared), device=table.device)
    for t in range(n_c):
        for u in range(n_c):
            both = has[:, t] * has[:, u]
            m = both[:, None] * both[None, :] * off
            out[shared, t, u] = torch.stack(
                [(cos[t] * cos[u] * m).sum(1), (cos[u] ** 2 * m).sum(1), (cos[t] ** 2 * m).sum(1), m.sum(1)], -1
            )
    return out


def similarity_transfer(sums: torch.Tensor, query_pert: torch.Tensor, query_ct: torch.Tensor) -> torch.Tensor:
    """``[B, n_c]`` how far "perturbations that act alike in ``u``" carries to each query's cell
    type ``t``: over the pairs of training perturbations (neither the query's) trained in both,
    the uncentred correlation of their shift cosines in ``u`` and in ``t``, clipped at 0 and
    trusted ``n / (n + PAIR_PRIOR)`` for ``n`` pairs; 1 for ``u = t`` and for an unknown ``t``.
    The response agreement weighs each cell type by it (:meth:`ptrag.nn.responses.
    ResponseIndex.agreement`): an agreement measured where the target's responses are unlike
    (a CRISPRa line against CRISPRi lines, or a target sharing no training perturbation with
    the others) does not rank the target's entries.

    Parameters
    ----------
    sums
        :func:`pair_similarity_sums` of the database.
    query_pert, query_ct
        ``[B]`` ids (``-1``: unknown).
    """
    n_p, n_c = sums.shape[:2]
    t = query_ct.clamp(0, n_c - 1)
    total = sums.sum(0)[t]  # [B, u, 4]: ordered pairs, every perturbation
    known_p = ((query_pert >= 0) & (query_pert < n_p)).float()[:, None, None]
    total = total - 2 * known_p * sums[query_pert.clamp(0, n_p - 1), t]  # the pairs with the query out
    uu, tt, n = total[..., 1:].clamp_min(0).unbind(-1)
    n = n / 2  # unordered pairs
    r = (total[..., 0] / (uu * tt).sqrt().clamp_min(1e-12)).clamp(0, 1)
    w = torch.where(n > 0.5, r * n / (n + PAIR_PRIOR), 0.0)
    same = torch.arange(n_c, device=sums.device)[None, :] == t[:, None]
    return torch.where(same | ~((query_ct >= 0) & (query_ct < n_c))[:, None], 1.0, w)
