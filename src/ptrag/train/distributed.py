"""Distributed (DDP) training: the strategy, the global batch and the sharded training sets.

* ``--batch-size`` is the **global** batch: each of the ``W`` processes takes ``batch_size / W``
  sets a step (:func:`rank_batch_size`), so a run's optimisation does not depend on ``W``.
* Each epoch's sets are planned identically on every rank (a function of seed and epoch) and
  sharded explicitly (:meth:`ptrag.data.sets.SetSampler.shard`); Lightning's automatic
  ``DistributedSampler`` is switched off (``use_distributed_sampler=False``). The validation
  sets are not sharded: every rank evaluates all of them, so the validation energy (and the
  best checkpoint) is that of a single process.
* The models leave no trainable parameter unused (:class:`ptrag.train.plan.PerturbationPlan`
  freezes Llama's unused token embedding); :func:`ddp_strategy` still checks one step and,
  should some configuration leave parameters without gradient, turns on DDP's
  ``find_unused_parameters`` for it.
* Only rank 0 writes the run folder and prints the summary (:func:`ptrag.train.fit.train`).
* ``--strategy ddp`` (every rank runs the command; Lightning starts the others) is the way to
  train on several processes; the strategies that train in spawned or forked workers are
  refused (:func:`check_launcher`).
"""

from __future__ import annotations

import logging
import os

import torch

from ptrag.errors import PtragError

log = logging.getLogger("ptrag")


def rank_batch_size(batch_size: int, world_size: int) -> int:
    """Sets per step of each of ``world_size`` processes for the global ``batch_size``."""
    if batch_size % world_size:
        raise PtragError(
            f"--batch-size {batch_size} is the global batch (all processes together) and must be a multiple of "
            f"the {world_size} processes: use --batch-size {max(world_size, batch_size - batch_size % world_size)}."
        )
    return batch_size // world_size


def probe_batch(loader: torch.utils.data.DataLoader) -> dict:
    """A batch of one training set of ``loader`` (its epoch 0's first), read without iterating it."""
    sets = loader.sampler.plan(0)[:1]
    return torch.utils.data.default_collate(loader.dataset.__getitems__(sets))


def ddp_strategy(strategy: str, plan, loader: torch.utils.data.DataLoader):
    """The Lightning strategy of a run: ``strategy``, or for ``ddp`` when the model leaves
    trainable parameters without gradient in a training step, DDP with
    ``find_unused_parameters=True`` (plain DDP would stop at the first step)."""
    if strategy != "ddp":
        return strategy
    unused = plan.unused_parameters(probe_batch(loader))
    if not unused:
        return strategy
    from lightning.pytorch.strategies import DDPStrategy

    log.info(
        "--strategy ddp: %d parameters get no gradient in training (%s); DDP runs with find_unused_parameters.",
        len(unused),
        ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else ""),
    )
    return DDPStrategy(find_unused_parameters=True)


def check_launcher(trainer, strategy: str) -> None:
    """Refuse the strategies that train in spawned or forked workers (``ddp_spawn``, ``ddp_fork``,
    ``ddp_notebook``): the command's own process would then save a final ``last.ckpt`` without
    the workers' optimiser state (and ``ddp_spawn`` must pickle the whole run). With ``ddp``
    every rank runs the command itself."""
    from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

    if isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
        raise PtragError(
            f"--strategy {strategy} trains in spawned or forked worker processes, which ptrag does not support: "
            "use --strategy ddp (each rank runs the command; rank 0 writes the run folder)."
        )


def is_rank_zero(result=None) -> bool:
    """Whether this process is rank 0 of its run, the one that writes the run folder and prints
    the summary: ``result.is_global_zero`` of a :class:`ptrag.train.fit.TrainResult` when known,
    else no ``RANK`` / ``LOCAL_RANK`` of a launched distributed rank other than 0."""
    known = getattr(result, "is_global_zero", None)
    if known is not None:
        return bool(known)
    return all(os.environ.get(k, "0") in ("", "0") for k in ("RANK", "LOCAL_RANK"))


def shard_loader(cfg, prep, loader: torch.utils.data.DataLoader, num_replicas: int, batch_size: int):
    """``loader``'s sets shared by ``num_replicas`` processes (:meth:`ptrag.data.sets.SetSampler.shard`;
    the rank is ``torch.distributed``'s when iterating), ``batch_size`` sets a batch on each."""
    from ptrag.train.prepare import data_loader

    if num_replicas < 1:
        raise PtragError(f"invalid number of processes {num_replicas}.")
    if num_replicas == 1 and batch_size == loader.batch_size:
        return loader
    loader.sampler.num_replicas = int(num_replicas)
    return data_loader(cfg, prep, loader.dataset, loader.sampler, batch_size)
