"""Training and prediction end to end on a tiny data set (a few steps; CPU)."""

from __future__ import annotations

import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _data import TINY_TRAIN, make_adata, write_gene_table

from ptrag.cli import main
from ptrag.train.config import resolve_config
from ptrag.train.predict import load_plan, predict

FAST = [*TINY_TRAIN, "--target-cell-type", "CT1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    make_adata(n_perts=8, cells=16, n_genes=30).write_h5ad(d / "d.h5ad")
    write_gene_table(d / "genept.pkl")
    return d


@pytest.fixture(scope="module")
def runs(files):
    out = {}
    for model in ("state", "state_genept", "vanilla_rag", "pt_rag"):
        genes = [] if model == "state" else ["--genes", str(files / "genept.pkl")]
        run = files / f"run_{model}"
        assert main(["train", "--data", str(files / "d.h5ad"), "--out", str(run), "--model", model, *genes, *FAST]) == 0
        out[model] = run
    return out


def test_run_folder_contents(runs):
    for run in runs.values():
        for name in ("config.toml", "split.toml", "genes.txt", "pca.npz", "checkpoints/last.ckpt", "logs/metrics.csv"):
            assert (run / name).is_file(), name
        assert len((run / "genes.txt").read_text().split()) == 20
        metrics = pd.read_csv(run / "logs" / "metrics.csv")
        assert metrics["val/energy"].notna().any()


def test_retrieval_database_holds_training_perturbations_only(runs):
    plan = load_plan(runs["pt_rag"])
    cfg = resolve_config(config_file=runs["pt_rag"] / "config.toml")
    from ptrag.data.splits import read_split_toml

    split = read_split_toml(runs["pt_rag"] / "split.toml")
    held = set(split.fewshot["data.CT1"]["val"]) | set(split.fewshot["data.CT1"]["test"])
    assert cfg.model == "pt_rag"
    # every perturbation also trains in CT0 here, so the database is all 8; none may be missing
    assert sorted(plan.model.database_names) == [f"P{i}" for i in range(8)]
    assert held  # the split really held some out in the target


@pytest.mark.parametrize("model", ["state", "state_genept", "vanilla_rag", "pt_rag"])
def test_predict_is_deterministic_and_well_formed(runs, files, model, tmp_path):
    out = tmp_path / "pred.h5ad"
    assert main(["predict", "--run", str(runs[model]), "--data", str(files / "d.h5ad"), "--out", str(out)]) == 0
    a = ad.read_h5ad(out)
    b = predict(runs[model], files / "d.h5ad").adata
    np.testing.assert_array_equal(a.X, b.X)  # bitwise identical across runs
    assert list(a.var_names) == (runs[model] / "genes.txt").read_text().split()
    assert (a.X >= 0).all()
    pred = a.obs[~a.obs["is_control"]]
    assert set(pred["cell_type"]) == {"CT1"}
    assert (pred.groupby("perturbation", observed=True).size() == 16).all()  # as many cells as observed
    assert a.obs["is_control"].sum() == 40
    if model in ("vanilla_rag", "pt_rag"):
        log = pd.read_csv(out.with_suffix(".retrieval.csv"))
        assert set(log.columns) >= {"cell_type", "query", "candidate", "similarity", "selected_fraction"}
        assert not (log["query"] == log["candidate"]).any()  # a query never retrieves itself
        assert (log.groupby("query").size() == 3).all()
        if model == "vanilla_rag":  # no selection stage: the fraction is undefined, not 0
            assert log["selected_fraction"].isna().all()
        else:
            assert log["selected_fraction"].between(0, 1).all()


def test_unseen_perturbation_from_gene_vector(runs, files, tmp_path):
    rng = np.random.default_rng(1)
    with open(tmp_path / "new.pkl", "wb") as f:
        pickle.dump({"NEWGENE": rng.normal(size=12).tolist()}, f)
    out = tmp_path / "new.h5ad"
    rc = main(
        [
            "predict",
            "--run",
            str(runs["pt_rag"]),
            "--data",
            str(files / "d.h5ad"),
            "--out",
            str(out),
            "--perturbations",
            "NEWGENE",
            "--cell-type",
            "CT0",
            "--genes",
            str(tmp_path / "new.pkl"),
        ]
    )
    assert rc == 0
    a = ad.read_h5ad(out)
    assert (a.obs.loc[~a.obs["is_control"], "perturbation"] == "NEWGENE").sum() == 8
    rc = main(
        [
            "predict",
            "--run",
            str(runs["state"]),
            "--data",
            str(files / "d.h5ad"),
            "--out",
            str(tmp_path / "s.h5ad"),
            "--perturbations",
            "NEWGENE",
            "--cell-type",
            "CT0",
        ]
    )
    assert rc == 2 and not (tmp_path / "s.h5ad").exists()


def test_bad_training_options(files, tmp_path, capsys):
    base = ["train", "--data", str(files / "d.h5ad"), *FAST]
    cases = [
        (["--model", "state", "--genes", str(files / "genept.pkl")], "takes no --genes"),
        (["--model", "pt_rag"], "needs gene embeddings"),
        (["--model", "pt_rag", "--genes", str(files / "genept.pkl"), "--topk", "50"], "--topk 50"),
        (["--model", "pt_rag", "--genes", str(files / "genept.pkl"), "--tau", "0"], "--tau"),
        (["--model", "pt_rag", "--genes", str(files / "genept.pkl"), "--sparsity-weight", "-1"], "--sparsity-weight"),
        (["--model", "nope"], "--model"),
        (["--model", "state", "--cell-set-size", "1"], "--cell-set-size"),
    ]
    for i, (extra, needle) in enumerate(cases):
        out = tmp_path / f"r{i}"
        rc = main([*base, "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert rc == 2, extra
        assert needle in err.replace("\n", " "), (needle, err)
        assert not (out / "checkpoints").exists()


def test_config_file_and_unknown_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('model = "vanilla_rag"\ntopk = 5\n[data]\npert_col = "perturbation"\n')
    cfg = resolve_config({"topk": 7}, p)
    assert (cfg.model, cfg.topk, cfg.column_spec.pert_col) == ("vanilla_rag", 7, "perturbation")
    p.write_text("topkk = 5\n")
    from ptrag.errors import PtragError

    with pytest.raises(PtragError, match="unknown key"):
        resolve_config(config_file=p)
    p.write_text('topk = "five"\n')
    with pytest.raises(PtragError, match="wrong type"):
        resolve_config(config_file=p)
    assert resolve_config(preset="paper").cell_set_size == 64


def test_devel_all_models_train_and_predict_held_out_cell_type(shared_data, tmp_path):
    """Real data: four cell types, few-shot split on A172; a gene table made here (random vectors)."""
    devel = shared_data / "perturbench" / "devel.h5ad"
    from ptrag.data.io import ColumnSpec, read_perturbseq

    perts = sorted(
        read_perturbseq(devel, ColumnSpec(pert_col="perturbation", control="control")).groups()["perturbation"].unique()
    )
    rng = np.random.default_rng(0)
    with open(tmp_path / "g.pkl", "wb") as f:
        pickle.dump({p: rng.normal(size=16).tolist() for p in perts}, f)
    small = [
        "--max-steps",
        "2",
        "--val-every",
        "1",
        "--batch-size",
        "4",
        "--cell-set-size",
        "8",
        "--hidden",
        "16",
        "--n-heads",
        "2",
        "--ffn",
        "32",
        "--n-genes",
        "50",
        "--topk",
        "4",
        "--target-cell-type",
        "A172",
        "--pert-col",
        "perturbation",
        "--control",
        "control",
    ]
    for model in ("state", "state_genept", "vanilla_rag", "pt_rag"):
        genes = [] if model == "state" else ["--genes", str(tmp_path / "g.pkl")]
        run = tmp_path / model
        assert main(["train", "--data", str(devel), "--out", str(run), "--model", model, *genes, *small]) == 0
        out = tmp_path / f"{model}.h5ad"
        assert main(["predict", "--run", str(run), "--data", str(devel), "--out", str(out)]) == 0
        a = ad.read_h5ad(out)
        pred = a.obs[~a.obs["is_control"]]
        assert set(pred["cell_type"]) == {"A172"} and pred["perturbation"].nunique() >= 5


def test_control_baseline_predicts_the_matched_controls(runs, files, tmp_path):
    out = tmp_path / "control.h5ad"
    assert (
        main(
            [
                "predict",
                "--run",
                str(runs["pt_rag"]),
                "--data",
                str(files / "d.h5ad"),
                "--out",
                str(out),
                "--control-baseline",
            ]
        )
        == 0
    )
    base = ad.read_h5ad(out)
    model = predict(runs["pt_rag"], files / "d.h5ad").adata
    assert base.uns["ptrag"]["model"] == "control"
    assert not out.with_suffix(".retrieval.csv").exists()
    pd.testing.assert_frame_equal(base.obs, model.obs)  # same groups, same cells, same order
    # every "predicted" cell is an observed control cell of its cell type, genes in the run's order
    real = ad.read_h5ad(files / "d.h5ad")
    genes = (runs["pt_rag"] / "genes.txt").read_text().split()
    ctrl = real[(real.obs["gene"] == "non-targeting") & (real.obs["cell_type"] == "CT1"), genes].X
    ctrl = np.asarray(ctrl.todense() if hasattr(ctrl, "todense") else ctrl, dtype=np.float32)
    pred = base.X[~base.obs["is_control"].to_numpy()]
    dist = ((pred[:, None, :] - ctrl[None, :, :]) ** 2).sum(-1).min(1)
    assert np.allclose(dist, 0.0, atol=1e-10)


@pytest.mark.parametrize("optimizer", ["adamw", "adam"])
def test_weight_decay_on_a_row_absent_from_the_batch(optimizer):
    """A one-hot row with no data gradient: AdamW shrinks it by lr*wd*w per step (decoupled);
    Adam rescales the L2 term and moves it by about lr per step whatever its size -- the
    reason adamw is the default (docs/training.md)."""
    import torch

    from ptrag.train.plan import PerturbationPlan

    lr, wd = 1e-3, 5e-4
    plan = PerturbationPlan(
        dict(hidden=8, n_layers=1, n_heads=2, ffn=16),
        n_genes=5,
        cell_input_dim=5,
        pert_names=["A", "B"],
        pert_dim=2,
        database_names=["A", "B"],
        genes=list("abcde"),
        lr=lr,
        weight_decay=wd,
        optimizer=optimizer,
    )
    opt = plan.configure_optimizers()
    assert type(opt) is {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[optimizer]
    assert opt.param_groups[0]["weight_decay"] == wd and opt.param_groups[0]["lr"] == lr
    w = plan.model.pert_encoder.net[0].weight  # [hidden, 2]: column 1 is perturbation B's row
    before = w.detach().clone()
    for p in plan.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    step = (w.detach() - before)[:, 1]
    if optimizer == "adamw":
        torch.testing.assert_close(step, -lr * wd * before[:, 1])
    else:  # Adam's first step is -lr * g / (|g| + eps) with g = wd * w: about lr, not lr*wd*w
        torch.testing.assert_close(step, -lr * torch.sign(before[:, 1]), rtol=1e-3, atol=0)


def test_count_flops_of_a_linear_layer_is_2_b_in_out():
    import torch

    from ptrag.train.cost import count_flops

    layer = torch.nn.Linear(10, 20)
    x = torch.randn(4, 10)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 10 * 20
    # forward + backward of the weight and the input: three products of the same size
    xg = x.clone().requires_grad_(True)
    assert count_flops(lambda: layer(xg).sum().backward()) == 3 * 2 * 4 * 10 * 20
