"""PerturbationModel: selection, determinism, batch independence, fused maths, set symmetry, sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from ptrag.errors import PtragError
from ptrag.nn import (
    PRESETS,
    ModelConfig,
    PerturbationModel,
    SetTransformer,
    TripletSelector,
    count_parameters,
)

G, DC, DP, N, TOPK = 24, 16, 12, 40, 8
NAMES = [f"g{i}" for i in range(N)]


def _database() -> torch.Tensor:
    return torch.randn(N, DP, generator=torch.Generator().manual_seed(123))


def make_model(conditioning: str = "pt_rag", seed: int = 0, **overrides) -> PerturbationModel:
    cfg = dataclasses.replace(PRESETS["cpu"], conditioning=conditioning, topk=TOPK, **overrides)
    torch.manual_seed(seed)
    return PerturbationModel(cfg, G, DC, DP, _database(), NAMES)


def make_batch(b: int = 4, s: int = 6, seed: int = 1, rows: list[int] | None = None):
    g = torch.Generator().manual_seed(seed)
    rows = rows if rows is not None else list(range(3, 3 + b))
    db = _database()
    ctrl = torch.rand(b, s, G, generator=g) * 2
    cell_input = torch.randn(b, s, DC, generator=g)
    qi = torch.tensor(rows)
    return ctrl, cell_input, db[qi], qi


def _cat(*batches):
    return tuple(torch.cat(parts) for parts in zip(*batches, strict=True))


# ----------------------------------------------------------------- 9. shape and sign
@pytest.mark.parametrize("conditioning", ["none", "vanilla_rag", "pt_rag"])
def test_output_shape_and_non_negative(conditioning: str) -> None:
    model = make_model(conditioning)
    ctrl, ci, pv, qi = make_batch()
    ctrl = ctrl - 1.0  # some control values negative: the relu must still give >= 0
    out = model(ctrl, ci, pv, qi)
    assert out.pred.shape == (4, 6, G)
    assert (out.pred >= 0).all()
    assert (out.pred == 0).any()  # the relu is active somewhere
    if conditioning == "none":
        assert out.candidates is None and out.weights is None
    else:
        assert out.candidates.shape == (4, TOPK) and out.similarity.shape == (4, TOPK)
    if conditioning == "pt_rag":
        assert out.weights.shape == (4, 6, TOPK) and out.p_include.shape == (4, 6, TOPK)
        assert set(out.weights.unique().tolist()) <= {0.0, 1.0}
    if conditioning == "vanilla_rag":
        assert out.weights is None and out.p_include is None


# ------------------------------------------------------ 3. straight-through gradient
def test_straight_through_gradient_reaches_the_scorer() -> None:
    model = make_model("pt_rag").train()
    torch.manual_seed(5)
    out = model(*make_batch())
    out.pred.square().mean().backward()  # prediction loss only: the gradient must pass through w
    sel = model.selector
    for p in (sel.score_in.weight, sel.score_out.weight, sel.norm.weight, sel.proj.weight):
        assert p.grad is not None and p.grad.abs().sum().item() > 0


def test_sparsity_term_alone_has_gradient() -> None:
    model = make_model("pt_rag").train()
    torch.manual_seed(5)
    out = model(*make_batch())
    out.weights.mean().backward()
    assert model.selector.score_out.weight.grad.abs().sum().item() > 0


def _with_best(hard: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The ``best`` empty-selection rule by hand: an empty row takes its argmax."""
    out = hard.clone()
    empty = hard.sum(-1) == 0
    best = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).to(hard.dtype)
    out[empty] = best[empty]
    return out


def test_threshold_selection_in_training_is_deterministic_with_gradient() -> None:
    model = make_model("pt_rag").train()
    batch = make_batch()
    torch.manual_seed(1)
    a = model(*batch, sample_selection=False)
    torch.manual_seed(2)
    b = model(*batch, sample_selection=False)
    assert torch.equal(a.weights.detach(), b.weights.detach())
    hard = (a.p_include > 0.5).float()
    assert bool((hard.sum(-1) == 0).any())  # the rule below is exercised
    assert torch.equal(a.weights.detach(), _with_best(hard, a.p_include.detach()))
    a.pred.square().mean().backward()
    assert model.selector.score_out.weight.grad.abs().sum().item() > 0


# ------------------------------------------------------------- 4. noise-free eval
def _expected(p: torch.Tensor, empty: str) -> torch.Tensor:
    """E[w] of the training selection by hand: independent Bernoulli(p_k), plus the rule."""
    if empty != "best":
        return p
    best = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype)
    return p + torch.prod(1 - p, dim=-1, keepdim=True) * best


def test_evaluation_is_noise_free_and_training_is_stochastic() -> None:
    model = make_model("pt_rag")
    batch = make_batch()
    model.eval()
    torch.manual_seed(1)
    a = model(*batch)
    torch.manual_seed(2)
    b = model(*batch)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.weights, b.weights)
    torch.testing.assert_close(a.weights, _expected(a.p_include, "best"), rtol=0, atol=1e-7)
    model.train()
    torch.manual_seed(1)
    c = model(*batch)
    torch.manual_seed(2)
    d = model(*batch)
    assert not torch.equal(c.weights, d.weights)
    # eval sampling on request (sample_selection=True) is stochastic too
    model.eval()
    torch.manual_seed(1)
    e = model(*batch, sample_selection=True)
    torch.manual_seed(2)
    f = model(*batch, sample_selection=True)
    assert not torch.equal(e.weights, f.weights)


@pytest.mark.parametrize("empty", ["none", "best"])
def test_expected_selection_is_the_mean_of_the_training_samples(empty: str) -> None:
    """The evaluation selection is E[w] under training's Gumbel sampling (checked by Monte Carlo)."""
    sel = TripletSelector(4, tau=0.5)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 2, generator=gen) * 1.5 - torch.tensor([0.0, 1.0])  # some rows often empty
    with torch.no_grad():
        expected, p = sel.select(logits, "expected", empty)
        torch.manual_seed(0)
        draws = torch.stack([sel.select(logits, "sample", empty)[0] for _ in range(40_000)])
    mc = draws.mean(0)
    # 40,000 Bernoulli draws: standard error <= 0.0025
    torch.testing.assert_close(mc, expected, rtol=0, atol=0.012)
    torch.testing.assert_close(expected, _expected(p, empty), rtol=0, atol=1e-7)
    assert bool((draws.sum(-1) >= 1).all()) is (empty == "best")


# ------------------------------------------------------------ 5. batch independence
@pytest.mark.parametrize("conditioning", ["none", "vanilla_rag", "pt_rag"])
def test_outputs_of_a_set_do_not_depend_on_other_sets(conditioning: str) -> None:
    model = make_model(conditioning).eval()
    a = make_batch(b=1, seed=10, rows=[5])
    b = make_batch(b=3, seed=11, rows=[6, 7, 8])
    c = make_batch(b=3, seed=12, rows=[20, 21, 22])
    with torch.no_grad():
        ab = model(*_cat(a, b))
        ac = model(*_cat(a, c))
        alone = model(*a)
    for other in (ac, alone):
        torch.testing.assert_close(ab.pred[0], other.pred[0], rtol=0, atol=1e-5)
        if conditioning != "none":
            assert torch.equal(ab.candidates[0], other.candidates[0])
        if conditioning == "pt_rag":
            torch.testing.assert_close(ab.weights[0], other.weights[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(ab.p_include[0], other.p_include[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- 6. empty selection
def _capture_z(model: PerturbationModel, batch) -> tuple[torch.Tensor, object]:
    seen = {}
    handle = model.backbone.register_forward_pre_hook(lambda mod, args: seen.setdefault("z", args[0].detach()))
    torch.manual_seed(0)
    out = model(*batch)
    handle.remove()
    return seen["z"], out


def _triplet_proj(model: PerturbationModel, batch, out) -> torch.Tensor:
    """``proj([h_ctrl; h_pert; h_k])`` of every (cell, candidate) from the concatenation: [B, S, K, H]."""
    _, ci, pv, _ = batch
    with torch.no_grad():
        h_ctrl = model.cell_encoder(ci)
        h_pert = model.pert_encoder(pv)
        h_ctx = model.pert_encoder(model.index.raw[out.candidates])
        return model.selector.proj(TripletSelector._triplets(h_ctrl, h_pert, h_ctx))


@pytest.mark.parametrize("empty_selection", ["best", "null", "paper", "keep"])
@pytest.mark.parametrize("training", [False, True])
def test_empty_selection(empty_selection: str, training: bool) -> None:
    model = make_model("pt_rag", empty_selection=empty_selection).train(training)
    with torch.no_grad():
        model.selector.score_out.bias.copy_(torch.tensor([0.0, -1e4]))  # include logit hugely negative
    batch = make_batch()
    z, out = _capture_z(model, batch)
    proj = _triplet_proj(model, batch, out)
    _, ci, pv, _ = batch
    with torch.no_grad():
        h_ctrl, h_pert = model.cell_encoder(ci), model.pert_encoder(pv)[:, None, :]
    if empty_selection == "best":
        # nothing passes: every cell gets exactly its best-scoring candidate's triplet
        assert torch.equal(out.weights.sum(-1), torch.ones_like(out.weights.sum(-1)))
        best = out.p_include.argmax(-1)
        expected = torch.gather(proj, 2, best[..., None, None].expand(-1, -1, 1, proj.shape[-1]))[:, :, 0]
    else:
        assert out.weights.sum().item() == 0
        if empty_selection == "keep":
            expected = h_ctrl + h_pert
        elif empty_selection == "null":
            with torch.no_grad():
                null = torch.cat([h_ctrl, h_pert.expand_as(h_ctrl), torch.zeros_like(h_ctrl)], -1)
                expected = model.selector.proj(null)
        else:
            expected = torch.zeros_like(z)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_default_generator_input_reaches_h_ctrl_only_through_selected_triplets(training: bool) -> None:
    """Eq. 7 (default rule): z = sum_k w_k proj([h_ctrl; h_pert; h_k]), nothing else; a cell
    whose selection is empty has exactly its best candidate's triplet."""
    model = make_model("pt_rag").train(training)
    assert model.cfg.empty_selection == "best"
    batch = make_batch()
    z, out = _capture_z(model, batch)
    w = out.weights.detach()
    assert bool((w.sum(-1) >= 1 - 1e-6).all())  # every cell keeps at least one triplet
    expected = (w[..., None] * _triplet_proj(model, batch, out)).sum(2)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-5)
    # h_ctrl enters only through the triplets: cells of one set with the same selection and
    # the same control state get the same z, whatever the other cells hold
    ctrl, ci, pv, qi = batch
    ci2 = ci.clone()
    ci2[:, 1:] = torch.randn_like(ci2[:, 1:])
    model.eval()
    z_a, _ = _capture_z(model, (ctrl, ci, pv, qi))
    z_b, _ = _capture_z(model, (ctrl, ci2, pv, qi))
    torch.testing.assert_close(z_a[:, 0], z_b[:, 0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ 7. fused == naive
def _pair(**overrides) -> tuple[PerturbationModel, PerturbationModel]:
    fused = make_model("pt_rag", fused_triplets=True, **overrides)
    naive = make_model("pt_rag", seed=99, fused_triplets=False, **overrides)
    naive.load_state_dict(fused.state_dict())
    # non-trivial LayerNorm affine so its split per part is exercised
    return fused, naive


def test_fused_equals_naive_selector_on_offset_inputs() -> None:
    torch.manual_seed(3)
    sel = TripletSelector(16, tau=0.5)
    with torch.no_grad():
        sel.norm.weight.uniform_(0.5, 1.5)
        sel.norm.bias.uniform_(-0.5, 0.5)
    h_ctrl = torch.randn(3, 5, 16) * 2 + 3  # non-zero means stress the variance-from-moments formula
    h_pert = torch.randn(3, 16) - 1
    h_ctx = torch.randn(3, 7, 16) * 0.5
    lf = sel.scores(h_ctrl, h_pert, h_ctx, fused=True)
    ln = sel.scores(h_ctrl, h_pert, h_ctx, fused=False)
    torch.testing.assert_close(lf, ln, rtol=0, atol=1e-5)
    w = (torch.rand(3, 5, 7) > 0.5).float()
    torch.testing.assert_close(
        sel.aggregate(w, h_ctrl, h_pert, h_ctx, fused=True),
        sel.aggregate(w, h_ctrl, h_pert, h_ctx, fused=False),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.parametrize("empty_selection", ["best", "null", "paper", "keep"])
def test_fused_equals_naive_forward_and_gradients(empty_selection: str) -> None:
    fused, naive = _pair(empty_selection=empty_selection)
    with torch.no_grad():
        for m in (fused, naive):
            torch.manual_seed(4)
            m.selector.norm.weight.uniform_(0.5, 1.5)
            m.selector.norm.bias.uniform_(-0.5, 0.5)
    batch = make_batch()
    # eval: pred, p_include, logits
    fused.eval(), naive.eval()
    with torch.no_grad():
        of, on = fused(*batch), naive(*batch)
        torch.testing.assert_close(of.pred, on.pred, rtol=0, atol=1e-5)
        torch.testing.assert_close(of.p_include, on.p_include, rtol=0, atol=1e-5)
        torch.testing.assert_close(of.weights, on.weights, rtol=0, atol=1e-5)
        h_ctrl = fused.cell_encoder(batch[1])
        h_pert = fused.pert_encoder(batch[2])
        h_ctx = fused.pert_encoder(fused.index.raw[of.candidates])
        torch.testing.assert_close(
            fused.selector.scores(h_ctrl, h_pert, h_ctx, fused=True),
            naive.selector.scores(h_ctrl, h_pert, h_ctx, fused=False),
            rtol=0,
            atol=1e-5,
        )
    # train: same Gumbel noise, same selections, same gradients
    fused.train(), naive.train()
    grads = []
    for m in (fused, naive):
        m.zero_grad()
        torch.manual_seed(7)
        out = m(*batch)
        (out.pred.square().mean() + 0.1 * out.weights.mean()).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(k.startswith("selector.") for k in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_form_never_materialises_the_triplets(fused: bool) -> None:
    model = make_model("pt_rag", fused_triplets=fused).train()
    batch = make_batch()
    b, s = batch[0].shape[:2]
    triplet_shape = (b, s, TOPK, 3 * model.cfg.hidden)
    shapes: list[tuple[int, ...]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*batch).pred.sum().backward()
    assert (triplet_shape in shapes) is (not fused)


# ---------------------------------------------------- 8. set symmetry of the backbone
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_backbone_is_permutation_equivariant_and_bidirectional(attn_implementation: str) -> None:
    torch.manual_seed(0)
    bb = SetTransformer(32, 2, 4, 64, attn_implementation=attn_implementation).eval()
    x = torch.randn(2, 7, 32)
    perm = torch.randperm(7)
    with torch.no_grad():
        y = bb(x)
        torch.testing.assert_close(bb(x[:, perm]), y[:, perm], rtol=0, atol=1e-5)
        x2 = x.clone()
        x2[:, -1] += 1.0  # change only the LAST cell
        y2 = bb(x2)
    # the FIRST cell's output changes: attention is not causal
    assert (y2[:, 0] - y[:, 0]).abs().max().item() > 1e-3


def test_stock_causal_rotary_llama_fails_the_same_checks() -> None:
    """Negative control: the checks above would catch causal attention and rotary positions."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        use_cache=False,
        bos_token_id=None,
        eos_token_id=None,
    )
    stock = LlamaModel(cfg).eval()
    x = torch.randn(2, 7, 32)
    perm = torch.randperm(7)
    with torch.no_grad():
        y = stock(inputs_embeds=x).last_hidden_state
        yp = stock(inputs_embeds=x[:, perm]).last_hidden_state
        x2 = x.clone()
        x2[:, -1] += 1.0
        y2 = stock(inputs_embeds=x2).last_hidden_state
    assert (yp - y[:, perm]).abs().max().item() > 1e-3
    assert (y2[:, 0] - y[:, 0]).abs().max().item() == 0.0


@pytest.mark.parametrize("conditioning", ["none", "pt_rag"])
def test_whole_model_is_permutation_equivariant(conditioning: str) -> None:
    model = make_model(conditioning).eval()
    ctrl, ci, pv, qi = make_batch()
    perm = torch.randperm(ctrl.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(ctrl, ci, pv, qi)
        outp = model(ctrl[:, perm], ci[:, perm], pv, qi)
    torch.testing.assert_close(outp.pred, out.pred[:, perm], rtol=0, atol=1e-5)
    if conditioning == "pt_rag":
        assert torch.equal(outp.weights, out.weights[:, perm])


# ------------------------------------------------------------- 10. parameter counts
def closed_form_count(conditioning: str, H: int, L: int, F: int, Lc: int, G: int, Dc: int, Dp: int) -> int:
    cell = (Dc * H + H) + (Lc - 1) * (2 * H + H * H + H)  # Linear, then [LayerNorm + Linear] per extra layer
    pert = (Dp * H + H) + (H * H + H)  # Linear -> GELU -> Linear
    block = 4 * H * H + 3 * H * F + 2 * H  # q,k,v,o (no bias) + SwiGLU gate/up/down + 2 RMSNorm
    backbone = H + L * block + H  # 1-row vocabulary embedding + blocks + final RMSNorm
    decoder = (H * H + H) + (H * G + G)
    total = cell + pert + backbone + decoder
    if conditioning == "vanilla_rag":
        total += (3 * H * H + 3 * H) + (H * H + H)  # MultiheadAttention in_proj + out_proj
    if conditioning == "pt_rag":
        total += 2 * 3 * H  # LayerNorm(3H)
        total += (3 * H * H + H) + (2 * H + 2)  # scorer Linear(3H, H), Linear(H, 2)
        total += 3 * H * H + H  # projection Linear(3H, H)
    return total


@pytest.mark.parametrize("conditioning", ["none", "vanilla_rag", "pt_rag"])
def test_paper_preset_parameter_count_matches_closed_form(conditioning: str) -> None:
    cfg = dataclasses.replace(PRESETS["paper"], conditioning=conditioning)
    g, dc, dp = 2000, 2000, 1536
    db = torch.randn(64, dp)
    model = PerturbationModel(cfg, n_genes=g, cell_input_dim=dc, pert_dim=dp, database=db)
    expected = closed_form_count(conditioning, cfg.hidden, cfg.n_layers, cfg.ffn, cfg.cell_encoder_layers, g, dc, dp)
    assert count_parameters(model) == expected
    # hand-evaluated totals at H=128, L=4, F=512, G=Dc=2000, Dp=1536
    assert expected == {"none": 1_810_512, "vanilla_rag": 1_876_560, "pt_rag": 1_910_098}[conditioning]
    # the database is a buffer, not a parameter
    assert count_parameters(model, trainable_only=True) == expected


# -------------------------------------------------------------- 11. state_dict
@pytest.mark.parametrize("conditioning", ["vanilla_rag", "pt_rag"])
def test_state_dict_round_trip_restores_database_and_outputs(conditioning: str) -> None:
    model = make_model(conditioning).eval()
    sd = model.state_dict()
    assert torch.equal(sd["index.raw"], _database())
    cfg = dataclasses.replace(PRESETS["cpu"], conditioning=conditioning, topk=TOPK)
    torch.manual_seed(42)
    fresh = PerturbationModel(cfg, G, DC, DP, database=torch.zeros(TOPK + 1, DP))  # placeholder
    fresh.load_state_dict(sd)
    fresh.eval()
    assert fresh.database_names == NAMES
    batch = make_batch()
    with torch.no_grad():
        a, b = model(*batch), fresh(*batch)
    assert torch.equal(a.pred, b.pred) and torch.equal(a.candidates, b.candidates)


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"hidden": 0}, "hidden"),
        ({"n_heads": 3}, "n_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"ffn": 0}, "ffn"),
        ({"topk": 0}, "topk"),
        ({"tau": 0.0}, "tau"),
        ({"dropout": 1.0}, "dropout"),
        ({"conditioning": "rag"}, "conditioning"),
        ({"empty_selection": "drop"}, "empty_selection"),
        ({"eval_selection": "noise"}, "eval_selection"),
        ({"cell_encoder_layers": 0}, "cell_encoder_layers"),
    ],
)
def test_config_validation_names_the_option(overrides: dict, option: str) -> None:
    with pytest.raises(PtragError, match=option):
        ModelConfig(**overrides).validate()


def test_config_dict_round_trip_and_unknown_keys() -> None:
    cfg = dataclasses.replace(PRESETS["paper"], conditioning="pt_rag")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PtragError, match="topK"):
        ModelConfig.from_dict({"topK": 3})


def test_rag_needs_a_large_enough_database() -> None:
    cfg = dataclasses.replace(PRESETS["cpu"], conditioning="pt_rag", topk=8)
    with pytest.raises(PtragError, match="retrieval database"):
        PerturbationModel(cfg, G, DC, DP)
    with pytest.raises(PtragError, match="topk"):
        PerturbationModel(cfg, G, DC, DP, database=torch.randn(8, DP))  # 8 rows: at most 7 candidates
    with pytest.raises(PtragError, match="pert_dim"):
        PerturbationModel(cfg, G, DC, DP, database=torch.randn(20, DP + 1))


def test_model_checks_input_shapes_and_looks_names_up() -> None:
    model = make_model("pt_rag")
    ctrl, ci, pv, qi = make_batch()
    with pytest.raises(PtragError, match="cell_input"):
        model(ctrl, ci[..., :-1], pv, qi)
    with pytest.raises(PtragError, match="query_index"):
        model(ctrl, ci, pv, qi[:2])
    assert model.query_index(["g3", "unknown"]).tolist() == [3, -1]


def test_blocked_triplet_scorer_matches_autograd(monkeypatch) -> None:
    import ptrag.nn.selector as retrieval

    monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 120)  # blocks of 2 sets: 2 + 2 + 1
    torch.manual_seed(0)
    b, s, k, h = 5, 3, 4, 5
    args = [
        torch.randn(b, s, h, dtype=torch.float64, requires_grad=True),
        torch.randn(b, k, h, dtype=torch.float64, requires_grad=True),
        (torch.rand(b, s, k, dtype=torch.float64) + 0.5).requires_grad_(),
        torch.randn(h, dtype=torch.float64, requires_grad=True),
        torch.randn(2, h, dtype=torch.float64, requires_grad=True),
        torch.randn(2, dtype=torch.float64, requires_grad=True),
    ]
    assert len(retrieval._TripletScorer._blocks(args[0], args[1])) == 3
    assert torch.autograd.gradcheck(retrieval._TripletScorer.apply, args)
    a, c, r, bias, w2, b2 = args
    hidden = torch.nn.functional.gelu(torch.addcmul(bias, a[:, :, None] + c[:, None], r[..., None]))
    torch.testing.assert_close(retrieval._TripletScorer.apply(*args), hidden @ w2.T + b2)


def test_each_distinct_context_is_encoded_once_with_the_same_values() -> None:
    m = make_model("pt_rag").train()
    idx = torch.tensor([[3, 7, 3, 1], [7, 7, 0, 3]])
    calls = []
    hook = m.pert_encoder.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    got = m._encode_contexts(idx, lambda rows: m.pert_encoder(m.index.raw[rows]))
    hook.remove()
    assert calls == [4]  # rows 0, 1, 3, 7
    want = m.pert_encoder(m.index.raw[idx])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # with dropout in training, every retrieval draws its own mask: no sharing
    d = make_model("pt_rag", dropout=0.5).train()
    enc = d._encode_contexts(torch.tensor([[2, 2]]), lambda rows: d.pert_encoder(d.index.raw[rows]))
    assert not torch.equal(*enc[0])


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    from ptrag.train.cost import paired_ratio

    base = [1.0, 2.0, 10.0]  # the third round was slow for everybody
    assert paired_ratio([1.2, 2.2, 11.0], base) == pytest.approx(1.1)
