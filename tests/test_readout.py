"""pt_rag_response's flat readout: measured leave one out on training entries (ptrag.nn.readout)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ptrag.nn.config import ModelConfig
from ptrag.nn.readout import TEMPERATURES, flat_cell_types, flat_queries, leave_one_out_fit
from ptrag.nn.responses import ResponseIndex, readout_weights


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
