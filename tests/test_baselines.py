"""The field's simple baselines (``ptrag predict --baseline``), checked by hand from the h5ad.

Data: three cell types; CT1 is the few-shot target (P0-P3 train, P4 val, P5-P7 test); CT2
holds a validation group too (P3). P7 occurs only in CT1 (it trains in no other cell type:
perturb_mean falls back to context_mean) and P6 is absent from CT2 (its perturb_mean is its
change in CT0 alone).
"""

from __future__ import annotations

import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _data import TINY_TRAIN, make_adata, write_gene_table

from ptrag.cli import main
from ptrag.train.baselines import (
    BASELINES,
    LINEAR_K,
    LINEAR_LAMBDA,
    GroupChanges,
    MeanChanges,
    additive,
    baseline_shifts,
    context_mean,
    group_mean_changes,
    linear_fit,
    linear_shift,
    perturb_mean,
)
from ptrag.train.predict import predict, predict_baselines

CTRL = "non-targeting"
SPLIT = """[datasets]
data = "data"

[training]
data = "train"

[fewshot."data.CT1"]
val = ["P4"]
test = ["P5", "P6", "P7"]

[fewshot."data.CT2"]
val = ["P3"]
test = []
"""
TEST = [("CT1", "P5"), ("CT1", "P6"), ("CT1", "P7")]
HELD = [("CT1", "P4"), ("CT2", "P3"), *TEST]
FAST = [*TINY_TRAIN]


def _dense(x) -> np.ndarray:
    return np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=np.float64)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("baselines")
    a = make_adata(n_cell_types=3, n_perts=8, cells=16, n_genes=30, seed=3)
    drop = ((a.obs["gene"] == "P7") & (a.obs["cell_type"] != "CT1")) | (
        (a.obs["gene"] == "P6") & (a.obs["cell_type"] == "CT2")
    )
    a[~drop.to_numpy()].copy().write_h5ad(d / "d.h5ad")
    (d / "split.toml").write_text(SPLIT)
    write_gene_table(d / "g.pkl")
    run = d / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(d / "d.h5ad"),
                "--out",
                str(run),
                "--model",
                "vanilla_rag",
                "--genes",
                str(d / "g.pkl"),
                "--split",
                str(d / "split.toml"),
                *FAST,
            ]
        )
        == 0
    )
    return d


def _hand(files):
    """Mean changes of every group straight from the h5ad (numpy / pandas), and the training
    groups of the split written above."""
    a = ad.read_h5ad(files / "d.h5ad")
    genes = (files / "run" / "genes.txt").read_text().split()
    x = _dense(a[:, genes].X)
    obs = a.obs.reset_index(drop=True)
    delta = {}
    for (ct, p), g in obs[obs["gene"] != CTRL].groupby(["cell_type", "gene"], observed=True):
        ctrl = x[((obs["gene"] == CTRL) & (obs["cell_type"] == ct)).to_numpy()].mean(0)
        delta[(ct, p)] = x[g.index.to_numpy()].mean(0) - ctrl
    train = [k for k in delta if k not in HELD]
    return delta, train, genes


def _hand_shifts(delta, train):
    """Every baseline's shift for the test groups, from the definitions (docs/metrics.md)."""
    d = {k: delta[k] for k in train}
    ctx = np.mean([v for (c, _), v in d.items() if c == "CT1"], axis=0)
    elsewhere = {
        p: np.mean([v for (c, q), v in d.items() if c != "CT1" and q == p], axis=0)
        for p in {q for c, q in d if c != "CT1"}
    }
    other = np.mean([v for (c, _), v in d.items() if c != "CT1"], axis=0)
    M = np.stack(list(d.values()), axis=1)  # genes x all training groups
    E = np.linalg.svd(M, full_matrices=False)[0][:, : min(LINEAR_K, *M.shape)]
    ct1 = [q for c, q in d if c == "CT1"]
    Y = np.stack([d[("CT1", q)] for q in ct1], axis=1)
    P = np.stack([E.T @ elsewhere[q] if q in elsewhere else np.zeros(E.shape[1]) for q in ct1])
    eye = np.eye(E.shape[1])
    W = (
        np.linalg.inv(E.T @ E + LINEAR_LAMBDA * eye)
        @ E.T
        @ (Y - ctx[:, None])
        @ P
        @ np.linalg.inv(P.T @ P + LINEAR_LAMBDA * eye)
    )
    out = {name: {} for name in BASELINES}
    for _, p in TEST:
        pm = elsewhere.get(p, ctx)
        out["control"][p] = np.zeros_like(ctx)
        out["context_mean"][p] = ctx
        out["perturb_mean"][p] = pm
        out["additive"][p] = ctx + (pm - other) if p in elsewhere else ctx
        out["linear"][p] = ctx + E @ W @ (E.T @ elsewhere[p] if p in elsewhere else np.zeros(E.shape[1]))
    return out


def test_shifts_equal_a_hand_computation_from_the_h5ad(files):
    from ptrag.data.io import ColumnSpec, read_perturbseq

    delta, train, genes = _hand(files)
    hand = _hand_shifts(delta, train)
    # the cases the data was built for: P6 trains in CT0 only, P7 in no other cell type
    assert ("CT0", "P6") in train and ("CT2", "P6") not in delta and ("CT0", "P7") not in delta
    np.testing.assert_allclose(hand["perturb_mean"]["P6"], delta[("CT0", "P6")])
    np.testing.assert_allclose(hand["perturb_mean"]["P5"], (delta[("CT0", "P5")] + delta[("CT2", "P5")]) / 2)
    data = read_perturbseq(files / "d.h5ad", ColumnSpec())
    groups = pd.DataFrame(train, columns=["cell_type", "perturbation"])
    changes = group_mean_changes(data, groups, genes)
    np.testing.assert_allclose(changes.delta, np.stack([delta[k] for k in train]), atol=1e-10)
    for name in BASELINES:
        got = baseline_shifts(name, changes, TEST)
        want = np.stack([hand[name][p] for _, p in TEST])
        np.testing.assert_allclose(got, want, atol=1e-9, err_msg=name)
    assert not np.allclose(hand["linear"]["P5"], hand["context_mean"]["P5"])  # the linear fit does something


def test_group_changes_reads_each_group_and_control_once_and_equals_the_direct_computation(files, monkeypatch):
    import ptrag.train.baselines as baselines
    from ptrag.data.io import ColumnSpec, read_perturbseq

    delta, train, genes = _hand(files)
    data = read_perturbseq(files / "d.h5ad", ColumnSpec())
    groups = pd.DataFrame(train, columns=["cell_type", "perturbation"])
    reads = []
    real = baselines._mean_expression
    monkeypatch.setattr(baselines, "_mean_expression", lambda d, rows, g: reads.append(len(rows)) or real(d, rows, g))
    cache = GroupChanges(data, genes)
    part = cache.of(groups.iloc[::2])  # as the auto base evidence would, a subset first
    n_first = len(reads)
    whole = cache.of(groups.iloc[::-1])  # then all of them, in another order
    n_cell_types = groups["cell_type"].nunique()
    assert n_first == len(groups.iloc[::2]) + groups.iloc[::2]["cell_type"].nunique()
    assert len(reads) == len(groups) + n_cell_types  # every group and every control mean read once
    cache.of(groups)
    assert len(reads) == len(groups) + n_cell_types
    direct = group_mean_changes(data, groups.iloc[::-1].reset_index(drop=True), genes)
    assert np.array_equal(whole.delta, direct.delta) and list(whole.perturbation) == list(direct.perturbation)
    assert np.array_equal(part.delta, whole.delta[::-1][::2])
    np.testing.assert_allclose(whole.delta[::-1], np.stack([delta[k] for k in train]), atol=1e-10)
    from ptrag.errors import PtragError

    with pytest.raises(PtragError, match="at least one training group"):
        cache.of(groups.iloc[:0])


def test_predictions_are_relu_of_the_models_matched_controls_plus_shift(files, monkeypatch):
    from ptrag.nn.generator import ModelOutput
    from ptrag.train.plan import PerturbationPlan

    run, data = files / "run", files / "d.h5ad"
    preds = predict_baselines(run, data)
    assert list(preds) == list(BASELINES)
    # the model's own sets: a network that returns its input shows which control cells it was given
    monkeypatch.setattr(
        PerturbationPlan,
        "forward",
        lambda self, batch, pert_vec=None, query_index=None, calibrated=False: ModelOutput(pred=batch["ctrl_expr"]),
    )
    identity = predict(run, data).adata
    ctrl = preds["control"].adata
    np.testing.assert_array_equal(ctrl.X, identity.X)
    hand = _hand_shifts(*_hand(files)[:2])
    is_pred = ~ctrl.obs["is_control"].to_numpy()
    perts = ctrl.obs["perturbation"].astype(str).to_numpy()
    for name, pred in preds.items():
        a = pred.adata
        assert a.uns["ptrag"]["model"] == name and pred.retrieval is None
        pd.testing.assert_frame_equal(a.obs, identity.obs)
        assert list(a.var_names) == list(identity.var_names)
        shift = np.stack([hand[name][p] for p in perts[is_pred]])
        np.testing.assert_allclose(a.X[is_pred], np.maximum(ctrl.X[is_pred] + shift, 0), atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(a.X[~is_pred], ctrl.X[~is_pred])  # observed controls, unchanged
        assert (a.X >= 0).all()
    assert set(perts[is_pred]) == {"P5", "P6", "P7"}
    # predict(baseline=...) and the old control_baseline flag give the same files
    np.testing.assert_array_equal(predict(run, data, baseline="linear").adata.X, preds["linear"].adata.X)
    np.testing.assert_array_equal(predict(run, data, control_baseline=True).adata.X, ctrl.X)


def _rewrite(files, groups, name, seed=1):
    a = ad.read_h5ad(files / "d.h5ad")
    x = _dense(a.X).astype(np.float32)
    rng = np.random.default_rng(seed)
    for ct, p in groups:
        m = ((a.obs["cell_type"] == ct) & (a.obs["gene"] == p)).to_numpy()
        x[m] = rng.gamma(1.0, 2.0, size=(m.sum(), x.shape[1])).astype(np.float32)
    a.X = x
    a.write_h5ad(files / name)
    return files / name


def test_no_validation_or_test_group_influences_a_baseline(files):
    run = files / "run"
    before = predict_baselines(run, files / "d.h5ad")
    after = predict_baselines(run, _rewrite(files, HELD, "held_changed.h5ad"))
    for name in BASELINES:
        np.testing.assert_array_equal(after[name].adata.X, before[name].adata.X, err_msg=name)
        pd.testing.assert_frame_equal(after[name].adata.obs, before[name].adata.obs)
    # the check can fail: changing a training group of the target moves the mean baselines
    moved = predict_baselines(run, _rewrite(files, [("CT1", "P0")], "train_changed.h5ad"))
    for name in ("context_mean", "additive", "linear"):
        assert not np.array_equal(moved[name].adata.X, before[name].adata.X), name


def test_pure_functions_fall_back_as_documented():
    # CT0: A, B train; CT1: A; CT2 (zero-shot): nothing
    d = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]])
    ch = MeanChanges(np.array(["CT0", "CT0", "CT1"], object), np.array(["A", "B", "A"], object), d)
    np.testing.assert_allclose(context_mean(ch, "CT0"), [2.0, 1.0])
    np.testing.assert_allclose(context_mean(ch, "CT2"), d.mean(0))  # no training group: all groups
    np.testing.assert_allclose(perturb_mean(ch, "CT2", "A"), [3.0, 2.0])  # A in CT0 and CT1
    np.testing.assert_allclose(perturb_mean(ch, "CT1", "B"), [3.0, 2.0])  # B in CT0 only
    np.testing.assert_allclose(perturb_mean(ch, "CT1", "Z"), [5.0, 4.0])  # nowhere: context mean
    # additive: context mean + (A elsewhere - mean of the other cell types' groups)
    np.testing.assert_allclose(additive(ch, "CT1", "A"), np.array([5.0, 4.0]) + (np.array([1.0, 0.0]) - [2.0, 1.0]))
    np.testing.assert_allclose(additive(ch, "CT1", "Z"), [5.0, 4.0])
    fit = linear_fit(ch, "CT2")  # no training perturbation in the target: W = 0, shift = context mean
    assert np.all(fit.W == 0)
    np.testing.assert_allclose(linear_shift(fit, ch, "CT2", "A"), d.mean(0))
    assert baseline_shifts("control", None, [("CT0", "A")], n_genes=2).tolist() == [[0.0, 0.0]]
    from ptrag.errors import PtragError

    with pytest.raises(PtragError, match="--baseline"):
        baseline_shifts("nope", ch, [("CT0", "A")])


def test_cli_baseline_choice_and_output(files, tmp_path, capsys):
    base = ["predict", "--run", str(files / "run"), "--data", str(files / "d.h5ad")]
    out = tmp_path / "nope.h5ad"
    assert main([*base, "--out", str(out), "--baseline", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("--baseline") == 1 and "nope" in err and "linear" in err and "Traceback" not in err
    assert not out.exists()
    assert main([*base, "--out", str(out), "--baseline", "linear", "--control-baseline"]) == 2
    assert not out.exists()
    ok = tmp_path / "linear.h5ad"
    assert main([*base, "--out", str(ok), "--baseline", "linear"]) == 0
    a = ad.read_h5ad(ok)
    assert a.uns["ptrag"]["model"] == "linear"
    assert not ok.with_suffix(".retrieval.csv").exists()  # no retrieval log for a baseline, even of a RAG run
    assert main([*base, "--out", str(tmp_path / "c.h5ad"), "--control-baseline"]) == 0
    assert ad.read_h5ad(tmp_path / "c.h5ad").uns["ptrag"]["model"] == "control"


def test_run_target_evaluates_every_baseline(files, tmp_path, monkeypatch):
    import ptrag.eval.evaluate as evaluate_mod
    from ptrag.experiments.cross_celltype import run_target
    from ptrag.train.config import read_run_config

    out = tmp_path / "target"
    shutil.copytree(files / "run", out / "runs" / "vanilla_rag")
    configs = {"vanilla_rag": read_run_config(out / "runs" / "vanilla_rag")}
    args = (files / "d.h5ad", files / "split.toml", out, configs, [files / "g.pkl"])
    m = run_target(*args, progress=False, pred_dir="pred", eval_dir="eval")
    assert set(m["model"]) == {"vanilla_rag", *BASELINES}
    for name in ("vanilla_rag", *BASELINES):
        assert (out / "pred" / f"{name}.h5ad").is_file(), name
        assert set(m.loc[m["model"] == name, "perturbation"]) == {"P5", "P6", "P7"}
    assert not (out / "pred" / "linear.retrieval.csv").exists()
    # the linear baseline's file is the one `ptrag predict --baseline linear` writes
    np.testing.assert_array_equal(
        ad.read_h5ad(out / "pred" / "linear.h5ad").X,
        predict(out / "runs" / "vanilla_rag", files / "d.h5ad", baseline="linear").adata.X,
    )
    # an evaluation from before the baselines existed (control only) is redone; a full one is reused
    (out / "pred" / "linear.h5ad").unlink()
    m[m["model"].isin(["vanilla_rag", "control"])].to_parquet(out / "eval" / "metrics.parquet")
    again = run_target(*args, progress=False, pred_dir="pred", eval_dir="eval")
    assert set(again["model"]) == {"vanilla_rag", *BASELINES} and (out / "pred" / "linear.h5ad").is_file()
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    assert set(run_target(*args, progress=False, pred_dir="pred", eval_dir="eval")["model"]) == {
        "vanilla_rag",
        *BASELINES,
    }


def test_new_perturbations_need_no_gene_vector_for_a_baseline(files):
    run, data = files / "run", files / "d.h5ad"
    kw = dict(perturbations=["P5", "NEWGENE"], cell_type="CT1")
    pm = predict(run, data, baseline="perturb_mean", **kw).adata
    ctx = predict(run, data, baseline="context_mean", **kw).adata
    new = (pm.obs["perturbation"] == "NEWGENE").to_numpy()
    assert new.sum() == 8 and (pm.obs["split"].astype(str)[~pm.obs["is_control"]] == "new").all()
    np.testing.assert_array_equal(pm.X[new], ctx.X[new])  # trains nowhere: perturb_mean = context_mean
    p5 = (pm.obs["perturbation"] == "P5").to_numpy()
    assert not np.array_equal(pm.X[p5], ctx.X[p5])


# ------------------------------------------- the demo's cellA split, perturb_mean by hand


@pytest.fixture(scope="module")
def demo_cella(tmp_path_factory):
    """The demo's data and cellA split, and the run folder of its first model without training.

    ``ptrag demo`` is ``cross_celltype(None, ...)``: the synthetic benchmark simulated with seed 0
    (:func:`synthetic_data`), per target ``fewshot_split(groups, target, fewshot=0.3, seed=0)``
    written as ``seed0/<target>/split.toml``, and the baselines predicted on the sets and training
    groups of the first model's run (``runs/state``). The run folder here holds the files
    ``train`` writes before fitting (:func:`prepare_run` + :func:`write_run_files`: config.toml,
    split.toml, genes.txt, pca.npz); the baselines read nothing else from the run but the
    plan's perturbation names, so the untrained plan stands in for the checkpoint.
    """
    import inspect

    from ptrag.data.io import ColumnSpec, read_perturbseq
    from ptrag.data.splits import fewshot_split
    from ptrag.experiments.cross_celltype import cross_celltype, step_overrides, synthetic_data
    from ptrag.experiments.demo import DEMO_TARGETS, run_demo
    from ptrag.train.config import MODELS, resolve_config
    from ptrag.train.fit import write_run_files
    from ptrag.train.prepare import build_plan, prepare_run

    out = tmp_path_factory.mktemp("demo")
    files = synthetic_data(out)  # the demo's data: simulate(seed=0) into out/data
    target, seed = DEMO_TARGETS[0], inspect.signature(run_demo).parameters["seed"].default
    fewshot = inspect.signature(cross_celltype).parameters["fewshot"].default
    assert (target, seed, fewshot) == ("cellA", 0, 0.3)
    spec = ColumnSpec()
    split = fewshot_split(read_perturbseq(files["data"], spec).groups(), target, fewshot, seed=seed)
    split_path = out / f"seed{seed}" / target / "split.toml"
    split.to_toml(split_path)
    model = MODELS[0]  # the first of the demo's models: its run gives the baselines' sets
    cfg = resolve_config({**step_overrides(None), "model": model, "seed": seed, "data": spec.to_dict()}, preset="cpu")
    prep = prepare_run(cfg, files["data"], split_path)
    run = split_path.parent / "runs" / model
    write_run_files(cfg, prep, run)
    return dict(data=files["data"], split=split, cfg=cfg, run=run, plan=build_plan(cfg, prep).eval(), out=out)


def test_demo_cella_perturb_mean_pearson_delta_equals_a_hand_computation(demo_cella, monkeypatch):
    """Issue (must-show): on the demo's cellA split, the ``perturb_mean`` baseline's mean
    Pearson Δ (``ptrag predict --baseline perturb_mean`` then ``ptrag evaluate``) equals a hand
    computation from the h5ad.

    By hand (anndata + numpy, the h5ad only), for each test perturbation p of cellA:
    shift_p = mean over the other cell types c of [mean(X[c, p]) - mean(X[c, control])] (on this
    split every group of cellB-D trains, so these are exactly the training groups the code
    averages; no test perturbation falls back to the context mean); predicted cells =
    relu(X[matched control rows] + shift_p), the rows drawn as ``predict`` draws them
    (``SetSampler`` eval mode, seed + 2) and checked to be the cells of the control baseline;
    Pearson Δ_p = pearson(mean(pred) - mean(ctrl_cellA), mean(real_p) - mean(ctrl_cellA)) over
    the run's genes. Per group and on average it must equal the evaluated ``pearson_delta``.
    """
    import ptrag.train.predict as predict_mod
    from ptrag.data.io import read_perturbseq
    from ptrag.data.sets import SetSampler
    from ptrag.eval.evaluate import evaluate
    from ptrag.train.predict import write_prediction

    d, run, split, cfg = demo_cella["data"], demo_cella["run"], demo_cella["split"], demo_cella["cfg"]
    plan = demo_cella["plan"]
    monkeypatch.setattr(predict_mod, "load_plan", lambda run_dir, checkpoint="best": plan)

    # --- the public path: predict the baselines, evaluate them as the demo does
    preds = predict_baselines(run, d, ["control", "perturb_mean"], split="test")
    paths = {}
    for name, pred in preds.items():
        paths[name] = demo_cella["out"] / f"{name}.h5ad"
        write_prediction(pred, paths[name])
    m = evaluate([paths["perturb_mean"]], d, run, demo_cella["out"] / "eval")
    m = m[m["model"] == "perturb_mean"].set_index("perturbation")
    assert set(m["cell_type"]) == {"cellA"}

    # --- by hand from the h5ad
    a = ad.read_h5ad(d)
    genes = (run / "genes.txt").read_text().split()
    x = np.asarray(a[:, genes].X.toarray(), dtype=np.float32)
    gene, ct = a.obs["gene"].astype(str).to_numpy(), a.obs["cell_type"].astype(str).to_numpy()

    def mean_of(c, p):
        return x[(ct == c) & (gene == p)].mean(0, dtype=np.float64)

    cts = sorted(set(ct))
    ctrl = {c: mean_of(c, CTRL) for c in cts}
    train = set(split.groups("train").itertuples(index=False, name=None))
    test = split.perturbations("test", "cellA")
    assert len(test) == 72 and set(m.index) == set(test)
    ctx = np.mean([mean_of("cellA", q) - ctrl["cellA"] for c, q in train if c == "cellA"], axis=0)
    shift = {}
    for p in test:
        others = [c for c in cts if c != "cellA" and ((gene == p) & (ct == c)).any()]
        assert others == ["cellB", "cellC", "cellD"] and all((c, p) in train for c in others)
        shift[p] = np.mean([mean_of(c, p) - ctrl[c] for c in others], axis=0) if others else ctx

    # the matched control rows, drawn as predict() draws them; they are the control baseline's cells
    data = read_perturbseq(d, cfg.column_spec)
    groups = pd.DataFrame({"cell_type": "cellA", "perturbation": test})
    sets = SetSampler(
        data.obs, groups, cfg.cell_set_size, mode="eval", seed=cfg.seed + 2, match_batch=cfg.match_batch
    ).plan()
    ctrl_rows = {p: np.concatenate([s.ctrl_rows for s in sets if s.perturbation == p]) for p in test}
    assert all(((ct[r] == "cellA") & (gene[r] == CTRL)).all() for r in ctrl_rows.values())
    base, pm = preds["control"].adata, preds["perturb_mean"].adata
    is_pred = ~pm.obs["is_control"].to_numpy()
    labels = pm.obs["perturbation"].astype(str).to_numpy()
    hand = {}
    for p in test:
        rows = is_pred & (labels == p)
        np.testing.assert_array_equal(base.X[rows], x[ctrl_rows[p]])  # the same matched controls
        pred = np.maximum(x[ctrl_rows[p]].astype(np.float64) + shift[p], 0.0)
        np.testing.assert_allclose(pm.X[rows], pred, atol=1e-5, err_msg=p)
        real = mean_of("cellA", p)
        hand[p] = np.corrcoef(pred.mean(0) - ctrl["cellA"], real - ctrl["cellA"])[0, 1]

    got = m.loc[test, "pearson_delta"].to_numpy(dtype=np.float64)
    want = np.array([hand[p] for p in test])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert abs(got.mean() - want.mean()) < 1e-6
    assert 0.1 < want.mean() < 1.0  # a real signal (0.257 on the demo's data), not a degenerate correlation
