"""Cell and perturbation encoders (pure torch).

Both encoders map their input to the model's hidden width ``H``:

* :class:`CellEncoder` reads one vector per control cell (its log-expression, a precomputed
  ``obsm`` embedding or PCA scores) and returns ``h_ctrl`` of shape ``[B, S, H]``.
* :class:`PertEncoder` reads one vector per perturbation (a one-hot code or a gene embedding
  such as GenePT) and returns ``h_pert`` of shape ``[..., H]``. The same encoder embeds the
  query perturbation and the retrieved context perturbations, so that the two live in one space.

:class:`Decoder` maps the backbone's output back to a per-gene change.
"""

from __future__ import annotations

import torch
from torch import nn

from ptrag.errors import PtragError


class CellEncoder(nn.Module):
    """Trainable MLP from a cell's input vector to ``h_ctrl``.

    ``n_layers`` linear layers; every layer but the last is followed by LayerNorm, GELU and
    dropout (the shape of STATE's basal encoder). With ``n_layers=1`` it is a single Linear.

    Parameters
    ----------
    input_dim
        Width of the cell input (number of genes, or the embedding width).
    hidden
        Output width ``H``.
    n_layers
        Number of linear layers (>= 1).
    dropout
        Dropout probability after each hidden activation.

    Notes
    -----
    Parameter count: ``(input_dim*H + H) + (n_layers-1) * (2H + H*H + H)``.
    """

    def __init__(self, input_dim: int, hidden: int, n_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        if input_dim < 1 or hidden < 1 or n_layers < 1:
            raise PtragError(
                f"CellEncoder needs input_dim, hidden and n_layers >= 1 (got {input_dim}, {hidden}, {n_layers})."
            )
        layers: list[nn.Module] = []
        d_in = input_dim
        for i in range(n_layers):
            layers.append(nn.Linear(d_in, hidden))
            if i < n_layers - 1:
                layers += [nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout)]
            d_in = hidden
        self.net = nn.Sequential(*layers)
        self.input_dim = input_dim
        self.hidden = hidden

    def forward(self, cell_input: torch.Tensor) -> torch.Tensor:
        """Encode cells.

        Parameters
        ----------
        cell_input
            ``[..., input_dim]`` cell vectors (typically ``[B, S, input_dim]``).

        Returns
        -------
        torch.Tensor
            ``[..., H]`` cell embeddings ``h_ctrl``.
        """
        return self.net(cell_input)


class PertEncoder(nn.Module):
    """MLP with one hidden layer from a perturbation vector to ``h_pert``: Linear -> GELU -> Linear.

    Why two linear maps and not ``Linear -> activation``: ``h_pert`` is *added* to ``h_ctrl``
    (``z = h_ctrl + h_pert``), and an output that ends in GELU is bounded below (about -0.17
    per dimension), so the perturbation could not push the cell state down along any axis. A
    final linear layer removes that restriction, and the hidden non-linearity lets dense gene
    embeddings (GenePT, 1536-d) be mapped non-linearly. For one-hot inputs the first layer is a
    per-perturbation lookup table.

    Parameters
    ----------
    pert_dim
        Width of the perturbation vectors (number of one-hot classes, or embedding width).
    hidden
        Hidden and output width ``H``.
    dropout
        Dropout probability after the hidden activation.

    Notes
    -----
    Parameter count: ``pert_dim*H + H + H*H + H``.
    """

    def __init__(self, pert_dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        if pert_dim < 1 or hidden < 1:
            raise PtragError(f"PertEncoder needs pert_dim and hidden >= 1 (got {pert_dim}, {hidden}).")
        self.net = nn.Sequential(nn.Linear(pert_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.pert_dim = pert_dim
        self.hidden = hidden

    def forward(self, pert_vec: torch.Tensor) -> torch.Tensor:
        """Encode perturbation vectors.

        Parameters
        ----------
        pert_vec
            ``[..., pert_dim]`` perturbation vectors (``[B, Dp]`` queries or ``[B, K, Dp]`` contexts).

        Returns
        -------
        torch.Tensor
            ``[..., H]`` perturbation embeddings.
        """
        return self.net(pert_vec)


class Decoder(nn.Module):
    """Backbone output to per-gene expression change: ``Linear(H, H) -> GELU -> Linear(H, G)``.

    Parameter count: ``H*H + H + H*G + G``.
    """

    def __init__(self, hidden: int, n_genes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, n_genes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., H] -> [..., G]``."""
        return self.net(x)

    def centred(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """``forward(x) - mean_set(forward(x)) + offset`` for ``x`` ``[B, S, H]`` and ``offset``
        ``[B, 1 or S, G]``, computed without a ``[B, S, G]`` mean: the last layer is linear, so
        centring its ``H``-wide input centres its output (the bias cancels); the offset is added
        in place (the product's backward does not read its output)."""
        h = self.net[1](self.net[0](x))
        out = torch.nn.functional.linear(h - h.mean(-2, keepdim=True), self.net[2].weight)
        return out.add_(offset.to(out.dtype))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (buffers such as the retrieval database excluded).

    Parameters
    ----------
    model
        Any module.
    trainable_only
        Count only parameters with ``requires_grad``.

    Returns
    -------
    int
        Total number of scalar parameters.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
