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

**The transfer, per cell type** (``response_transfer="auto"``; the default is ``False``): the readout scales
other cell types' shifts by their transfer beta and the agreement weighs cell types by their
similarity transfer (:mod:`ptrag.nn.transfer`). Whether that helps a cell type is measured the
same way, on its training groups before training: the whole readout (the query's own entries
elsewhere at the model's starting share :data:`OWN_SHARE`, the other perturbations' entries at
each temperature and with equal weights) predicts each group's observed shift, leave one out,
with and without the transfer; a cell type keeps it where the mean squared error is lower with
it (:func:`transfer_cell_types`). The error, not the correlation: beta is a least-squares scale,
and a correlation is blind to scale (devel.h5ad's K562, five training groups, ties on the
correlation while the transfer cuts its error by a third). On the synthetic benchmark every
target reads without it (its cell types respond alike up to scale, and the shrunken own
entries lose what they knew); on devel.h5ad every cell type keeps it (a CRISPRa line and
CRISPRi lines), which its test groups bear out for the glioma lines but not for K562, so the
model's default is ``response_transfer=False`` (docs/training.md).
"""

from __future__ import annotations

import torch

from ptrag.nn.responses import choice_key, per_query

#: The readout temperatures equal weights are compared with: the learned temperature's start
#: (0.05) and the range it reached after 1,500 steps on devel.h5ad (0.06-0.13), doubled.
TEMPERATURES = (0.05, 0.1, 0.2)

#: How many standard errors the ranking's mean leave-one-out gain over equal weights must reach
#: (about a one-sided 2.5 % test): a cell type with a few training groups, whose fit is noise
#: (devel.h5ad's K562: five), reads flat unless they clearly say otherwise.
MARGIN_SE = 2.0

#: The share of the query's own entries elsewhere in the readout at the start of training (the
#: model's learned ``own_share`` starts there): what the transfer choice measures the readout at.
OWN_SHARE = 0.3


def readout_weights(
    own: torch.Tensor,
    agree: torch.Tensor,
    sim: torch.Tensor,
    temperature: torch.Tensor,
    own_share: torch.Tensor,
    flat: torch.Tensor | None = None,
) -> torch.Tensor:
    """Readout weights ``[B, K]`` of the retrieved entries (each row sums to 1).

    Among the entries of other perturbations, a softmax of ``agree / temperature`` (``sim``
    where ``agree`` is NaN) holds ``1 - own_share``; the query's own entries elsewhere share
    ``own_share`` equally; each group takes everything when the other is empty. The weights
    are per set, over every retrieved entry: the selection does not gate them (gated by the
    selection, the readout's mean change was measured worse, docs/training.md).

    Parameters
    ----------
    own
        ``[B, K]`` bool, the entry is the query perturbation's own, in another cell type.
    agree, sim
        ``[B, K]`` response agreement (NaN where undefined) and gene cosine of each entry.
    temperature, own_share
        Scalar tensors (learned).
    flat
        ``[B]`` bool: the set's entries of other perturbations weigh equally
        (:func:`flat_cell_types`); ``None``: none.
    """
    score = torch.where(torch.isnan(agree), sim, agree) / temperature
    if flat is not None:
        score = score.masked_fill(flat[:, None], 0.0)
    score = score.masked_fill(own, -1e4)  # finite masking: an all-own row must not give NaN gradients
    soft = torch.softmax(score, -1) * ~own
    own_w = own.to(soft.dtype)
    n_own = own_w.sum(-1, keepdim=True)
    has_soft = soft.sum(-1, keepdim=True) > 0
    beta = torch.where(n_own > 0, torch.where(has_soft, own_share, 1.0), 0.0)
    r = (1 - beta) * soft + beta * own_w / n_own.clamp_min(1.0)
    return r / r.sum(-1, keepdim=True).clamp_min(1e-6)


def leave_one_out_fit(
    db, k: int, rule: str, transfer, chunk: int = 256, own_share: float = 0.0, error: bool = False
) -> torch.Tensor:
    """``[len(TEMPERATURES) + 1, E]`` Pearson correlation (``error``: mean squared error) of each
    training entry's observed shift with the readout of its Stage-1 candidates at each
    temperature, and with equal weights (last row); NaN where an entry retrieves no other
    perturbation.

    Parameters
    ----------
    db
        The :class:`~ptrag.nn.responses.ResponseIndex`.
    k, rule
        The model's ``topk`` and ``response_candidates``.
    transfer
        Scale other cell types' shifts by their transfer beta and weigh the agreement by the
        similarity transfer: a bool, or ``[n_cell_types]`` bool per query cell type.
    chunk
        Entries per pass (memory ``chunk x K x G``).
    own_share
        The share of the query's own entries elsewhere (:func:`readout_weights`); 0: the
        readout's part over other perturbations alone.
    error
        The mean squared error over the genes instead of the correlation.
    """
    e, dev = len(db), db.shift.device
    out = torch.full((len(TEMPERATURES) + 1, e), float("nan"), device=dev)
    found = db.search(db.raw, db.entry_pert, db.entry_ct, k, rule, agreement=True, weighted=transfer)
    share = torch.tensor(float(own_share), device=dev)
    for lo in range(0, e, chunk):
        rows = torch.arange(lo, min(lo + chunk, e), device=dev)
        idx, pert, ct = found.idx[rows], db.entry_pert[rows], db.entry_ct[rows]
        own = ~found.same[rows] & (db.entry_pert[idx] == pert[:, None])
        beta = entry_beta(db, transfer, pert, ct, idx)
        flat = torch.ones(len(rows), dtype=torch.bool, device=dev)
        args = (own, found.agree[rows], found.sim[rows])
        weights = [readout_weights(*args, torch.tensor(t, device=dev), share) for t in TEMPERATURES]
        weights.append(readout_weights(*args, torch.tensor(1.0, device=dev), share, flat))
        measured = (~own).sum(-1) > 0
        for i, w in enumerate(weights):
            pred = torch.nn.functional.embedding_bag(idx, db.shift, mode="sum", per_sample_weights=w * beta)
            truth = db.shift[rows]
            fit = (pred - truth).square().mean(-1) if error else pearson_rows(pred, truth)
            out[i, rows] = torch.where(measured, fit, float("nan"))
    return out


def entry_beta(db, transfer, query_pert: torch.Tensor, query_ct: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[B, K]`` scale of each retrieved entry's shift in the readout: its cell type's transfer
    beta to the query's (:mod:`ptrag.nn.transfer`; 1 in the query's own cell type), or ones where
    the query's cell type reads without ``transfer`` (a bool or a per-cell-type choice)."""
    if transfer is False:
        return torch.ones(idx.shape, dtype=db.shift.dtype, device=idx.device)
    beta = db.transfer(query_pert, query_ct)[0].gather(1, db.entry_ct[idx])
    return beta if transfer is True else torch.where(per_query(transfer, query_ct)[:, None], beta, 1.0)


def transfer_cell_types(db, k: int, rule: str) -> torch.Tensor:
    """``[n_cell_types]`` bool: the cell types whose readout keeps the transfer (module docstring;
    a cell type with no measured training group keeps it). Computed once per database, options
    and device."""
    key = ("transfer", k, rule, str(db.shift.device))
    if key not in db.memo:
        keep = [n == 0 or with_ <= without for n, with_, without in transfer_errors(db, k, rule)]
        db.memo[key] = torch.tensor(keep, dtype=torch.bool, device=db.shift.device)
    return db.memo[key]


def transfer_errors(db, k: int, rule: str) -> list[tuple[int, float, float]]:
    """Per cell type (database order): the training groups measured, and the whole readout's mean
    leave-one-out squared error with and without the transfer (what :func:`transfer_cell_types`
    compares)."""
    on, off = (leave_one_out_fit(db, k, rule, flag, own_share=OWN_SHARE, error=True) for flag in (True, False))
    pairs = zip(cell_type_fits(db, on, off), cell_type_fits(db, off, on), strict=True)
    return [(a.shape[1], float(a.mean()), float(b.mean())) for a, b in pairs]


def model_transfer(db, cfg):
    """The transfer a model with :class:`~ptrag.nn.config.ModelConfig` ``cfg`` reads with: its
    ``response_transfer`` (a bool), or for ``"auto"`` :func:`transfer_cell_types`."""
    if cfg.response_transfer == "auto":
        return transfer_cell_types(db, cfg.topk, cfg.response_candidates)
    return bool(cfg.response_transfer)


def flat_cell_types(db, k: int, rule: str, transfer) -> torch.Tensor:
    """``[n_cell_types]`` bool: the cell types whose readout weighs its entries equally (module
    docstring; a cell type with fewer than two measured training groups keeps the softmax).
    Computed once per database, options and device."""
    key = ("flat", k, rule, choice_key(transfer), str(db.shift.device))
    cached = db.memo.get(key)
    if cached is None:
        fits = cell_type_fits(db, leave_one_out_fit(db, k, rule, transfer))
        cached = torch.tensor([not ranking_helps(f) for f in fits], dtype=torch.bool, device=db.shift.device)
        db.memo[key] = cached
    return cached


def cell_type_fits(db, fit: torch.Tensor, also: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per cell type (database order), the columns of :func:`leave_one_out_fit`'s ``fit`` of its
    entries that were measured (finite at every temperature, and in ``also`` when given)."""
    out = []
    ok = torch.isfinite(fit).all(0) & (True if also is None else torch.isfinite(also).all(0))
    for t in range(db.entry_table.shape[1]):
        cols = (db.entry_ct == t) & ok
        out.append(fit[:, cols])
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
    flat = flat_cell_types(db, cfg.topk, cfg.response_candidates, model_transfer(db, cfg))
    known = (query_ct >= 0) & (query_ct < len(flat))
    return flat[query_ct.clamp(0, len(flat) - 1)] & known


def readout_choices(db, cfg) -> dict[str, dict[str, bool]]:
    """Per cell type name, what the readout of a model with options ``cfg`` does there (for the
    run's ``train_summary.json``): ``transfer`` (kept, :func:`model_transfer`) and ``flat``
    (equal weights, :func:`flat_cell_types`)."""
    transfer = model_transfer(db, cfg)
    cts = torch.arange(db.entry_table.shape[1], device=db.shift.device)
    keep = per_query(transfer, cts)
    flat = flat_queries(db, cfg, cts)
    flat = torch.zeros_like(keep) if flat is None else flat
    names = db.cell_type_names or [str(t) for t in cts.tolist()]
    return {
        n: {"transfer": bool(k), "flat": bool(f)} for n, k, f in zip(names, keep.tolist(), flat.tolist(), strict=True)
    }


def mean_change(db, cfg, agreement, ctrl_expr: torch.Tensor, query_pert: torch.Tensor, query_ct: torch.Tensor, out):
    """``pt_rag_response``'s set mean change ``[B, S or 1, G]``: the retrieved entries' weighted
    mean shift plus the set's control centring (:meth:`~ptrag.nn.responses.ResponseIndex.
    set_centring`).

    Parameters
    ----------
    db, cfg
        The model's :class:`~ptrag.nn.responses.ResponseIndex` and
        :class:`~ptrag.nn.config.ModelConfig`.
    agreement
        The model's learned ``[gain, centre, log T, own-share logit]`` (``response_agreement``).
    ctrl_expr, query_pert, query_ct
        As in :meth:`ptrag.nn.generator.PerturbationModel.forward`.
    out
        The forward pass's :class:`~ptrag.nn.generator.ModelOutput` (candidates, selection).
    """
    own = ~out.same_cell_type & (db.entry_pert[out.candidates] == query_pert[:, None])
    beta = entry_beta(db, model_transfer(db, cfg), query_pert, query_ct, out.candidates)  # via the weights
    if out.agreement is not None:  # per set, over every candidate: not gated by the selection
        t, share = agreement[2].exp(), torch.sigmoid(agreement[3])
        r = readout_weights(own, out.agreement, out.similarity, t, share, flat_queries(db, cfg, query_ct))
        # the weighted sum of the candidates' shifts without gathering them ([B, K, G])
        w = (r * beta).to(db.shift.dtype)
        mean = torch.nn.functional.embedding_bag(out.candidates, db.shift, mode="sum", per_sample_weights=w)
        mean = mean[:, None].to(ctrl_expr.dtype)
    else:  # the selected entries' mean, per cell
        shift = db.shift[out.candidates].to(ctrl_expr.dtype)  # [B, K, G]
        w = out.weights / out.weights.sum(-1, keepdim=True).clamp_min(1e-6) * beta[:, None]
        mean = torch.bmm(w.to(shift.dtype), shift)
    return mean + db.set_centring(ctrl_expr, query_ct)
