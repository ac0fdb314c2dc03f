"""Set transformer backbone: Llama blocks from ``transformers``, bidirectional, no positions.

A set of cells has no order, so the backbone must be *permutation equivariant*: permuting the
cells of a set permutes the output rows the same way. Two things in a stock ``LlamaModel``
break that and are switched off here (STATE's releases do the same with their bidirectional
Llama variant):

1. **Causal attention.** In transformers 5.x, ``create_causal_mask`` returns a bidirectional
   mask when ``config.is_causal`` is ``False``; in addition every ``LlamaAttention`` carries an
   ``is_causal`` attribute that the SDPA / flash kernels read when no mask is materialised, so
   it is set to ``False`` on every layer as well.
2. **Rotary positions.** ``LlamaModel.rotary_emb`` is replaced by :class:`NoRotary`, which
   returns ``cos = 1`` and ``sin = 0``; ``apply_rotary_pos_emb`` then is the identity
   (``q * 1 + rotate_half(q) * 0 = q``) whatever ``position_ids`` are.

The vocabulary embedding of ``LlamaModel`` is never used (the model is fed ``inputs_embeds``);
``vocab_size=1`` keeps it to ``H`` parameters so parameter counts stay honest.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from ptrag.errors import PtragError, check_choice


class NoRotary(nn.Module):
    """Drop-in for ``LlamaRotaryEmbedding`` that encodes no position (identity rotation).

    Parameters
    ----------
    head_dim
        Attention head width.
    """

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cos, sin) = (1, 0)`` of shape ``[1, S, head_dim]`` in ``x``'s dtype and device."""
        s = x.shape[1]
        cos = torch.ones(1, s, self.head_dim, dtype=x.dtype, device=x.device)
        return cos, torch.zeros_like(cos)


def llama_set_config(
    hidden: int,
    n_layers: int,
    n_heads: int,
    ffn: int,
    dropout: float = 0.0,
    attn_implementation: Literal["sdpa", "eager"] = "sdpa",
) -> LlamaConfig:
    """Build the ``LlamaConfig`` of a bidirectional set transformer.

    Parameters
    ----------
    hidden
        Model width ``H`` (``hidden_size``).
    n_layers
        Number of Llama blocks.
    n_heads
        Attention heads (must divide ``hidden``); key/value heads = ``n_heads`` (no GQA).
    ffn
        SwiGLU intermediate size.
    dropout
        Attention dropout.
    attn_implementation
        ``"sdpa"`` (default, fused kernels) or ``"eager"``.

    Returns
    -------
    transformers.LlamaConfig
        Configuration with ``is_causal=False``, ``vocab_size=1`` and no cache.
    """
    check_choice("attn_implementation", attn_implementation, ("sdpa", "eager"))
    if n_heads < 1 or hidden % n_heads != 0:
        raise PtragError(f"n_heads ({n_heads}) must be >= 1 and divide hidden ({hidden}).")
    cfg = LlamaConfig(
        vocab_size=1,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        attention_dropout=dropout,
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        tie_word_embeddings=False,
        is_causal=False,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


class SetTransformer(nn.Module):
    """Permutation-equivariant stack of Llama blocks over a set of cells.

    Parameters
    ----------
    hidden
        Width ``H``.
    n_layers
        Number of Llama blocks.
    n_heads
        Attention heads.
    ffn
        SwiGLU intermediate size.
    dropout
        Attention dropout.
    attn_implementation
        ``"sdpa"`` or ``"eager"`` attention kernels (same maths).

    Notes
    -----
    Parameter count: ``H`` (unused 1-row vocabulary) ``+ n_layers * (4H^2 + 3*H*ffn + 2H) + H``
    (q/k/v/o projections without bias, SwiGLU gate/up/down, two RMSNorms per block, final RMSNorm).
    """

    def __init__(
        self,
        hidden: int,
        n_layers: int,
        n_heads: int,
        ffn: int,
        dropout: float = 0.0,
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
    ) -> None:
        super().__init__()
        config = llama_set_config(hidden, n_layers, n_heads, ffn, dropout, attn_implementation)
        self.llama = LlamaModel(config)
        self.llama.rotary_emb = NoRotary(config.head_dim)
        for layer in self.llama.layers:
            layer.self_attn.is_causal = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks over each set.

        Parameters
        ----------
        x
            ``[B, S, H]`` per-cell inputs ``z``.

        Returns
        -------
        torch.Tensor
            ``[B, S, H]`` outputs (after the final RMSNorm).
        """
        return self.llama(inputs_embeds=x, use_cache=False).last_hidden_state
