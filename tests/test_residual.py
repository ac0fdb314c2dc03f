"""--residual-base context_mean: the network's change is added to the cell type's mean training change."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ptrag.cli import main
from ptrag.data.io import ColumnSpec, read_perturbseq
from ptrag.data.splits import read_split_toml, resolve_split
from ptrag.train.predict import load_plan, predict

CTRL = "non-targeting"
G = 40
SHIFT_GENES = slice(0, 12)


def _shared_shift_data(seed: int = 0) -> tuple[ad.AnnData, np.ndarray]:
    """Two cell types; every perturbation of CT1 moves genes 0-11 by one large shared shift
    (plus a small effect of its own); CT0's perturbations only have their own small effects."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1.0, 2.0, size=(2, G))
    shared = np.zeros(G)
    shared[SHIFT_GENES] = rng.choice([-0.8, 0.8], size=12) * rng.uniform(0.7, 1.3, size=12)
    blocks, obs = [], []
    for c in range(2):
        for p in [CTRL] + [f"P{i}" for i in range(10)]:
            mu = base[c].copy()
            if p != CTRL:
                own = np.zeros(G)
                own[rng.choice(np.arange(12, G), 3, replace=False)] = 0.3
                mu = mu + own + (shared if c == 1 else 0.0)
            n = 60 if p == CTRL else 24
            blocks.append(np.maximum(mu + rng.normal(0, 0.25, size=(n, G)), 0))
            obs += [(p, f"CT{c}")] * n
    o = pd.DataFrame(obs, columns=["gene", "cell_type"], index=[f"c{i}" for i in range(len(obs))])
    a = ad.AnnData(
        sp.csr_matrix(np.concatenate(blocks).astype(np.float32)),
        obs=o,
        var=pd.DataFrame(index=[f"G{i}" for i in range(G)]),
    )
    return a, shared


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("residual")
    a, shared = _shared_shift_data()
    a.write_h5ad(d / "d.h5ad")
    net = "--batch-size 8 --cell-set-size 16 --hidden 32 --n-heads 2 --ffn 64 --fewshot 0.3 --seed 0".split()  # noqa: SIM905
    args = ["--data", str(d / "d.h5ad"), "--model", "state", "--max-steps", "60", "--val-every", "30", *net]
    args += ["--n-genes", str(G), "--target-cell-type", "CT1"]
    runs = {}
    for base in ("none", "context_mean"):
        runs[base] = d / base
        assert main(["train", *args, "--out", str(runs[base]), "--residual-base", base]) == 0
    runs["auto"] = d / "auto"  # CT1's groups share their response, CT0 does not transfer it
    assert main(["train", *args, "--out", str(runs["auto"]), "--residual-base", "auto", "--calibration", "auto"]) == 0
    return {"dir": d, "adata": a, "shared": shared, "runs": runs}


def _mean_changes(pred: ad.AnnData, data: ad.AnnData) -> np.ndarray:
    """Per test group of CT1: mean predicted cell minus the mean of CT1's observed controls."""
    ctrl = np.asarray(data[(data.obs.gene == CTRL).to_numpy() & (data.obs.cell_type == "CT1").to_numpy()].X.todense())
    x = np.asarray(pred.X.todense() if sp.issparse(pred.X) else pred.X)
    obs = pred.obs
    groups = obs.loc[~obs.is_control.astype(bool), "perturbation"].unique()
    return np.stack(
        [x[((obs.perturbation == p) & ~obs.is_control.astype(bool)).to_numpy()].mean(0) - ctrl.mean(0) for p in groups]
    )


def test_base_shift_is_the_mean_change_of_the_training_groups(world):
    a, run = world["adata"], world["runs"]["context_mean"]
    plan = load_plan(run)
    data = read_perturbseq(world["dir"] / "d.h5ad", ColumnSpec(pert_col="gene"))
    train = resolve_split(read_split_toml(run / "split.toml"), data.groups()).groups("train")
    X = np.asarray(a.X.todense(), dtype=np.float64)
    genes = (run / "genes.txt").read_text().split()
    cols = [int(g[1:]) for g in genes]
    for ct in ("CT0", "CT1"):
        ctrl = X[((a.obs.gene == CTRL) & (a.obs.cell_type == ct)).to_numpy()][:, cols].mean(0)
        perts = train.loc[train["cell_type"] == ct, "perturbation"]
        deltas = [X[((a.obs.gene == p) & (a.obs.cell_type == ct)).to_numpy()][:, cols].mean(0) - ctrl for p in perts]
        np.testing.assert_allclose(plan.base_shift[plan.cell_type_id(ct)].numpy(), np.mean(deltas, 0), atol=1e-5)
    assert plan.cell_type_id("nowhere") == -1 and float(plan.base_shift[-1].abs().sum()) == 0.0


def test_predicted_change_follows_the_shared_shift(world):
    a, shared = world["adata"], world["shared"]
    genes = (world["runs"]["context_mean"] / "genes.txt").read_text().split()
    target = shared[[int(g[1:]) for g in genes]]
    corr = {}
    for base, run in world["runs"].items():
        pred = predict(run, world["dir"] / "d.h5ad", "test").adata
        mean_change = _mean_changes(pred, a).mean(0)
        corr[base] = np.corrcoef(mean_change, target)[0, 1]
    print("correlation of the mean predicted change with the shared shift:", corr)
    assert corr["context_mean"] >= 0.9 and corr["auto"] >= 0.9


def test_auto_chooses_the_context_mean_base_and_calibration_here(world):
    """auto resolves to the remedy on a shared-shift target, recorded in config.toml."""
    import json

    from ptrag.train.config import read_run_config

    cfg = read_run_config(world["runs"]["auto"])
    assert (cfg.residual_base, cfg.calibration) == ("context_mean", "validation")
    summary = json.loads((world["runs"]["auto"] / "train_summary.json").read_text())
    assert summary["residual_base"] == "context_mean" and summary["residual_base_evidence"].endswith("context_mean")
    assert summary["calibration"], "auto calibrates with the context-mean base"
    shift = load_plan(world["runs"]["auto"]).base_shift
    np.testing.assert_array_equal(shift.numpy(), load_plan(world["runs"]["context_mean"]).base_shift.numpy())
