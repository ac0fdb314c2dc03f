"""Stage-1 retrieval: self-exclusion, brute-force agreement, database bookkeeping."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ptrag.errors import PtragError
from ptrag.nn import PRESETS, PerturbationIndex, PerturbationModel, build_query_index, l2_normalise, retrieve


def _database_with_near_duplicates(n: int = 40, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    db = torch.randn(n, d, generator=g)
    db[1] = db[0] + 1e-7 * torch.randn(d, generator=g)  # near-duplicate of row 0
    db[3] = 2.5 * db[2]  # same direction as row 2: cosine exactly 1
    db[5] = db[4]  # exact copy of row 4
    return db


def test_query_never_retrieves_itself_in_any_set_of_the_batch() -> None:
    db = _database_with_near_duplicates()
    n = db.shape[0]
    rows = torch.tensor([0, 2, 4, 1, 3, 5, 17, 39])  # B = 8 different queries, incl. all duplicates
    unit = l2_normalise(db)
    sim, idx = retrieve(unit[rows], unit, k=n - 1, exclude=rows)
    assert idx.shape == (len(rows), n - 1)
    for b, row in enumerate(rows.tolist()):
        got = idx[b].tolist()
        assert row not in got, f"set {b} retrieved its own row {row}"
        assert sorted(got) == [r for r in range(n) if r != row]  # everything else is there, once
    # the duplicates are still found (exclusion is by index, not by value), ranked first at cosine ~1
    partner = {0: 1, 2: 3, 4: 5, 1: 0, 3: 2, 5: 4}
    for b, row in enumerate(rows.tolist()):
        if row in partner:
            assert idx[b, 0].item() == partner[row]
            assert sim[b, 0].item() == pytest.approx(1.0, abs=1e-5)


def test_model_candidates_never_contain_the_query() -> None:
    db = _database_with_near_duplicates()
    names = [f"g{i}" for i in range(db.shape[0])]
    cfg = dataclasses.replace(PRESETS["cpu"], conditioning="pt_rag", topk=8)
    torch.manual_seed(0)
    model = PerturbationModel(cfg, n_genes=6, cell_input_dim=5, pert_dim=db.shape[1], database=db, database_names=names)
    query_names = ["g0", "g2", "g4", "g1", "g3", "g5"]
    qi = model.query_index(query_names)
    assert qi.tolist() == [0, 2, 4, 1, 3, 5]
    b, s = len(query_names), 3
    out = model(torch.rand(b, s, 6), torch.randn(b, s, 5), db[qi], qi)
    for i in range(b):
        assert qi[i].item() not in out.candidates[i].tolist()
        assert len(set(out.candidates[i].tolist())) == cfg.topk
    assert out.similarity[:, 0].min().item() == pytest.approx(1.0, abs=1e-5)  # duplicates come first


def test_retrieve_matches_brute_force_reference() -> None:
    g = torch.Generator().manual_seed(1)
    n, d, k = 200, 32, 10
    db = torch.randn(n, d, generator=g)
    queries = torch.randn(6, d, generator=g)
    queries = torch.cat([queries, db[[7, 150]]])  # two queries that are database rows
    exclude = torch.tensor([-1, 3, -1, 99, 0, -1, 7, 150])
    sim, idx = retrieve(l2_normalise(queries), l2_normalise(db), k, exclude)
    for b in range(queries.shape[0]):
        q = queries[b].double()
        cos = []
        for j in range(n):
            if j == exclude[b].item():
                continue
            v = db[j].double()
            cos.append((float(q @ v / (q.norm() * v.norm())), j))
        ref = sorted(cos, key=lambda t: -t[0])[:k]
        assert idx[b].tolist() == [j for _, j in ref]
        assert sim[b].tolist() == pytest.approx([c for c, _ in ref], abs=1e-5)


def test_unseen_query_excludes_nothing() -> None:
    db = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    unit = l2_normalise(db)
    sim, idx = retrieve(unit[[6]], unit, k=10, exclude=torch.tensor([-1]))
    assert idx[0, 0].item() == 6 and sim[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert sorted(idx[0].tolist()) == list(range(10))


def test_retrieve_is_not_differentiable_and_checks_its_arguments() -> None:
    db = l2_normalise(torch.randn(5, 3))
    q = torch.randn(2, 3, requires_grad=True)
    sim, idx = retrieve(q, db, 2, torch.tensor([0, -1]))
    assert not sim.requires_grad and idx.dtype == torch.long
    with pytest.raises(PtragError, match="topk"):
        retrieve(q, db, 5, torch.tensor([0, -1]))  # only 4 rows left once the query is excluded
    with pytest.raises(PtragError, match="exclude"):
        retrieve(q, db, 2, torch.tensor([5, -1]))
    with pytest.raises(PtragError, match="share D"):
        retrieve(q, torch.randn(5, 4), 2)


def test_l2_normalise_gives_unit_rows_and_keeps_zero_rows() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalise(x)
    torch.testing.assert_close(out, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert math.isfinite(out.sum().item())


def test_build_query_index() -> None:
    assert build_query_index(["b", "zz", "a"], ["a", "b", "c"]).tolist() == [1, -1, 0]
    with pytest.raises(PtragError, match="unique"):
        build_query_index(["a"], ["a", "a"])


def test_index_state_dict_round_trip_restores_vectors_names_and_size() -> None:
    db = torch.randn(7, 3, generator=torch.Generator().manual_seed(3))
    src = PerturbationIndex(db, [f"p{i}" for i in range(7)])
    assert set(src.state_dict()) >= {"raw", "unit"}
    dst = PerturbationIndex(torch.zeros(2, 3))  # placeholder of another size, no names
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.raw, db) and torch.equal(dst.unit, l2_normalise(db))
    assert dst.names == [f"p{i}" for i in range(7)] and len(dst) == 7
    assert dst.query_index(["p4", "nope"]).tolist() == [4, -1]


def test_index_rejects_bad_databases() -> None:
    with pytest.raises(PtragError, match="NaN"):
        PerturbationIndex(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(PtragError, match="one name per row"):
        PerturbationIndex(torch.zeros(3, 2), ["a", "b"])
    with pytest.raises(PtragError, match="not unique"):
        PerturbationIndex(torch.zeros(2, 2), ["a", "a"])
