"""pt_rag_response: a database of training groups with their observed responses, no leakage."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from ptrag.cli import main
from ptrag.nn.readout import flat_queries, readout_choices, readout_weights, transfer_cell_types
from ptrag.nn.responses import ResponseIndex, candidate_scores, placeholder_index
from ptrag.train.config import TrainConfig
from ptrag.train.predict import load_plan
from ptrag.train.prepare import build_plan, make_loader, prepare_run
from tests._data import TINY_MODEL, make_adata

NET = dict(hidden=16, n_heads=2, ffn=32, n_genes=20, topk=5, batch_size=4, cell_set_size=8)


def test_candidate_rule_orders_own_then_same_cell_type_and_excludes_the_query_pair():
    # entries: (pert, ct) = (0,0) (0,1) (1,0) (2,0) (1,1) (3,2)
    entry_pert = torch.tensor([0, 0, 1, 2, 1, 3])
    entry_ct = torch.tensor([0, 1, 0, 0, 1, 2])
    sim = torch.tensor([[1.0, 1.0, 0.2, 0.9, 0.2, 0.95]])
    q_pert, q_ct = torch.tensor([0]), torch.tensor([0])
    scores = candidate_scores(sim, entry_pert, entry_ct, q_pert, q_ct, "both")
    assert scores[0, 0] == float("-inf")  # the query's own (pert, cell type) entry
    order = torch.argsort(scores[0], descending=True).tolist()
    # own entry elsewhere, then cell type 0 by cosine (pert 2, pert 1), then the rest by cosine
    assert order[:5] == [1, 3, 2, 5, 4]
    same = torch.argsort(candidate_scores(sim, entry_pert, entry_ct, q_pert, q_ct, "same")[0], descending=True)
    assert same.tolist()[:2] == [3, 2] and same.tolist()[-2:] == [1, 0]  # own-elsewhere last, query pair -inf
    other = torch.argsort(candidate_scores(sim, entry_pert, entry_ct, q_pert, q_ct, "other")[0], descending=True)
    assert other.tolist()[:3] == [1, 5, 4]  # own elsewhere, then other cell types; cell type 0 after
    # a perturbation no cell type trained (-1): nothing excluded, its cell type first
    unseen = candidate_scores(sim, entry_pert, entry_ct, torch.tensor([-1]), q_ct, "both")
    assert torch.isfinite(unseen).all() and torch.argsort(unseen[0], descending=True).tolist()[:3] == [0, 3, 2]


def _toy_index() -> ResponseIndex:
    # entries (pert, ct): (0,0) (0,1) (1,0) (1,1) (2,1), shifts over two genes
    shift = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]])
    return ResponseIndex(
        torch.eye(5, 3), torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 0, 1, 1]), shift, torch.zeros(5, 1)
    )


def test_response_agreement_compares_shifts_in_the_other_cell_types_only():
    agree, known = _toy_index().agreement(torch.tensor([0, 1, -1]), torch.tensor([0, 1, 0]), weighted=False)
    r = 2**-0.5
    # query (pert 0, ct 0): only ct 1 is compared, where pert 0 moved [1, 1]
    assert known[0].tolist() == [False, False, True, True, True]  # its own entries have no agreement
    torch.testing.assert_close(agree[0], torch.tensor([0.0, 0.0, r, r, -1.0]))
    # query (pert 1, ct 1): only ct 0 is compared; pert 2 never trained outside ct 1
    assert known[1].tolist() == [True, True, False, False, False]
    torch.testing.assert_close(agree[1, :2], torch.tensor([0.0, 0.0]))
    # a perturbation that trained nowhere: no agreement at all
    assert not bool(known[2].any()) and not bool(agree[2].any())
    # weighed by the similarity transfer: the two cell types share no pair of perturbations
    # besides the query's, so nothing measured in one ranks the other's entries
    agree, known = _toy_index().agreement(torch.tensor([0, 1, -1]), torch.tensor([0, 1, 0]))
    assert not bool(known.any()) and not bool(agree.any())


def test_agreement_readout_is_a_softmax_over_others_mixed_with_the_own_share(files):
    d, _ = files
    cfg, prep = _prepare(d / "d.h5ad", d / "g.pkl")
    torch.manual_seed(0)
    model = build_plan(cfg, prep).model
    _, _, log_t, own_logit = model.agreement.detach().tolist()
    # one query of perturbation 0: candidates = its own entry elsewhere, three entries with
    # agreement, one with a gene cosine only (every candidate counts: the selection does not gate)
    own = torch.tensor([[True, False, False, False, False]])
    agree = torch.tensor([[float("nan"), 0.5, 0.2, float("nan"), 0.9]])
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.4]])
    t, share = torch.tensor(log_t).exp(), torch.sigmoid(torch.tensor(own_logit))
    r = readout_weights(own, agree, sim, t, share)[0]
    t, beta = math.exp(log_t), 1 / (1 + math.exp(-own_logit))
    e = torch.tensor([math.exp(x / t) for x in (0.5, 0.2, 0.3, 0.9)])
    torch.testing.assert_close(r, torch.cat([torch.tensor([beta]), (1 - beta) * e / e.sum()]))
    # no own entry: the softmax takes everything; only own entries: they share it equally
    r = readout_weights(torch.zeros(1, 5, dtype=torch.bool), agree, sim, t, share)[0]
    torch.testing.assert_close(r, torch.cat([torch.tensor([math.exp(0.9 / t)]), e]) / (e.sum() + math.exp(0.9 / t)))
    r = readout_weights(torch.ones(1, 5, dtype=torch.bool), agree, sim, t, share)[0]
    torch.testing.assert_close(r, torch.full((5,), 0.2))


def test_response_index_round_trips_through_a_placeholder():
    g = torch.Generator().manual_seed(0)
    idx = ResponseIndex(
        torch.randn(5, 4, generator=g), torch.arange(5), torch.tensor([0, 0, 1, 1, 2]),
        torch.randn(5, 7, generator=g), torch.randn(5, 3, generator=g), ["a", "b", "c", "d", "e"], ["x", "y", "z"],
    )  # fmt: skip
    copy = placeholder_index(7, 4, 3)
    copy.load_state_dict(idx.state_dict())
    for name, buf in idx.named_buffers():
        assert torch.equal(buf, getattr(copy, name)), name
    assert copy.labels([4, 0]) == [("e", "z"), ("a", "x")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("response")
    a = make_adata(n_cell_types=3, n_perts=8, cells=12, n_controls=24, n_genes=30)
    a.write_h5ad(d / "d.h5ad")
    rng = np.random.default_rng(1)
    with open(d / "g.pkl", "wb") as f:
        pickle.dump({f"P{i}": rng.normal(size=12).tolist() for i in range(8)}, f)
    return d, a


def _prepare(path, genes):
    cfg = TrainConfig(model="pt_rag_response", target_cell_type="CT0", fewshot=0.5, seed=0, **NET)
    return cfg, prepare_run(cfg, path, gene_tables=[genes])


def test_database_holds_training_groups_only_and_ignores_held_out_cells(files, tmp_path):
    d, a = files
    cfg, prep = _prepare(d / "d.h5ad", d / "g.pkl")
    train = prep.split.groups("train")
    held = pd.concat([prep.split.groups("val"), prep.split.groups("test")])
    entries = {
        (prep.pert_names[p], prep.cell_types[c])
        for p, c in zip(prep.responses["entry_pert"], prep.responses["entry_ct"], strict=True)
    }
    assert entries == set(zip(train["perturbation"], train["cell_type"], strict=True))
    assert not entries & set(zip(held["perturbation"], held["cell_type"], strict=True)) and len(held) > 0
    # alter every held-out cell: the database, the genes and the whole initial model are bit-identical
    b = a.copy()
    mask = (
        (b.obs["cell_type"].astype(str) + "/" + b.obs["gene"].astype(str))
        .isin(held["cell_type"] + "/" + held["perturbation"])
        .to_numpy()
    )
    x = b.X.toarray()
    x[mask] = x[mask] * 3.0 + 1.0
    b.X = type(a.X)(x)
    b.write_h5ad(tmp_path / "altered.h5ad")
    _, prep2 = _prepare(tmp_path / "altered.h5ad", d / "g.pkl")
    assert prep2.genes == prep.genes
    for k, v in prep.responses.items():
        assert np.array_equal(v, prep2.responses[k]), k
    torch.manual_seed(0)
    plan1 = build_plan(cfg, prep)
    torch.manual_seed(0)
    plan2 = build_plan(cfg, prep2)
    s1, s2 = plan1.state_dict(), plan2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:  # tensors bit for bit; the databases' names (extra state) equal
        assert torch.equal(s1[k], s2[k]) if torch.is_tensor(s1[k]) else s1[k] == s2[k], k
    # ...so the predictions of the training groups are bit-identical too
    loader1, loader2 = (
        make_loader(cfg, prep, "train", freeze_epoch=True),
        make_loader(cfg, prep2, "train", freeze_epoch=True),
    )
    plan1.eval(), plan2.eval()
    with torch.no_grad():
        for b1, b2 in zip(loader1, loader2, strict=True):
            assert torch.equal(plan1(b1).pred, plan2(b2).pred)


def test_query_pair_is_never_a_candidate_in_any_batch(files):
    d, _ = files
    cfg, prep = _prepare(d / "d.h5ad", d / "g.pkl")
    torch.manual_seed(0)
    plan = build_plan(cfg, prep)
    db = plan.model.responses
    seen = 0
    for which in ("train", "val", "test"):
        for batch in make_loader(cfg, prep, which):
            out = plan(batch)
            q = plan.query_rows(batch["pert_id"])
            cand_pert, cand_ct = db.entry_pert[out.candidates], db.entry_ct[out.candidates]
            clash = (cand_pert == q[:, None]) & (cand_ct == batch["ct_id"][:, None])
            assert not bool(clash.any()), which
            # the query's own entries in other cell types are always retrieved (they rank first)
            own = (db.entry_pert[None, :] == q[:, None]) & (db.entry_ct[None, :] != batch["ct_id"][:, None])
            assert torch.equal(((cand_pert == q[:, None]) & ~clash).sum(1), own.sum(1).clamp_max(cfg.topk))
            seen += len(q)
    assert seen > 0


def test_readout_sets_the_set_mean_and_the_network_each_cells_departure(files):
    d, _ = files
    cfg, prep = _prepare(d / "d.h5ad", d / "g.pkl")
    torch.manual_seed(0)
    plan = build_plan(cfg, prep).eval()
    batch = next(iter(make_loader(cfg, prep, "train")))
    with torch.no_grad():
        out = plan(batch)
    db = plan.model.responses
    q = plan.query_rows(batch["pert_id"])
    own = ~out.same_cell_type & (db.entry_pert[out.candidates] == q[:, None])
    m = plan.model.agreement.detach()
    # each other cell type's shifts scaled by its transfer to the query's (ptrag.nn.transfer)
    # where the query's cell type keeps the transfer: nowhere by default, per cell type with
    # response_transfer = "auto" (tests/test_readout.py)
    assert plan.model.cfg.response_transfer is False
    beta = db.transfer(q, batch["ct_id"])[0].gather(1, db.entry_ct[out.candidates])
    assert bool((beta[out.same_cell_type] == 1).all())
    beta = torch.ones_like(beta)
    flat = flat_queries(db, plan.model.cfg, batch["ct_id"])  # cell types read with equal weights (ptrag.nn.readout)
    r = readout_weights(own, out.agreement, out.similarity, m[2].exp(), torch.sigmoid(m[3]), flat)
    # the set mean of control + change is the cell type's control mean + the retrieved shifts'
    # weighted mean, whatever the network says (its part is centred in each set)
    readout = torch.einsum("bk,bkg->bg", r, db.shift[out.candidates] * beta[..., None])
    expected = db.control_mean[batch["ct_id"]] + readout
    torch.testing.assert_close((batch["ctrl_expr"] + out.delta).mean(1), expected, atol=1e-5, rtol=1e-5)
    # with a silent network, each cell moves by exactly that: its set's mean replaced
    torch.nn.init.zeros_(plan.model.decoder.net[2].weight)
    torch.nn.init.zeros_(plan.model.decoder.net[2].bias)
    with torch.no_grad():
        out = plan(batch)
    centring = db.control_mean[batch["ct_id"]][:, None, :] - batch["ctrl_expr"].mean(1, keepdim=True)
    torch.testing.assert_close(out.delta, (centring + readout[:, None]).expand_as(out.delta))
    # the control means are those of the cell types' control cells
    _, a = files
    ct0 = a[(a.obs["cell_type"] == "CT0") & (a.obs["gene"] == "non-targeting"), prep.genes].X.toarray().mean(0)
    np.testing.assert_allclose(db.control_mean[prep.cell_types.index("CT0")].numpy(), ct0, rtol=1e-5, atol=1e-6)


def test_train_predict_and_log_candidate_cell_types(files, tmp_path):
    d, _ = files
    run = tmp_path / "run"
    args = ["train", "--data", str(d / "d.h5ad"), "--genes", str(d / "g.pkl"), "--model", "pt_rag_response"]
    args += ["--target-cell-type", "CT0", "--max-steps", "4", "--val-every", "2", "--fewshot", "0.5", *TINY_MODEL]
    auto = tmp_path / "auto.toml"  # the transfer chosen per cell type (a TOML-only option)
    auto.write_text('response_transfer = "auto"\n')
    assert main([*args, "--config", str(auto), "--out", str(run)]) == 0
    # the summary says what the readout chose in each cell type: what the loaded model computes
    chosen = json.loads((run / "train_summary.json").read_text())["response_readout"]
    model = load_plan(run).model
    assert chosen == readout_choices(model.responses, model.cfg) and set(chosen) == {"CT0", "CT1", "CT2"}
    keep = transfer_cell_types(model.responses, model.cfg.topk, model.cfg.response_candidates)
    assert [chosen[c]["transfer"] for c in model.responses.cell_type_names] == keep.tolist()
    out = tmp_path / "pred.h5ad"
    assert main(["predict", "--run", str(run), "--data", str(d / "d.h5ad"), "--out", str(out)]) == 0
    log = pd.read_csv(out.with_suffix(".retrieval.csv"))
    assert {"candidate", "candidate_cell_type", "selected_fraction"} <= set(log.columns)
    assert set(log["candidate_cell_type"]) <= {"CT0", "CT1", "CT2"}
    # every test query of CT0 retrieves its own entries in CT1 and CT2 (it trains there), never (query, CT0)
    mine = log[log["candidate"] == log["query"]]
    assert set(mine["candidate_cell_type"]) == {"CT1", "CT2"}
    assert mine.groupby("query").size().eq(2).all()


def test_own_summary_never_reads_the_query_cell_type():
    # entries (pert, ct): (0,0) (0,1) (0,2) (1,1); summaries 1, 2, 4, 8 (one column)
    idx = ResponseIndex(
        torch.zeros(4, 3), torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 1]),
        torch.zeros(4, 5), torch.tensor([[1.0], [2.0], [4.0], [8.0]]),
    )  # fmt: skip
    # the query's own response elsewhere: pert 0 outside cell type 0 -> mean of (0,1) and (0,2)
    assert idx.own_summary(torch.tensor([0]), torch.tensor([0])).item() == 3.0
    # a perturbation that trains nowhere else, or none at all: zeros
    assert idx.own_summary(torch.tensor([1, -1]), torch.tensor([1, 1])).tolist() == [[0.0], [0.0]]


def test_response_agreement_equals_the_definition_on_a_random_database():
    from ptrag.nn.retrieval import l2_normalise

    g = torch.Generator().manual_seed(0)
    pert, ct = torch.arange(30).repeat(4), torch.arange(4).repeat_interleave(30)
    keep = torch.rand(120, generator=g) > 0.2  # some (perturbation, cell type) groups missing
    pert, ct = pert[keep], ct[keep]
    db = ResponseIndex(torch.randn(len(pert), 8, generator=g), pert, ct, torch.randn(len(pert), 50, generator=g),
                       torch.zeros(len(pert), 1))  # fmt: skip
    q_pert, q_ct = torch.tensor([0, 5, -1, 29, 7]), torch.tensor([0, 1, 2, 3, 0])
    agree, known = db.agreement(q_pert, q_ct, weighted=False)  # the weighted form: tests/test_transfer.py
    unit, entry = l2_normalise(db.shift), {(int(p), int(c)): i for i, (p, c) in enumerate(zip(pert, ct, strict=True))}
    for b, (p, t) in enumerate(zip(q_pert.tolist(), q_ct.tolist(), strict=True)):
        for e, c in enumerate(pert.tolist()):
            shared = [u for u in range(4) if u != t and (p, u) in entry and (c, u) in entry]
            defined = p >= 0 and c != p and bool(shared)
            assert bool(known[b, e]) == defined
            if defined:
                mean = sum(float(unit[entry[(p, u)]] @ unit[entry[(c, u)]]) for u in shared) / len(shared)
                assert abs(float(agree[b, e]) - mean) < 1e-5


def test_the_pair_table_answers_exactly_as_the_search():
    g = torch.Generator().manual_seed(3)
    n_p, n_c = 7, 3
    pert, ct = torch.arange(n_p).repeat(n_c), torch.arange(n_c).repeat_interleave(n_p)
    keep = torch.rand(len(pert), generator=g) > 0.2  # some pairs did not train
    vec = torch.randn(n_p, 5, generator=g)
    db = ResponseIndex(vec[pert[keep]], pert[keep], ct[keep], torch.randn(int(keep.sum()), 9, generator=g),
                       torch.randn(int(keep.sum()), 2, generator=g))  # fmt: skip
    qp = torch.tensor([0, 3, 6, 2, 5, 1])
    qc = torch.tensor([0, 1, 2, 2, 0, 1])
    for rule in ("both", "same", "other"):
        for agreement in (False, True):
            live = db._search(vec[qp], qp, qc, 4, rule, agreement)
            served = db.search(vec[qp], qp, qc, 4, rule, agreement)
            assert db._pairs, "known pairs must be served from the table"
            torch.testing.assert_close(served.idx, live[1], rtol=0, atol=0)
            torch.testing.assert_close(served.sim, live[0])
            if agreement:
                torch.testing.assert_close(served.agree, live[2], equal_nan=True)
    # another gene vector, or an unknown perturbation, is searched live
    other = db.search(vec[qp] + 1.0, qp, qc, 4)
    torch.testing.assert_close(other.idx, db._search(vec[qp] + 1.0, qp, qc, 4, "both", False)[1], rtol=0, atol=0)
    assert not db._known_pairs(vec[:2], torch.tensor([0, -1]), torch.tensor([0, 0]))
