"""pt_rag_response's flat readout: measured leave one out on training entries (ptrag.nn.readout)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ptrag.nn.config import ModelConfig
from ptrag.nn.readout import (
    OWN_SHARE,
    TEMPERATURES,
    entry_beta,
    flat_cell_types,
    flat_queries,
    leave_one_out_fit,
    model_transfer,
    readout_weights,
    transfer_cell_types,
)
from ptrag.nn.responses import ResponseIndex


def _two_cell_types(seed: int = 0) -> ResponseIndex:
    """Cell type 0: each perturbation's shift is its gene vector's program (the gene cosine knows
    which responses resemble each other). Cell type 1: one shared response plus noise, unrelated to
    the gene vectors. No perturbation trains in both, so the agreement is undefined everywhere."""
    g = torch.Generator().manual_seed(seed)
    n, d, genes = 12, 6, 40
    vec = torch.randn(2 * n, d, generator=g)
    programs = torch.randn(d, genes, generator=g)
    shift0 = vec[:n] @ programs
    shared = torch.randn(genes, generator=g)
    shift1 = shared + 0.8 * torch.randn(n, genes, generator=g)
    return ResponseIndex(
        vec,
        torch.arange(2 * n),
        torch.tensor([0] * n + [1] * n),
        torch.cat([shift0, shift1]),
        torch.zeros(2 * n, 3),
        cell_type_names=["ranked", "shared"],
    )


def _loop_fit(db: ResponseIndex, k: int) -> np.ndarray:
    """The leave-one-out fit from its definition, one entry at a time (no transfer, no own entries)."""
    unit = db.raw / db.raw.norm(dim=1, keepdim=True)
    out = np.full((len(TEMPERATURES) + 1, len(db)), np.nan)
    for i in range(len(db)):
        same = (db.entry_ct == db.entry_ct[i]).nonzero().squeeze(1)
        others = same[same != i]
        sim = unit[others] @ unit[i]
        top = torch.argsort(sim, descending=True)[:k]  # ranked by gene cosine within the cell type
        sim, rows = sim[top], others[top]
        for j, w in enumerate([torch.softmax(sim / t, 0) for t in TEMPERATURES] + [torch.full((k,), 1 / k)]):
            out[j, i] = np.corrcoef((w @ db.shift[rows]).numpy(), db.shift[i].numpy())[0, 1]
    return out


def test_leave_one_out_fit_matches_its_definition():
    db = _two_cell_types()
    fit = leave_one_out_fit(db, k=5, rule="same", transfer=False, chunk=7)  # chunks that split the entries
    np.testing.assert_allclose(fit.numpy(), _loop_fit(db, 5), rtol=1e-4, atol=1e-5)


def test_a_cell_type_without_a_ranking_reads_flat_and_the_other_keeps_the_softmax():
    db = _two_cell_types()
    fit = leave_one_out_fit(db, k=5, rule="same", transfer=False)
    ranked, shared = fit[:, :12].mean(1), fit[:, 12:].mean(1)
    assert ranked[:-1].max() > ranked[-1] and shared[-1] > shared[:-1].max()
    assert flat_cell_types(db, 5, "same", False).tolist() == [False, True]
    cfg = ModelConfig(conditioning="pt_rag_response", topk=5, response_candidates="same", response_transfer=False)
    assert flat_queries(db, cfg, torch.tensor([1, 0, -1, 5])).tolist() == [True, False, False, False]
    assert flat_queries(db, dataclasses.replace(cfg, response_flat=False), torch.tensor([1])) is None


def test_flat_readout_weighs_other_perturbations_equally_and_keeps_the_own_share():
    own = torch.tensor([[True, False, False, False], [True, False, False, False]])
    agree = torch.tensor([[float("nan"), 0.9, 0.1, -0.2]] * 2)
    sim = torch.tensor([[0.5, 0.3, 0.2, 0.1]] * 2)
    r = readout_weights(own, agree, sim, torch.tensor(0.05), torch.tensor(0.4), torch.tensor([True, False]))
    torch.testing.assert_close(r[0], torch.tensor([0.4, 0.2, 0.2, 0.2]))
    assert r[1, 1] > 0.59  # the softmax row follows its best agreement
    torch.testing.assert_close(
        r[1], readout_weights(own[1:], agree[1:], sim[1:], torch.tensor(0.05), torch.tensor(0.4))[0]
    )


def test_the_choice_is_cached_per_database_and_deterministic():
    """The flat cell types are computed once per database and options, and the same for the same database."""
    db = _two_cell_types()
    first = flat_cell_types(db, 5, "same", False)
    assert flat_cell_types(db, 5, "same", False) is first
    again = _two_cell_types()
    assert torch.equal(flat_cell_types(again, 5, "same", False), first)


def _paired_cell_types(sign: float, n: int = 10, genes: int = 30) -> ResponseIndex:
    """Two cell types, every perturbation trained in both; cell type 1 responds ``sign`` x cell
    type 0 (alike: 1, opposite: -1). Responses are random per perturbation, so the other
    perturbations' entries say nothing and the query's own entry elsewhere is the answer."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(n, genes, generator=g)
    vec = torch.randn(n, 6, generator=g)
    pert, ct = torch.arange(n).repeat(2), torch.arange(2).repeat_interleave(n)
    return ResponseIndex(vec[pert], pert, ct, torch.cat([base, sign * base]), torch.zeros(2 * n, 3))


def test_the_transfer_is_kept_where_it_predicts_the_training_groups_better():
    """Alike cell types: the transfer only shrinks the right answer (beta = (n-1)/n of the ridge),
    so both read without it; opposite ones: it turns the own entries' sign (beta < 0), so both
    keep it. The choice is the leave-one-out squared-error comparison of its definition."""
    for sign, expected in ((1.0, [False, False]), (-1.0, [True, True])):
        db = _paired_cell_types(sign)
        keep = transfer_cell_types(db, 5, "both")
        assert keep.tolist() == expected
        on, off = (leave_one_out_fit(db, 5, "both", flag, own_share=OWN_SHARE, error=True) for flag in (True, False))
        for t in range(2):
            cols = db.entry_ct == t
            assert bool(keep[t]) == bool(on[:, cols].mean() <= off[:, cols].mean())
        assert transfer_cell_types(db, 5, "both") is keep  # once per database
    beta = db.transfer(torch.tensor([0]), torch.tensor([0]))[0]
    assert beta[0, 0] == 1 and -1 < beta[0, 1] < -0.8  # opposite: -(n-1)/n of the ridge


def test_model_transfer_reads_the_option():
    db = _paired_cell_types(-1.0)
    cfg = ModelConfig(conditioning="pt_rag_response", topk=5)
    assert cfg.response_transfer is False and model_transfer(db, cfg) is False  # the default
    cfg = dataclasses.replace(cfg, response_transfer="auto")
    assert model_transfer(db, cfg).tolist() == [True, True]
    assert model_transfer(db, dataclasses.replace(cfg, response_transfer=False)) is False
    # a per-cell-type choice scales only the queries of the cell types that keep it
    idx = torch.tensor([[10, 11], [0, 1]])  # entries of cell type 1, then of 0
    qp, qc = torch.tensor([0, 0]), torch.tensor([0, 1])
    mixed = entry_beta(db, torch.tensor([True, False]), qp, qc, idx)
    assert torch.equal(mixed[0], entry_beta(db, True, qp, qc, idx)[0]) and bool((mixed[1] == 1).all())
