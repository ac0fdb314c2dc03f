"""ptrag.nn.transfer: the cell-type transfer slopes against a loop written from the definition,
a closed form (a cell type that responds at -0.5 x another) and the query's own group left out."""

from __future__ import annotations

import torch

from ptrag.nn.responses import ResponseIndex
from ptrag.nn.transfer import similarity_transfer, transfer


def _db(shift: torch.Tensor, pert: list[int], ct: list[int]) -> ResponseIndex:
    e = len(pert)
    return ResponseIndex(torch.randn(e, 4), torch.tensor(pert), torch.tensor(ct), shift, torch.zeros(e, 3))


def _by_hand(shift, pert, ct, p, t, u):
    """beta and rho2 of the module docstring, summed in Python over the shared perturbations."""
    entry = {(a, c): i for i, (a, c) in enumerate(zip(pert, ct, strict=True))}
    rows = {c: [i for i, (a, x) in enumerate(zip(pert, ct, strict=True)) if x == c and a != p] for c in set(ct)}
    lam = {c: sum(float(shift[i] @ shift[i]) for i in r) / max(1, len(r)) for c, r in rows.items()}
    num = den = tt = 0.0
    for q in set(pert) - {p}:
        if (q, t) in entry and (q, u) in entry:
            a, b = shift[entry[(q, t)]], shift[entry[(q, u)]]
            num, den, tt = num + float(a @ b), den + float(b @ b), tt + float(a @ a)
    return num / (den + lam[u]), num**2 / ((den + lam[u]) * (tt + lam[t]))


def test_transfer_matches_the_definition_and_leaves_the_query_out():
    gen = torch.Generator().manual_seed(0)
    pert, ct = [], []
    for p in range(7):  # 7 perturbations over 3 cell types, some groups missing
        for c in range(3):
            if (p + c) % 4:
                pert.append(p), ct.append(c)
    shift = torch.randn(len(pert), 10, generator=gen)
    db = _db(shift, pert, ct)
    qp = torch.tensor([p for p in range(-1, 7) for _ in range(3)])
    qc = torch.tensor([c for _ in range(-1, 7) for c in range(3)])
    beta, rho2 = db.transfer(qp, qc)
    for i, (p, t) in enumerate(zip(qp.tolist(), qc.tolist(), strict=True)):
        for u in range(3):
            if u == t:
                assert beta[i, u] == 1 and rho2[i, u] == 1
                continue
            b, r = _by_hand(shift, pert, ct, p, t, u)
            torch.testing.assert_close(beta[i, u].item(), b, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rho2[i, u].item(), r, rtol=1e-5, atol=1e-6)
            assert 0 <= rho2[i, u] <= 1
    # the query's own group (p, t) changes nothing of its own transfer
    row = pert.index(2)
    altered = shift.clone()
    altered[row] = 100.0
    moved = _db(altered, pert, ct).transfer(torch.tensor([2]), torch.tensor([ct[row]]))
    same = db.transfer(torch.tensor([2]), torch.tensor([ct[row]]))
    assert all(torch.equal(a, b) for a, b in zip(moved, same, strict=True))
    # an unknown cell type reads the shifts as observed
    assert torch.equal(db.transfer(torch.tensor([3]), torch.tensor([-1]))[0], torch.ones(1, 3))


def test_the_pair_table_answers_as_the_computation():
    """Known (perturbation, cell type) queries read a table of every pair; it holds what
    transfer() computes for any batch of them (to rounding: the sums run over another layout)."""
    gen = torch.Generator().manual_seed(1)
    pert, ct = zip(*[(p, c) for p in range(9) for c in range(3) if (p * 3 + c) % 5], strict=True)
    db = _db(torch.randn(len(pert), 12, generator=gen), list(pert), list(ct))
    order = torch.randperm(27, generator=gen)
    qp, qc = torch.arange(9).repeat_interleave(3)[order], torch.arange(3).repeat(9)[order]
    table = db.transfer(qp, qc)  # every query known: the table
    computed = transfer(db.pair_dots, db.entry_table, qp, qc)
    for a, b in zip(table, computed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert ("transfer", "cpu") in db.memo


def test_an_opposite_cell_type_gets_a_negative_slope():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(6, 20, generator=gen)
    shift = torch.cat([base, -0.5 * base])  # cell type 1 responds at -0.5 x cell type 0
    pert, ct = list(range(6)) * 2, [0] * 6 + [1] * 6
    beta, rho2 = _db(shift, pert, ct).transfer(torch.tensor([0]), torch.tensor([0]))
    # 5 shared perturbations besides the query: num = -0.5 S, den = 0.25 S, lambda_1 = 0.25 S / 5
    s = float((base[1:] ** 2).sum())
    expect = -0.5 * s / (0.25 * s + 0.25 * s / 5)
    torch.testing.assert_close(beta[0, 1].item(), expect, rtol=1e-5, atol=1e-6)
    assert beta[0, 1] < -1.5 and 0.5 < rho2[0, 1] < 1  # the sign flips; most of the energy explained


def test_similarity_transfer_and_the_weighted_agreement_match_the_definition():
    from ptrag.nn.retrieval import l2_normalise
    from ptrag.nn.transfer import PAIR_PRIOR

    g = torch.Generator().manual_seed(4)
    n_p, n_c = 12, 3
    base = torch.randn(n_p, 30, generator=g)
    pert, ct = torch.arange(n_p).repeat(n_c), torch.arange(n_c).repeat_interleave(n_p)
    # cell type 1 responds as 0 (plus noise), 2 independently of both
    shift = torch.where((ct == 2)[:, None], torch.randn(len(pert), 30, generator=g), base[pert])
    shift = shift + 0.5 * torch.randn(len(pert), 30, generator=g)
    keep = torch.rand(len(pert), generator=g) > 0.15
    pert, ct, shift = pert[keep], ct[keep], shift[keep]
    db = _db(shift, pert.tolist(), ct.tolist())
    unit = l2_normalise(shift)
    entry = {(int(p), int(c)): i for i, (p, c) in enumerate(zip(pert, ct, strict=True))}

    def cos(a, b, u):
        return float(unit[entry[(a, u)]] @ unit[entry[(b, u)]])

    def w_by_hand(p, t, u):
        if u == t:
            return 1.0
        qs = [q for q in range(n_p) if q != p and all((q, c) in entry for c in (t, u))]
        pairs = [(a, b) for i, a in enumerate(qs) for b in qs[i + 1 :]]
        if not pairs:
            return 0.0
        tu = sum(cos(a, b, t) * cos(a, b, u) for a, b in pairs)
        norm = (sum(cos(a, b, u) ** 2 for a, b in pairs) * sum(cos(a, b, t) ** 2 for a, b in pairs)) ** 0.5
        return max(0.0, min(1.0, tu / norm)) * len(pairs) / (len(pairs) + PAIR_PRIOR)

    qp, qc = torch.tensor([0, 3, 7, -1, 11]), torch.tensor([0, 1, 2, 0, 1])
    w = similarity_transfer(db.pair_sims, qp, qc)
    for b, (p, t) in enumerate(zip(qp.tolist(), qc.tolist(), strict=True)):
        for u in range(n_c):
            assert abs(float(w[b, u]) - w_by_hand(p, t, u)) < 1e-4, (p, t, u)
    assert w[0, 1] > 0.3 and w[0, 2] < 0.1  # alike cell types carry similarity, unrelated ones do not
    agree, known = db.agreement(qp, qc)
    for b, (p, t) in enumerate(zip(qp.tolist(), qc.tolist(), strict=True)):
        for e, c in enumerate(pert.tolist()):
            shared = [u for u in range(n_c) if u != t and (p, u) in entry and (c, u) in entry]
            weights = [float(w[b, u]) for u in shared]
            defined = p >= 0 and c != p and any(x > 0 for x in weights)
            assert bool(known[b, e]) == defined
            if defined:
                mean = sum(x * cos(p, c, u) for x, u in zip(weights, shared, strict=True)) / len(shared)
                assert abs(float(agree[b, e]) - mean) < 1e-5
