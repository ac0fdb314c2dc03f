"""What a training step of a run costs: parameters, FLOPs per batch and per cell, step time.

The paper's cost table (parameters, GFLOPs per 64-cell batch, MFLOPs per cell) for trained run
folders, plus the step time measured on this machine: a full training step (forward, energy
loss plus the PT-RAG sparsity term, backward, the run's optimiser step) on random inputs of
the run's shape (batch x S cells x G genes, the run's retrieval database). The runs are timed
interleaved (one step of every run per round), so a drift of a shared machine hits all alike.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
attention; element-wise operations are not counted, as in the usual convention).
``benchmarks/train_step.py`` uses the same helpers on synthetic models of the presets' shapes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "cost_table",
    "count_flops",
    "interleaved_times",
    "matmul_peak",
    "paired_ratio",
    "run_step",
    "sync",
    "time_interleaved",
]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock times cover it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of a square matrix product: the machine's practical peak for dense maths.

    Parameters
    ----------
    device, dtype
        Where and in which precision to measure.
    n
        Matrix size.
    reps
        Products timed (after two warm-up products).

    Returns
    -------
    float
        ``2 n^3 reps / seconds``.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (forward and backward if ``fn`` runs both).

    PT-RAG's scorer runs as torch operations while counting: the counter does not see inside
    the compiled CPU loop that computes it otherwise (:func:`ptrag.nn.selector.torch_scorer`).
    """
    from ptrag.nn.selector import torch_scorer

    with torch_scorer(), FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def interleaved_times(
    fns: list[Callable[[], object]], steps: int, warmup: int, device: torch.device
) -> list[list[float]]:
    """Seconds of every call of each function, timed one call of each per round.

    Parameters
    ----------
    fns
        Functions to time.
    steps
        Timed rounds.
    warmup
        Untimed calls of each function first.
    device
        Synchronised around each call.

    Returns
    -------
    list of list of float
        ``times[i][j]``: function ``i`` in round ``j``.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(steps):
        for i, fn in enumerate(fns):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[i].append(time.perf_counter() - t)
    return times


def time_interleaved(fns: list[Callable[[], object]], steps: int, warmup: int, device: torch.device) -> list[float]:
    """Median seconds per call of each function (:func:`interleaved_times`)."""
    return [statistics.median(t) for t in interleaved_times(fns, steps, warmup, device)]


def paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of ``times[j] / base[j]``: a ratio of two functions timed in the
    same rounds, robust to drifts of a shared machine that hit both calls of a round."""
    return statistics.median(t / b for t, b in zip(times, base, strict=False))


def run_step(run_dir: str | Path, device: str | torch.device = "cpu", seed: int = 0) -> tuple[Callable[[], None], dict]:
    """A training-step function of a trained run, on random inputs of the run's shape.

    Parameters
    ----------
    run_dir
        A ``ptrag train`` run folder.
    device
        Where to run.
    seed
        Seed of the random inputs.

    Returns
    -------
    step : callable
        One forward + loss + backward + optimiser step (changes a copy of the run's weights,
        never the run's files).
    shape : dict
        ``model, parameters, batch_size, cell_set_size, n_genes, topk``.
    """

    from ptrag.nn.generator import count_parameters
    from ptrag.train.config import read_run_config
    from ptrag.train.predict import load_plan

    device = torch.device(device)
    cfg = read_run_config(run_dir)
    plan = load_plan(run_dir, "last").to(device)
    plan.train()
    hp = plan.hparams
    b, s = cfg.batch_size, cfg.cell_set_size
    gen = torch.Generator().manual_seed(seed)
    ctrl = torch.rand(b, s, hp.n_genes, generator=gen).to(device)
    cell_input = torch.rand(b, s, hp.cell_input_dim, generator=gen).to(device)
    target = torch.rand(b, s, hp.n_genes, generator=gen).to(device)
    pert_id = torch.randint(0, len(plan.pert_names), (b,), generator=gen).to(device)
    batch = {"ctrl_expr": ctrl, "cell_input": cell_input, "pert_expr": target, "pert_id": pert_id}
    opt = plan.configure_optimizers()

    def step() -> None:
        loss = plan.objective(batch, plan(batch))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    shape = dict(
        model=cfg.model,
        parameters=count_parameters(plan.model),
        batch_size=b,
        cell_set_size=s,
        n_genes=int(hp.n_genes),
        topk=cfg.topk if plan.rag else None,
    )
    return step, shape


def cost_table(runs: Mapping[str, str | Path], steps: int = 5, warmup: int = 2, device: str = "cpu") -> pd.DataFrame:
    """The cost table of trained runs, measured side by side.

    Parameters
    ----------
    runs
        Name -> run folder.
    steps, warmup
        Timed and untimed training steps per run.
    device
        ``cpu`` or ``cuda``.

    Returns
    -------
    pandas.DataFrame
        One row per run: ``name, model, parameters, batch_size, cell_set_size, n_genes, topk,
        gflop_per_batch, mflop_per_cell, ms_per_step, gflop_per_s, time_vs_first`` (median over
        rounds of the step time over the first run's in the same round).
    """
    dev = torch.device(device)
    built = [(name, *run_step(path, dev)) for name, path in runs.items()]
    rows = []
    for name, step, shape in built:
        flops = count_flops(step)
        rows.append(
            {
                "name": name,
                **shape,
                "gflop_per_batch": flops / 1e9,
                "mflop_per_cell": flops / (shape["batch_size"] * shape["cell_set_size"]) / 1e6,
            }
        )
    times = interleaved_times([b[1] for b in built], steps, warmup, dev)
    for row, t in zip(rows, times, strict=True):
        sec = statistics.median(t)
        row["ms_per_step"] = sec * 1e3
        row["gflop_per_s"] = row["gflop_per_batch"] / sec
        row["time_vs_first"] = paired_ratio(t, times[0])
    return pd.DataFrame(rows)
