"""Cell sets: S perturbed cells of one (cell type, perturbation) with matched control cells.

Each training example of the paper is a set of S = 64 control cells of a cell type paired
with S perturbed cells of the same cell type and perturbation. :class:`SetSampler` plans
those sets: in training, every group is reshuffled each epoch and cut into ceil(n / S) sets,
the last one filled by sampling the group's cells with replacement; at evaluation sets keep
their real size. Each perturbed cell is paired with a control cell of the same cell type
(and of the same batch when ``match_batch`` is on and that batch has controls). Everything is
a function of ``(seed, epoch)``, so the same seed gives the same sets.

Distributed training (``num_replicas > 1``) shards each epoch's plan explicitly: the plan is
the same on every rank; it is padded to a multiple of ``num_replicas`` by repeating its first
sets and rank ``r`` takes every ``num_replicas``-th set from position ``r`` (as torch's
``DistributedSampler`` does), so the ranks' batch ``t`` together hold the single process's
batch ``t`` of a global batch ``num_replicas`` times as large.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ptrag.data.io import PerturbData
from ptrag.errors import PtragError, check_choice

log = logging.getLogger("ptrag")


@dataclass(frozen=True)
class CellSet:
    """One planned set.

    Attributes
    ----------
    group
        Row of the sampler's group table.
    cell_type, perturbation
        The group.
    pert_rows
        Rows of the observed perturbed cells (repeats only where the set was filled).
    ctrl_rows
        Rows of the matched control cells, one per perturbed cell.
    """

    group: int
    cell_type: str
    perturbation: str
    pert_rows: np.ndarray
    ctrl_rows: np.ndarray


class SetSampler(torch.utils.data.Sampler):
    """Plan cell sets for a split's groups; iterating yields :class:`CellSet` objects.

    Parameters
    ----------
    obs
        Normalised cell metadata (:attr:`PerturbData.obs`).
    groups
        Groups to draw sets from (columns ``cell_type``, ``perturbation``).
    set_size
        S, cells per set (at least 2).
    mode
        ``train``: sets filled to S, reshuffled every epoch; ``eval``: real sizes, fixed order.
    seed
        Seed of every random choice.
    match_batch
        Pair perturbed cells with controls of the same batch when possible.
    shuffle
        Shuffle the order of the sets (training).
    freeze_epoch
        Ignore :meth:`set_epoch`: always yield the same sets (a fixed validation set).
    num_replicas
        Distributed processes sharing each epoch (:meth:`shard`); 1: no sharding.
    rank
        This process's shard; ``None``: ``torch.distributed``'s rank when iterating (0 when
        no process group is initialised), so a sampler built before the processes are started
        or spawned still yields its own rank's shard.
    """

    def __init__(
        self,
        obs: pd.DataFrame,
        groups: pd.DataFrame,
        set_size: int = 64,
        mode: Literal["train", "eval"] = "train",
        seed: int = 0,
        match_batch: bool = False,
        shuffle: bool | None = None,
        freeze_epoch: bool = False,
        num_replicas: int = 1,
        rank: int | None = None,
    ) -> None:
        check_choice("mode", mode, ("train", "eval"))
        if num_replicas < 1 or (rank is not None and not 0 <= rank < num_replicas):
            raise PtragError(f"invalid shard: rank {rank} of {num_replicas} processes.")
        self.num_replicas = int(num_replicas)
        self.rank = rank
        if set_size < 2:
            raise PtragError(f"--cell-set-size must be at least 2 (got {set_size}).")
        self.set_size = int(set_size)
        self.mode = mode
        self.seed = int(seed)
        self.match_batch = bool(match_batch) and obs["batch"].notna().all() and obs["batch"].iloc[0] is not None
        self.shuffle = (mode == "train") if shuffle is None else shuffle
        self.epoch = 0
        self.freeze_epoch = freeze_epoch
        self._skip = 0
        self._resuming = False  # resume() called and no set_epoch() since
        self._epoch_offset = 0  # the sets' epoch minus Lightning's (resumed runs)
        self.groups = groups[["cell_type", "perturbation"]].reset_index(drop=True)
        keep = obs["keep"].to_numpy() if "keep" in obs else np.ones(len(obs), bool)
        ct = obs["cell_type"].to_numpy()
        batch = obs["batch"].to_numpy() if self.match_batch else None
        self._rows: list[np.ndarray] = _group_rows(obs, self.groups, keep, ct)
        self._ctrl: dict[str, np.ndarray] = {}
        self._ctrl_batch: dict[tuple[str, str], np.ndarray] = {}
        self._control_pools(obs["is_control"].to_numpy() & keep, ct, batch)
        self._batch = batch
        self._warn_small_groups()

    def _control_pools(self, ctrl: np.ndarray, ct: np.ndarray, batch: np.ndarray | None) -> None:
        """Fill the control rows of each cell type (and of each of its batches with ``match_batch``)."""
        for c in self.groups["cell_type"].unique():
            rows = np.flatnonzero(ctrl & (ct == c))
            if len(rows) == 0:
                raise PtragError(
                    f"cell type {c!r} has no control cells; every cell type needs controls "
                    "(check --control and --cell-type-col)."
                )
            self._ctrl[c] = rows
            if self.match_batch:
                for b in np.unique(batch[rows]):
                    self._ctrl_batch[(c, b)] = rows[batch[rows] == b]

    def _warn_small_groups(self) -> None:
        """Warn (training only) about groups smaller than the set size, whose sets repeat cells."""
        small = [
            (c, p, len(r))
            for (c, p), r in zip(self.groups.itertuples(index=False), self._rows, strict=True)
            if len(r) < self.set_size
        ]
        if small and self.mode == "train":
            c, p, n = min(small, key=lambda t: t[2])
            log.warning(
                "%d of %d training groups have fewer than --cell-set-size %d cells (smallest: %s in %s, %d cells); "
                "their sets are filled by drawing cells again. Lower --cell-set-size to avoid repeats.",
                len(small),
                len(self._rows),
                self.set_size,
                p,
                c,
                n,
            )

    # -------------------------------------------------------------- planning
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose sets the next iteration yields (Lightning calls this).

        The first call after :meth:`resume` keeps the resumed epoch and fixes the offset of
        Lightning's count to it: a run that stopped at ``max_steps`` counts its unfinished last
        epoch as done, so once resumed its count runs one ahead of the sets'."""
        if self.freeze_epoch:
            return
        if self._resuming:
            self._epoch_offset, self._resuming = self.epoch - int(epoch), False
            return
        self.epoch = int(epoch) + self._epoch_offset

    def resume(self, epoch: int, sets_done: int) -> None:
        """Continue an interrupted epoch: the next iteration yields ``epoch``'s sets after the
        first ``sets_done`` (once; later iterations are whole epochs again).

        Parameters
        ----------
        epoch
            The interrupted epoch.
        sets_done
            Sets of that epoch already consumed (of this rank's shard when sharded).
        """
        self.epoch = int(epoch)
        self._skip = int(sets_done)
        self._resuming = True

    def _controls(self, rng: np.random.Generator, cell_type: str, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        if self.match_batch:
            b = self._batch[rows]
            for value in np.unique(b):
                m = b == value
                pool = self._ctrl_batch.get((cell_type, value), self._ctrl[cell_type])
                out[m] = rng.choice(pool, int(m.sum()), replace=len(pool) < m.sum())
            return out
        pool = self._ctrl[cell_type]
        return rng.choice(pool, len(rows), replace=len(pool) < len(rows))

    def plan(self, epoch: int | None = None) -> list[CellSet]:
        """The sets of one epoch (training) or the fixed evaluation sets."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch if self.mode == "train" else 0])
        S = self.set_size
        sets: list[CellSet] = []
        for g, ((c, p), rows) in enumerate(zip(self.groups.itertuples(index=False), self._rows, strict=True)):
            rows = rng.permutation(rows) if self.mode == "train" else rows
            for start in range(0, len(rows), S):
                chunk = rows[start : start + S]
                if self.mode == "train" and len(chunk) < S:
                    chunk = np.concatenate([chunk, rng.choice(rows, S - len(chunk), replace=True)])
                sets.append(CellSet(g, c, p, chunk, self._controls(rng, c, chunk)))
        if self.shuffle:
            order = rng.permutation(len(sets))
            sets = [sets[i] for i in order]
        return sets

    def _rank(self) -> int:
        """This process's shard: :attr:`rank`, else ``torch.distributed``'s rank (checked
        against :attr:`num_replicas`), else 0."""
        if self.rank is not None:
            return self.rank
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return 0
        if dist.get_world_size() != self.num_replicas:
            raise PtragError(
                f"the set sampler was built for {self.num_replicas} processes but {dist.get_world_size()} run."
            )
        return dist.get_rank()

    def shard(self, sets: list[CellSet], rank: int | None = None) -> list[CellSet]:
        """Rank ``rank``'s (default: this process's) share of an epoch's ``sets``: the sets
        padded to a multiple of :attr:`num_replicas` by repeating the first ones, then every
        ``num_replicas``-th from position ``rank``. Every rank gets ``len(self)`` sets; the
        shards are disjoint and together hold every set (the padding aside)."""
        w = self.num_replicas
        if w == 1 or not sets:
            return sets
        r = self._rank() if rank is None else rank
        n = len(sets) + (-len(sets) % w)
        return [sets[i % len(sets)] for i in range(r, n, w)]

    def __iter__(self) -> Iterator[CellSet]:
        sets = self.shard(self.plan())
        skip, self._skip, self._resuming = self._skip, 0, False
        return iter(sets[skip:])

    def n_sets(self) -> int:
        """Sets of one epoch (of every rank together, before padding)."""
        return int(sum(-(-len(r) // self.set_size) for r in self._rows))

    def __len__(self) -> int:
        """Sets this rank yields per epoch (:meth:`n_sets` when not sharded)."""
        return -(-self.n_sets() // self.num_replicas)


def _group_rows(obs: pd.DataFrame, groups: pd.DataFrame, keep: np.ndarray, ct: np.ndarray) -> list[np.ndarray]:
    """The rows of the kept perturbed cells of each group, in the order of ``groups``."""
    pert = obs["perturbation"].to_numpy()
    by_group = pd.Series(np.arange(len(obs)))[~obs["is_control"].to_numpy() & keep].groupby(
        [ct[~obs["is_control"].to_numpy() & keep], pert[~obs["is_control"].to_numpy() & keep]]
    )
    index = {k: v.to_numpy() for k, v in by_group}
    out: list[np.ndarray] = []
    for c, p in groups.itertuples(index=False):
        rows = index.get((c, p))
        if rows is None or len(rows) == 0:
            raise PtragError(f"no cells for perturbation {p!r} in cell type {c!r}.")
        out.append(rows)
    return out


class SetDataset(torch.utils.data.Dataset):
    """Read the expression of planned sets; indexed by :class:`CellSet` (from :class:`SetSampler`).

    Parameters
    ----------
    data
        The data set.
    genes
        Genes to read, in order.
    pert_index
        Perturbation name -> row of the model's perturbation table.
    cell_features
        Optional function ``(rows, expression) -> features`` giving what the cell encoder
        reads (precomputed embeddings, PCA scores); the expression itself when ``None``.
    cell_type_index
        Cell type name -> row of the model's per-cell-type table (``ct_id``; -1 when absent).
    """

    def __init__(
        self,
        data: PerturbData,
        genes: list[str],
        pert_index: dict[str, int],
        cell_features: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        cell_type_index: dict[str, int] | None = None,
    ) -> None:
        self.data = data
        self.genes = list(genes)
        self.gene_idx = data.gene_index(self.genes)
        self.pert_index = pert_index
        self.cell_features = cell_features
        self.cell_type_index = cell_type_index or {}

    def __len__(self) -> int:  # map-style dataset indexed by CellSet, length unused
        return 0

    def __getitems__(self, sets: list[CellSet]) -> list[dict]:
        """All sets of a batch with one read (the DataLoader calls this when it exists): one
        row lookup, one sparse-to-dense conversion and one normalisation for the whole batch."""
        sizes = [len(cs.pert_rows) + len(cs.ctrl_rows) for cs in sets]
        rows = np.concatenate([np.concatenate([cs.pert_rows, cs.ctrl_rows]) for cs in sets])
        x = self.data.expression(rows, self.gene_idx)
        out, start = [], 0
        for cs, n in zip(sets, sizes, strict=True):
            out.append(self._item(cs, x[start : start + n]))
            start += n
        return out

    def __getitem__(self, cs: CellSet) -> dict:
        return self._item(cs, self.data.expression(np.concatenate([cs.pert_rows, cs.ctrl_rows]), self.gene_idx))

    def _item(self, cs: CellSet, x: np.ndarray) -> dict:
        n = len(cs.pert_rows)
        pert_x, ctrl_x = x[:n], x[n:]
        feats = ctrl_x if self.cell_features is None else self.cell_features(cs.ctrl_rows, ctrl_x)
        return {
            "ctrl_expr": torch.from_numpy(ctrl_x),
            "pert_expr": torch.from_numpy(pert_x),
            "cell_input": torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
            "pert_id": torch.tensor(self.pert_index[cs.perturbation], dtype=torch.long),
            "group": torch.tensor(cs.group, dtype=torch.long),
            "ct_id": torch.tensor(self.cell_type_index.get(cs.cell_type, -1), dtype=torch.long),
        }
