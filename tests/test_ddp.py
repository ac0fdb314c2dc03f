"""Distributed training (DDP, 2 CPU ranks, gloo): sharded sets, the global batch, no unused
parameters, rank-0-only writes and resuming (docs/training.md, "Distributed training").

The 2-rank runs go through the command line in a subprocess, as a user runs them: Lightning's
``ddp`` strategy starts rank 1 by running the same command again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _data import TINY_MODEL, make_adata, write_gene_table

from ptrag.cli import main
from ptrag.data.io import read_perturbseq
from ptrag.data.sets import SetSampler
from ptrag.train.config import MODELS, resolve_config
from ptrag.train.distributed import ddp_strategy, probe_batch, rank_batch_size
from ptrag.train.prepare import build_plan, make_loader, prepare_run

MODEL_ARGS = [*TINY_MODEL, "--target-cell-type", "CT1", "--seed", "2", "--val-every", "2"]
DDP = ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]

#: ``ptrag`` with every atomic write (run files, checkpoints: all go through os.replace) logged
#: with the rank that made it; Lightning re-runs this script for rank 1.
LAUNCH = textwrap.dedent(
    """
    import os, sys
    _replace = os.replace

    def replace(src, dst, *args, **kwargs):
        with open(os.environ["PTRAG_WRITE_LOG"], "a") as f:
            f.write(f"{os.environ.get('LOCAL_RANK', '0')}\\t{os.path.basename(dst)}\\n")
        return _replace(src, dst, *args, **kwargs)

    os.replace = replace
    from ptrag.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    make_adata(n_perts=8, cells=16, n_genes=30).write_h5ad(d / "d.h5ad")
    write_gene_table(d / "g.pkl")
    (d / "launch.py").write_text(LAUNCH)
    return d


def _cli(files, out, *args, log=None, module=False):
    """Run ``ptrag train`` in a subprocess (2 ranks with DDP); the completed process."""
    cmd = [sys.executable, *(["-m", "ptrag"] if module else [str(files / "launch.py")])]
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")}
    env["PTRAG_WRITE_LOG"] = str(log or files / "writes.log")
    args = ["train", "--data", str(files / "d.h5ad"), "--out", str(out), *args]
    proc = subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _weights(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt, {k: v for k, v in ckpt["state_dict"].items() if torch.is_tensor(v) and v.is_floating_point()}


def test_rank_shards_partition_each_epoch(tmp_path):
    make_adata(n_perts=5, cells=20).write_h5ad(tmp_path / "d.h5ad")  # 2 x 5 groups of 3 sets: 30 sets
    data = read_perturbseq(tmp_path / "d.h5ad")
    groups = data.groups()
    key = lambda cs: (cs.group, tuple(cs.pert_rows), tuple(cs.ctrl_rows))  # noqa: E731
    for n_groups, pad in ((10, 0), (9, 1)):  # 30 sets, and 27: one set repeated to even the shards
        s = SetSampler(data.obs, groups.iloc[:n_groups], set_size=8, seed=4, num_replicas=2)
        again = SetSampler(data.obs, groups.iloc[:n_groups], set_size=8, seed=4, num_replicas=2)
        for epoch in (0, 1):
            plan = s.plan(epoch)
            shards = [s.shard(plan, r) for r in (0, 1)]
            assert [len(x) for x in shards] == [len(s)] * 2 == [(len(plan) + pad) // 2] * 2
            positions = [set(range(r, len(plan) + pad, 2)) for r in (0, 1)]
            assert positions[0].isdisjoint(positions[1])  # disjoint by position in the epoch
            seen = [key(cs) for shard in shards for cs in shard]
            assert sorted(set(seen)) == sorted(key(cs) for cs in plan)  # together: the epoch's sets
            assert len(seen) - len(set(seen)) == pad  # nothing repeated but the padding
            assert [key(c) for c in again.shard(again.plan(epoch), 1)] == [key(c) for c in shards[1]]
            # a global batch of 4 = the two ranks' batches of 2
            for t in range(len(plan) // 4):
                both = [key(cs) for r in (0, 1) for cs in shards[r][2 * t : 2 * t + 2]]
                assert sorted(both) == sorted(key(cs) for cs in plan[4 * t : 4 * t + 4])
        s.set_epoch(1)
        s.rank = 1
        assert [key(c) for c in s] == [key(c) for c in s.shard(s.plan(1), 1)]
    assert [key(c) for c in s.shard(s.plan(0), 0)] != [key(c) for c in s.shard(s.plan(1), 0)]
    with pytest.raises(Exception, match="multiple"):
        rank_batch_size(5, 2)


def _prepared(files, model):
    cfg = resolve_config(
        dict(model=model, batch_size=4, cell_set_size=8, hidden=16, n_heads=2, ffn=32, n_genes=20, topk=3)
        | dict(target_cell_type="CT1", seed=2)
    )
    prep = prepare_run(cfg, files / "d.h5ad", None, [] if model == "state" else [files / "g.pkl"])
    return cfg, prep, build_plan(cfg, prep)


@pytest.mark.parametrize("model", MODELS)
def test_no_model_leaves_a_parameter_unused(files, model):
    cfg, prep, plan = _prepared(files, model)
    loader = make_loader(cfg, prep, "train")
    assert plan.unused_parameters(probe_batch(loader)) == []
    assert all(p.grad is None for p in plan.parameters())  # the probe leaves no gradient behind
    assert ddp_strategy("ddp", plan, loader) == "ddp"  # so plain DDP, no find_unused_parameters


def test_two_rank_gradient_is_the_global_batch_gradient(files):
    cfg, prep, plan = _prepared(files, "state")
    plan = plan.double()  # float64: the two sides agree to rounding far below any real difference
    loader = make_loader(cfg, prep, "train")
    sampler = loader.sampler
    sampler.num_replicas = 2
    plan_sets = sampler.plan(0)[:4]

    def grads(sets):
        plan.zero_grad(set_to_none=True)
        batch = torch.utils.data.default_collate(loader.dataset.__getitems__(sets))
        batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
        plan.objective(batch, plan(batch))["loss"].backward()
        return [p.grad.clone() for p in plan.parameters() if p.grad is not None]

    whole = grads(plan_sets)
    ranks = [grads(sampler.shard(plan_sets, r)) for r in (0, 1)]  # DDP averages the ranks' gradients
    for g, a, b in zip(whole, *ranks, strict=True):
        torch.testing.assert_close((a + b) / 2, g, rtol=1e-9, atol=1e-12)


def test_spawned_workers_are_refused(files, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["--model", "state", "--max-steps", "2", *MODEL_ARGS, *DDP[:-1], "ddp_spawn"]
    assert main(["train", "--data", str(files / "d.h5ad"), "--out", str(out), *args]) == 2
    assert "use --strategy ddp" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def _writes(log):
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    return [(rank, name) for rank, name in lines]


@pytest.mark.timeout(300)
def test_two_ranks_match_one_rank_resume_and_write_once(files, tmp_path):
    args = ["--model", "state", *MODEL_ARGS]
    one = tmp_path / "one"
    assert main(["train", "--data", str(files / "d.h5ad"), "--out", str(one), "--max-steps", "6", *args]) == 0

    two, log = tmp_path / "two", tmp_path / "writes.log"
    first = _cli(files, two, *DDP, "--max-steps", "3", *args, log=log)  # stops mid-epoch (5 steps an epoch)
    writes = _writes(log)
    assert {rank for rank, _ in writes} == {"0"}  # rank 1 writes nothing
    for name in ("config.toml", "split.toml", "genes.txt", "pca.npz", "train_summary.json"):
        assert writes.count(("0", name)) == 1, name
    assert first.stdout.count("Run folder:") == 1  # one summary line

    log.unlink()
    resumed = _cli(files, two, *DDP, "--max-steps", "6", "--resume", *args, log=log)
    assert {rank for rank, _ in _writes(log)} == {"0"}
    assert resumed.stdout.count("Run folder:") == 1
    assert json.loads((two / "train_summary.json").read_text())["steps"] == 6

    (c1, w1), (c2, w2) = _weights(one), _weights(two)
    assert c1["global_step"] == c2["global_step"] == 6
    # the same global batch of 4 (2 a rank): the same training, up to float rounding (which
    # Adam's normalisation enlarges where a gradient is nearly 0)
    diff = torch.cat([(w1[k] - w2[k]).flatten() for k in w1])
    norm = torch.cat([w1[k].flatten() for k in w1]).norm()
    assert diff.abs().max() < 2e-3 and diff.norm() / norm < 1e-4
    s1, s2 = (json.loads((r / "train_summary.json").read_text()) for r in (one, two))
    np.testing.assert_allclose(s2["val_energy_last"], s1["val_energy_last"], rtol=1e-4)


@pytest.mark.timeout(300)
def test_pt_rag_response_trains_on_two_ranks(files, tmp_path):
    run = tmp_path / "r"
    args = ["--model", "pt_rag_response", "--genes", str(files / "g.pkl"), *MODEL_ARGS]
    proc = _cli(files, run, *DDP, "--max-steps", "2", *args, module=True)  # python -m ptrag
    assert "not used in producing the loss" not in proc.stderr
    assert proc.stdout.count("Run folder:") == 1
    ckpt, _ = _weights(run)
    assert ckpt["global_step"] == 2
    ranks = ckpt["ptrag_rng"]["ranks"]  # each rank its own Gumbel noise, saved for --resume
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
