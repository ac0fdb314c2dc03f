"""The compiled CPU scorer loop equals the torch computation it replaces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

import ptrag.nn.selector as selector
from ptrag.nn import scorer_cpu


def _inputs(b=3, s=5, k=7, h=33, dtype=torch.float32, seed=0):
    """Odd sizes (H = 33 is no multiple of a vector width), a bias and scales away from 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, s, h, generator=gen, dtype=dtype) * 1.5,
        torch.randn(b, k, h, generator=gen, dtype=dtype) - 0.3,
        torch.rand(b, s, k, generator=gen, dtype=dtype) + 0.5,
        torch.randn(h, generator=gen, dtype=dtype),
        torch.randn(2, h, generator=gen, dtype=dtype) * 0.3,
        torch.randn(2, generator=gen, dtype=dtype),
    ]


def _run(args, g_out):
    args = [t.clone().requires_grad_() for t in args]
    out = selector._TripletScorer.apply(*args)
    out.backward(g_out)
    return out.detach(), [t.grad for t in args]


def test_normal_distribution_and_density_are_accurate_in_float32() -> None:
    x = np.linspace(-12, 12, 100_001, dtype=np.float32)
    got = np.array([scorer_cpu._gauss(v) for v in x[::50]], dtype=np.float64)
    ref = x[::50].astype(np.float64)
    assert np.abs(got[:, 0] - stats.norm.cdf(ref)).max() < 3e-7  # Abramowitz & Stegun 7.1.26
    inside = np.abs(ref) < 8
    rel = np.abs(got[:, 1] - stats.norm.pdf(ref)) / stats.norm.pdf(ref)
    assert rel[inside].max() < 1e-5
    cdf0, pdf0 = scorer_cpu._gauss(np.float32(0.0))
    assert cdf0 == 0.5 and pdf0 == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-6)
    assert math.isnan(scorer_cpu._gauss(np.float32("nan"))[0])


def test_compiled_loop_matches_the_float64_torch_blocks() -> None:
    args = _inputs()
    g_out = torch.randn(3, 5, 7, 2, generator=torch.Generator().manual_seed(1))
    assert selector._compiled(*args) and not selector._compiled(*(t.double() for t in args))
    out, grads = _run(args, g_out)
    with selector.torch_scorer():
        assert not selector._compiled(*args)
        ref, ref_grads = _run([t.double() for t in args], g_out.double())
    assert selector._compiled(*args)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("a", "c", "r", "bias", "w2", "b2"), grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=name)


def test_compiled_loop_is_bit_identical_whatever_the_thread_count() -> None:
    args = _inputs(b=4, h=64, seed=2)
    g_out = torch.randn(4, 5, 7, 2, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            results.append(_run(args, g_out))
    finally:
        torch.set_num_threads(before)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, results[0][1], strict=True))


def test_a_nan_reaches_the_logits_and_gradients() -> None:
    args = _inputs()
    args[0][1, 2, 3] = float("nan")  # one cell's embedding: only that cell's rows turn NaN
    out, grads = _run(args, torch.ones(3, 5, 7, 2))
    assert torch.isnan(out[1, 2]).all()
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1, :2]).all()
    assert torch.isnan(grads[3]).any()  # the bias gradient sums over the NaN cell


def test_pt_rag_training_step_routes_the_block_through_the_compiled_loop(monkeypatch) -> None:
    from tests.test_nn import make_batch, make_model

    calls = []
    for name in ("forward", "backward"):
        real = getattr(scorer_cpu, name)
        monkeypatch.setattr(scorer_cpu, name, lambda *a, real=real, name=name: calls.append(name) or real(*a))
    model = make_model("pt_rag").train()
    model(*make_batch()).pred.sum().backward()
    assert calls == ["forward", "backward"]
