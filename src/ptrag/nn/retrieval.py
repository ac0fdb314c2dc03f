"""Retrieval for the RAG conditionings (pure torch).

Stage 1 (fixed, non-differentiable): :func:`retrieve` finds the top-K most cosine-similar
*training* perturbations of each query, once per set, with the query's own database row masked
out. :class:`PerturbationIndex` holds the database as buffers (so it travels in the
``state_dict`` / checkpoint, names included) and answers queries.

Stage 2 (learned, PT-RAG) is :class:`ptrag.nn.selector.TripletSelector`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ptrag.errors import PtragError

_NORM_EPS = 1e-12


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension (a zero vector stays zero).

    Parameters
    ----------
    x
        ``[..., D]`` vectors.

    Returns
    -------
    torch.Tensor
        Unit vectors (or zeros), same shape.
    """
    return F.normalize(x, p=2.0, dim=-1, eps=_NORM_EPS)


@torch.no_grad()
def retrieve(
    query_unit: torch.Tensor, db_unit: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine top-K retrieval with the query's own row excluded (vectorised, no gradient).

    Exclusion is **by index only**: ``exclude[b]`` is the row of query ``b`` in the database
    (``-1`` when the query is not in it, e.g. an unseen perturbation at prediction time). A
    *different* database row whose vector happens to equal the query's (a duplicate embedding
    under another name) is not excluded and is retrieved at cosine 1; deduplicating the
    database is the caller's business.

    Parameters
    ----------
    query_unit
        ``[B, D]`` L2-normalised query vectors (one per set).
    db_unit
        ``[N, D]`` L2-normalised database vectors.
    k
        Number of candidates ``K``; at most ``N - 1`` when some query is excluded, ``N`` otherwise.
    exclude
        ``[B]`` long, the database row to mask for each query, or ``-1`` for none. ``None``
        excludes nothing.

    Returns
    -------
    sim : torch.Tensor
        ``[B, K]`` cosine similarities, sorted descending.
    idx : torch.Tensor
        ``[B, K]`` long database rows of the candidates.
    """
    if query_unit.ndim != 2 or db_unit.ndim != 2 or query_unit.shape[1] != db_unit.shape[1]:
        raise PtragError(
            f"retrieve: query [B, D] and database [N, D] must share D (got {tuple(query_unit.shape)} "
            f"and {tuple(db_unit.shape)})."
        )
    b, n = query_unit.shape[0], db_unit.shape[0]
    scores = query_unit @ db_unit.T  # [B, N]
    n_avail = n
    if exclude is not None:
        if exclude.shape != (b,):
            raise PtragError(f"retrieve: exclude must have shape [{b}] (got {tuple(exclude.shape)}).")
        if bool((exclude >= n).any()) or bool((exclude < -1).any()):
            raise PtragError(f"retrieve: exclude holds rows outside [-1, {n - 1}].")
        has = exclude >= 0
        if bool(has.any()):
            n_avail = n - 1
            rows = torch.arange(b, device=scores.device)[has]
            scores = scores.index_put((rows, exclude[has].to(scores.device)), scores.new_tensor(float("-inf")))
    if not 1 <= k <= n_avail:
        raise PtragError(
            f"topk = {k} candidates asked but only {n_avail} database rows are available "
            f"(database of {n} training perturbations, the query excluded): lower topk."
        )
    sim, idx = torch.topk(scores, k, dim=1, largest=True, sorted=True)
    return sim, idx


def resize_buffers(module: nn.Module, state_dict: dict, prefix: str) -> None:
    """Give ``module``'s own buffers the shapes they have in ``state_dict`` before it is loaded, so
    that a database rebuilt with placeholder sizes takes the checkpoint's (call it first in
    ``_load_from_state_dict``)."""
    for name, buf in module.named_buffers(recurse=False):
        key = prefix + name
        if key in state_dict and state_dict[key].shape != buf.shape:
            setattr(module, name, torch.empty_like(state_dict[key], device=buf.device))


def build_query_index(query_names: Sequence[str], database_names: Sequence[str]) -> torch.Tensor:
    """Map perturbation names to their database rows (``-1`` for names not in the database).

    Parameters
    ----------
    query_names
        One name per set of the batch.
    database_names
        Names of the database rows, in row order (must be unique).

    Returns
    -------
    torch.Tensor
        ``[len(query_names)]`` long tensor of rows, ``-1`` where the name is absent.
    """
    lookup = {name: i for i, name in enumerate(database_names)}
    if len(lookup) != len(database_names):
        raise PtragError("retrieval database names are not unique: each training perturbation must appear once.")
    return torch.tensor([lookup.get(name, -1) for name in query_names], dtype=torch.long)


class PerturbationIndex(nn.Module):
    """Retrieval database of training perturbations, stored as buffers.

    Buffers ``raw`` (``[N, D]``, the vectors as given, read by the perturbation encoder) and
    ``unit`` (their L2-normalised copy, used for cosine search) live in the ``state_dict``; the
    row names travel there too as the module's extra state, so a checkpoint is self-contained.
    Loading a ``state_dict`` whose database has a different number of rows resizes the buffers.

    Parameters
    ----------
    vectors
        ``[N, D]`` vectors of the training perturbations only.
    names
        ``N`` unique names in row order (optional; ``None`` stores no names).
    """

    def __init__(self, vectors: torch.Tensor, names: Sequence[str] | None = None) -> None:
        super().__init__()
        if vectors.ndim != 2 or vectors.shape[0] < 1:
            raise PtragError(f"retrieval database must be a non-empty [N, D] matrix (got {tuple(vectors.shape)}).")
        vectors = vectors.detach().to(torch.float32)
        if not bool(torch.isfinite(vectors).all()):
            raise PtragError("retrieval database holds NaN or infinite values: check the gene-embedding table.")
        self.register_buffer("raw", vectors.clone())
        self.register_buffer("unit", l2_normalise(vectors))
        self.names: list[str] | None = None
        self._set_names(names)

    def _set_names(self, names: Sequence[str] | None) -> None:
        if names is None:
            self.names = None
            return
        names = [str(x) for x in names]
        if len(names) != self.raw.shape[0]:
            raise PtragError(
                f"database_names has {len(names)} names for {self.raw.shape[0]} database rows: give one name per row."
            )
        if len(set(names)) != len(names):
            raise PtragError("database_names are not unique: each training perturbation must appear once.")
        self.names = names

    def __len__(self) -> int:
        return int(self.raw.shape[0])

    def query_index(self, names: Sequence[str]) -> torch.Tensor:
        """Rows of ``names`` in the database (``-1`` where absent), on the buffers' device."""
        if self.names is None:
            raise PtragError("this retrieval database was built without database_names: cannot look names up.")
        return build_query_index(names, self.names).to(self.raw.device)

    def search(
        self, query_vec: torch.Tensor, k: int, exclude: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K cosine candidates of raw query vectors ``[B, D]``; see :func:`retrieve`."""
        # float32 cosine search even under autocast: a bf16 matmul would reorder near ties
        with torch.autocast(device_type=query_vec.device.type, enabled=False):
            q = l2_normalise(query_vec.detach().to(self.unit.dtype))
            return retrieve(q, self.unit, k, exclude)

    def get_extra_state(self) -> dict:
        return {"names": None if self.names is None else list(self.names)}

    def set_extra_state(self, state: dict) -> None:
        names = state.get("names") if isinstance(state, dict) else None
        self.names = None if names is None else [str(x) for x in names]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        resize_buffers(self, state_dict, prefix)  # a database of another size
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


from ptrag.nn.selector import TripletSelector  # noqa: E402  (Stage 2, re-exported)

__all__ = ["PerturbationIndex", "TripletSelector", "build_query_index", "l2_normalise", "resize_buffers", "retrieve"]
