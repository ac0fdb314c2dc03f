"""PT-RAG's scorer block as one compiled CPU loop (numba), forward and backward.

The selector's second scorer layer needs ``gelu(x) @ w2.T + b2`` with
``x[b,s,k,h] = (a[b,s,h] + c[b,k,h]) * r[b,s,k] + bias[h]``: the only ``B x S x K x H`` quantity
of PT-RAG (``64 x 64 x 32 x 128`` = 16.8 M values per step at the paper preset). Torch walks it
with one kernel per operation (broadcast add, scale, GELU, its derivative, four reductions):
about a dozen passes over the block, forward and backward. Here each ``(b, s, k)`` row of ``H``
values is computed once per pass in registers and reduced on the spot; nothing of the block's
size is ever stored. ``benchmarks/train_step.py`` measures what this saves.

The GELU is the exact (erf) one, ``x * Phi(x)``, in float32. ``Phi`` uses Abramowitz & Stegun
7.1.26 (absolute error below 2.5e-7 in float32) and ``phi`` a range-reduced exponential, so the
inner loop has no library call and vectorises. The derivative is ``Phi(x) + x * phi(x)``.

Only float32 CPU tensors take this path (:func:`usable`); float64 (gradient checks), other
devices and autocast use the torch blocks of :class:`ptrag.nn.selector._TripletScorer`, which
compute the same function. numba is imported with this module, on first use of the scorer.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

_F = np.float32
# every fast-math flag except "no NaN / no inf": a diverging model still shows NaN
_FLAGS = dict(fastmath={"reassoc", "contract", "arcp", "nsz", "afn"}, error_model="numpy", cache=True)


@intrinsic
def _pow2(typingctx, n):
    """``2.0 ** n`` for an int32 ``n`` in [-126, 127], built from the float's exponent bits."""

    def codegen(context, builder, signature, args):
        biased = builder.add(args[0], ir.Constant(ir.IntType(32), 127))
        return builder.bitcast(builder.shl(biased, ir.Constant(ir.IntType(32), 23)), ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(inline="always", **_FLAGS)
def _gauss(x):
    """``(Phi(x), phi(x))``: the standard normal distribution and density, float32."""
    z = min(abs(x) * _F(0.70710678), _F(9.0))  # |x| / sqrt(2); exp(-81) is still a normal float
    y = -z * z
    n = np.int32(math.floor(y * _F(1.44269504) + _F(0.5)))  # exp(y) = 2^n exp(t), |t| <= ln2 / 2
    nf = _F(n)
    t = (y - nf * _F(0.693145752)) - nf * _F(1.42860677e-06)  # ln 2 in two parts (Cody-Waite)
    p = _F(1 / 5040)
    for coef in (_F(1 / 720), _F(1 / 120), _F(1 / 24), _F(1 / 6), _F(0.5), _F(1.0), _F(1.0)):
        p = p * t + coef
    e = p * _pow2(n)  # exp(-x^2 / 2)
    u = _F(1.0) / (_F(1.0) + _F(0.3275911) * z)
    q = _F(1.061405429)
    for coef in (_F(-1.453152027), _F(1.421413741), _F(-0.284496736), _F(0.254829592)):
        q = q * u + coef
    tail = _F(0.5) * q * u * e  # Phi(-|x|) = erfc(z) / 2
    cdf = _F(1.0) - tail if x >= 0 else tail
    return cdf, e * _F(0.39894228)


@numba.njit(parallel=True, **_FLAGS)
def _forward(a, c, r, bias, w2, b2, out):
    n_b, n_s, n_h = a.shape
    for b in prange(n_b):
        for s in range(n_s):
            for k in range(c.shape[1]):
                rr = r[b, s, k]
                acc0 = _F(0.0)
                acc1 = _F(0.0)
                for h in range(n_h):
                    x = (a[b, s, h] + c[b, k, h]) * rr + bias[h]
                    gl = x * _gauss(x)[0]
                    acc0 += gl * w2[0, h]
                    acc1 += gl * w2[1, h]
                out[b, s, k, 0] = acc0 + b2[0]
                out[b, s, k, 1] = acc1 + b2[1]


@numba.njit(parallel=True, **_FLAGS)
def _backward(a, c, r, bias, w2, g_out, g_a, g_c, g_r, g_bias, g_w2):
    """Gradients; ``g_bias`` ``[B, H]`` and ``g_w2`` ``[B, 2, H]`` per set, summed by the caller."""
    n_b, n_s, n_h = a.shape
    for b in prange(n_b):
        g_bias[b] = 0
        g_w2[b] = 0
        g_c[b] = 0
        for s in range(n_s):
            g_a[b, s] = 0
            for k in range(c.shape[1]):
                rr = r[b, s, k]
                g0 = g_out[b, s, k, 0]
                g1 = g_out[b, s, k, 1]
                acc_r = _F(0.0)
                for h in range(n_h):
                    centred = a[b, s, h] + c[b, k, h]
                    x = centred * rr + bias[h]
                    cdf, pdf = _gauss(x)
                    gl = x * cdf
                    g_w2[b, 0, h] += g0 * gl
                    g_w2[b, 1, h] += g1 * gl
                    gx = (g0 * w2[0, h] + g1 * w2[1, h]) * (cdf + x * pdf)
                    acc_r += gx * centred
                    g_bias[b, h] += gx
                    g_a[b, s, h] += gx * rr
                    g_c[b, k, h] += gx * rr
                g_r[b, s, k] = acc_r


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the compiled loop applies: float32 CPU tensors, a two-logit output layer.

    Parameters
    ----------
    *tensors
        ``a, c, r, bias, w2, b2`` of :func:`forward`.
    """
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors) and tensors[4].shape[0] == 2


def _arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return [t.detach().contiguous().numpy() for t in tensors]


def forward(
    a: torch.Tensor, c: torch.Tensor, r: torch.Tensor, bias: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """``gelu((a[:, :, None] + c[:, None]) * r[..., None] + bias) @ w2.T + b2``, ``[B, S, K, 2]``.

    Parameters
    ----------
    a, c, r, bias, w2, b2
        ``[B, S, H]``, ``[B, K, H]``, ``[B, S, K]``, ``[H]``, ``[2, H]``, ``[2]`` float32 CPU tensors.

    Returns
    -------
    torch.Tensor
        The logits.
    """
    out = torch.empty(a.shape[0], a.shape[1], c.shape[1], 2)
    _forward(*_arrays(a, c, r, bias, w2, b2), out.numpy())
    return out


def backward(
    a: torch.Tensor, c: torch.Tensor, r: torch.Tensor, bias: torch.Tensor, w2: torch.Tensor, g_out: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Gradients of :func:`forward`'s output (upstream ``g_out``) with respect to its six inputs.

    Parameters
    ----------
    a, c, r, bias, w2
        As in :func:`forward`.
    g_out
        ``[B, S, K, 2]`` upstream gradient.

    Returns
    -------
    tuple of torch.Tensor
        ``g_a, g_c, g_r, g_bias, g_w2, g_b2``.
    """
    n_b, n_h = a.shape[0], a.shape[2]
    g_a, g_c, g_r = torch.empty(a.shape), torch.empty(c.shape), torch.empty(r.shape)
    g_bias, g_w2 = torch.empty(n_b, n_h), torch.empty(n_b, 2, n_h)
    grads = (g_a, g_c, g_r, g_bias, g_w2)
    _backward(*_arrays(a, c, r, bias, w2, g_out), *(g.numpy() for g in grads))
    return g_a, g_c, g_r, g_bias.sum(0), g_w2.sum(0), g_out.sum(dim=(0, 1, 2))
