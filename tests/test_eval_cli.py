"""ptrag evaluate / ptrag compare on small synthetic files, and agreement with gge-eval and cell-eval."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from ptrag.cli import main
from ptrag.data.pca import PCASpace
from ptrag.eval.metrics import metric_columns
from ptrag.eval.scoring import GROUP_METRICS, ControlSet, group_metrics
from ptrag.eval.stats import significance_mark

GENES = [f"G{i:03d}" for i in range(120)]
RUN_GENES = list(reversed(GENES[:100]))  # the run uses a subset, in its own order
CTS = ["A", "B"]
TRAIN = ["P1", "P2"]
TEST = ["P3", "P4", "P5"]
CTRL = "non-targeting"
N_REAL = 60
N_CTRL = 80


def _law(rng):
    base = {ct: rng.gamma(2.0, 1.0, size=len(GENES)) for ct in CTS}
    eff = {}
    for p in TRAIN + TEST:
        f = np.ones(len(GENES))
        idx = rng.choice(100, size=12, replace=False)
        f[idx] = rng.choice([0.2, 4.0], size=12)
        eff[p] = f
    eff[CTRL] = np.ones(len(GENES))
    return base, eff


def _cells(rng, base, eff, ct, pert, n):
    lam = base[ct] * eff[pert]
    return np.log1p(rng.poisson(lam, size=(n, len(GENES)))).astype(np.float32)


def _pred_file(path, model, rng, base, eff, real, n_per_group, mode):
    """A prediction file in ptrag predict's format (observed controls included)."""
    blocks, obs = [], []
    pos = {g: i for i, g in enumerate(GENES)}
    cols = [pos[g] for g in RUN_GENES]
    for ct in CTS:
        for p in TEST:
            x = _cells(rng, base, eff, ct, p if mode == "good" else CTRL, n_per_group)
            blocks.append(x[:, cols])
            obs += [(p, ct, False)] * n_per_group
        m = (real.obs["gene"] == CTRL).to_numpy() & (real.obs["cell_type"] == ct).to_numpy()
        blocks.append(real.X[m][:, cols])
        obs += [(CTRL, ct, True)] * int(m.sum())
    a = ad.AnnData(
        X=np.concatenate(blocks).astype(np.float32),
        obs=pd.DataFrame(
            obs, columns=["perturbation", "cell_type", "is_control"], index=[f"c{i}" for i in range(len(obs))]
        ),
        var=pd.DataFrame(index=RUN_GENES),
    )
    a.uns["ptrag"] = {
        "model": model,
        "control": CTRL,
        "pert_col": "perturbation",
        "cell_type_col": "cell_type",
        "run_dir": "run",
    }
    a.write_h5ad(path)
    return a


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalworld")
    rng = np.random.default_rng(0)
    base, eff = _law(rng)
    blocks, obs = [], []
    for ct in CTS:
        blocks.append(_cells(rng, base, eff, ct, CTRL, N_CTRL))
        obs += [(CTRL, ct)] * N_CTRL
        for p in TRAIN + TEST:
            blocks.append(_cells(rng, base, eff, ct, p, N_REAL))
            obs += [(p, ct)] * N_REAL
    o = pd.DataFrame(obs, columns=["gene", "cell_type"], index=[f"r{i}" for i in range(len(obs))])
    o["gem_group"] = "1"
    real = ad.AnnData(X=np.concatenate(blocks), obs=o, var=pd.DataFrame(index=GENES))
    real.write_h5ad(root / "real.h5ad")
    run = root / "run"
    run.mkdir()
    (run / "genes.txt").write_text("\n".join(RUN_GENES) + "\n")
    (run / "config.toml").write_text(
        'model = "state"\n\n[data]\npert_col = "gene"\ncell_type_col = "cell_type"\nbatch_col = "gem_group"\n'
        'control = "non-targeting"\nlayer = ""\nobsm_key = ""\n'
    )
    train = real.obs["gene"].isin([CTRL, *TRAIN]).to_numpy()
    PCASpace.fit(real[train, RUN_GENES].X, gene_names=RUN_GENES).save(run / "pca.npz")
    good = _pred_file(root / "good.h5ad", "good", np.random.default_rng(1), base, eff, real, N_REAL, "good")
    bad = _pred_file(root / "bad.h5ad", "bad", np.random.default_rng(2), base, eff, real, 64, "bad")
    return {"root": root, "real": real, "run": run, "good": good, "bad": bad}


def _evaluate(world, out, *extra, preds=("good", "bad")):
    args = ["evaluate"]
    for p in preds:
        args += ["--pred", str(world["root"] / f"{p}.h5ad")]
    args += ["--real", str(world["root"] / "real.h5ad"), "--run", str(world["run"]), "--out", str(out), *extra]
    return main(args)


# ------------------------------------------------------------------- ptrag evaluate


def test_evaluate_writes_metrics_and_summaries(world, tmp_path):
    out = tmp_path / "ev"
    assert _evaluate(world, out) == 0
    for f in ("metrics.parquet", "metrics.csv", "summary.csv", "summary.md", "evaluation.json"):
        assert (out / f).is_file(), f
    m = pd.read_parquet(out / "metrics.parquet")
    assert len(m) == 2 * len(CTS) * len(TEST)
    assert list(m.columns) == [
        "model",
        "cell_type",
        "perturbation",
        *metric_columns("ptrag"),
        "n_pred",
        "n_real",
        "n_deg",
        "reason",
        "mode",
    ]
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""]).fillna({"reason": ""}),
        m.fillna({"reason": ""}),
        check_dtype=False,
    )
    g, b = m[m.model == "good"], m[m.model == "bad"]
    assert (g["n_pred"] == N_REAL).all() and (b["n_pred"] == 64).all() and (m["n_real"] == N_REAL).all()
    # the faithful model wins on every metric, on average
    assert g["pearson_deg"].mean() > 0.8 > b["pearson_deg"].mean()
    for col in ("mse", "mse_pca50", "w1", "w2_sq", "energy", "mmd"):
        assert g[col].mean() < b[col].mean(), col
    # one row recomputed independently: run genes in run order, controls of the same cell type
    real, run = world["real"], world["run"]
    pca = PCASpace.load(run / "pca.npz")
    sel = lambda mask: real[mask, RUN_GENES].X  # noqa: E731
    ctrl = sel((real.obs.gene == CTRL).to_numpy() & (real.obs.cell_type == "B").to_numpy())
    obs_cells = sel((real.obs.gene == "P4").to_numpy() & (real.obs.cell_type == "B").to_numpy())
    pg = world["good"]
    pred_cells = pg[(pg.obs.perturbation == "P4").to_numpy() & (pg.obs.cell_type == "B").to_numpy()].X
    ref = group_metrics({"good": pred_cells}, obs_cells, ControlSet.of(ctrl), pca)["good"]
    row = g[(g.cell_type == "B") & (g.perturbation == "P4")].iloc[0]
    for col in [m.column for m in GROUP_METRICS] + ["n_deg"]:
        assert row[col] == pytest.approx(ref[col], rel=1e-9), col
    s = pd.read_csv(out / "summary.csv")
    assert set(zip(s.model, s.cell_type, strict=True)) == {(mo, ct) for mo in ("good", "bad") for ct in ("all", *CTS)}
    allg = s[(s.model == "good") & (s.cell_type == "all")].iloc[0]
    assert allg["w1_mean"] == pytest.approx(g["w1"].mean()) and allg["w1_std"] == pytest.approx(g["w1"].std())
    assert "Pearson DEG" in (out / "summary.md").read_text()


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


def test_evaluate_bad_inputs_raise_clear_errors_and_write_nothing(world, tmp_path, capsys):
    root = world["root"]
    out = tmp_path / "ev"
    # missing prediction file
    assert main(["evaluate", "--pred", str(root / "nope.h5ad"), "--real", str(root / "real.h5ad"),
                 "--run", str(world["run"]), "--out", str(out)]) == 2  # fmt: skip
    assert "nope.h5ad" in capsys.readouterr().err and _nothing_written(out)
    # predictions lacking a gene of the run
    g = world["good"]
    g[:, RUN_GENES[1:]].copy().write_h5ad(tmp_path / "fewgenes.h5ad")
    assert main(["evaluate", "--pred", str(tmp_path / "fewgenes.h5ad"), "--real", str(root / "real.h5ad"),
                 "--run", str(world["run"]), "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert RUN_GENES[0] in err and _nothing_written(out)
    # a predicted perturbation absent from the observed data
    h = g.copy()
    h.obs["perturbation"] = h.obs["perturbation"].astype(str).replace({"P5": "P9"})
    h.uns["ptrag"] = {**h.uns["ptrag"], "model": "other"}
    h.write_h5ad(tmp_path / "p9.h5ad")
    assert main(["evaluate", "--pred", str(root / "good.h5ad"), "--pred", str(tmp_path / "p9.h5ad"),
                 "--real", str(root / "real.h5ad"), "--run", str(world["run"]), "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "'P9'" in err and "absent" in err and _nothing_written(out)
    # the same model twice, unless named apart
    assert _evaluate(world, out, preds=("good", "good")) == 2
    assert "same model" in capsys.readouterr().err and _nothing_written(out)
    assert _evaluate(world, out, "--name", "one", preds=("good", "good")) == 2
    assert "one --name per --pred" in capsys.readouterr().err and _nothing_written(out)
    assert _evaluate(world, tmp_path / "named", "--name", "g1", "--name", "g2", preds=("good", "good")) == 0
    named = pd.read_parquet(tmp_path / "named" / "metrics.parquet")
    assert sorted(named.model.unique()) == ["g1", "g2"]
    # invalid mode; a run folder without pca.npz
    assert _evaluate(world, out, "--mode", "paper") == 2
    assert "--mode" in capsys.readouterr().err and _nothing_written(out)
    run2 = tmp_path / "run2"
    run2.mkdir()
    (run2 / "genes.txt").write_text((world["run"] / "genes.txt").read_text())
    assert main(["evaluate", "--pred", str(root / "good.h5ad"), "--real", str(root / "real.h5ad"),
                 "--run", str(run2), "--out", str(out)]) == 2  # fmt: skip
    assert "pca.npz" in capsys.readouterr().err and _nothing_written(out)


def test_data_flags_override_the_run_config(world, tmp_path, capsys):
    real = world["real"].copy()
    real.obs = real.obs.rename(columns={"gene": "guide_target"})
    real.write_h5ad(tmp_path / "real2.h5ad")
    base = ["evaluate", "--pred", str(world["root"] / "good.h5ad"), "--real", str(tmp_path / "real2.h5ad"),
            "--run", str(world["run"])]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a")]) == 2  # config says pert_col = "gene"
    assert "'gene'" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--pert-col", "guide_target"]) == 0
    ref = pd.read_parquet(tmp_path / "b" / "metrics.parquet")
    assert len(ref) == len(CTS) * len(TEST)
    # a run whose config names the column: no flag needed
    run3 = tmp_path / "run3"
    run3.mkdir()
    for f in ("genes.txt", "pca.npz"):
        (run3 / f).write_bytes((world["run"] / f).read_bytes())
    (run3 / "config.toml").write_text(
        'model = "state"\n\n[data]\npert_col = "guide_target"\ncontrol = "non-targeting"\n'
    )
    assert main([*base[:-1], str(run3), "--out", str(tmp_path / "c")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "c" / "metrics.parquet"), ref)


def test_run_config_with_default_batch_column_absent_from_the_data(world, tmp_path):
    # `ptrag train` writes every column to [data]; a file without gem_group trained fine (the
    # default batch column is optional), so evaluating it with that run must work too
    real = world["real"].copy()
    real.obs = real.obs.drop(columns=["gem_group"])
    real.write_h5ad(tmp_path / "nobatch.h5ad")
    run = tmp_path / "run_full"
    run.mkdir()
    for f in ("genes.txt", "pca.npz"):
        (run / f).write_bytes((world["run"] / f).read_bytes())
    (run / "config.toml").write_text(
        'model = "state"\n\n[data]\npert_col = "gene"\ncell_type_col = "cell_type"\nbatch_col = "gem_group"\n'
        'control = "non-targeting"\nlayer = ""\nobsm_key = ""\n'
    )
    args = ["evaluate", "--pred", str(world["root"] / "good.h5ad"), "--real", str(tmp_path / "nobatch.h5ad"),
            "--run", str(run)]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "cli")]) == 0
    from ptrag.eval.evaluate import evaluate

    m = evaluate([world["root"] / "good.h5ad"], tmp_path / "nobatch.h5ad", run, tmp_path / "api")
    assert len(m) == len(pd.read_parquet(tmp_path / "cli" / "metrics.parquet")) == len(CTS) * len(TEST)


# -------------------------------------------------------------------- ptrag compare


def test_compare_writes_paper_tables(world, tmp_path, capsys):
    assert _evaluate(world, tmp_path / "g", preds=("good",)) == 0
    assert _evaluate(world, tmp_path / "b", preds=("bad",)) == 0
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "g"), str(tmp_path / "b"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pearson DEG" in printed and "good" in printed
    for stem in ("table_all", "table_A", "table_B"):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{stem}.{ext}").is_file()
    assert (out / "tests.csv").is_file() and (out / "tables.md").is_file()
    t = pd.read_csv(out / "table_all.csv", keep_default_na=False).set_index("metric")
    assert t.loc["pearson_deg", "best_model"] == "good" and t.loc["w1", "best_model"] == "good"
    assert t.loc["pearson_deg", "direction"] == "↑" and t.loc["w1", "direction"] == "↓"
    # marks are the paper's marks of the BH-adjusted Mann-Whitney p of bad vs the best (good)
    tests = pd.read_csv(out / "tests.csv")
    allt = tests[tests.scope == "all"]
    for metric in ("pearson_deg", "w1"):
        row = allt[allt.metric == metric].iloc[0]
        assert float(t.loc[metric, "bad_q"]) == pytest.approx(row["mwu_q"])  # the VCC row has no q: strings
        assert t.loc[metric, "bad_mark"] == significance_mark(row["mwu_q"])
        assert row["mwu_q"] < 0.05  # 6 vs 6 fully separated groups
        assert t.loc[metric, "good_mark"] == ""
    np.testing.assert_allclose(allt["mwu_q"], __import__("scipy").stats.false_discovery_control(allt["mwu_p"]))
    md = (out / "table_all.md").read_text()
    assert "**" in md and "†" in md and "Pearson DEG ↑" in md
    tex = (out / "table_all.tex").read_text()
    assert r"\textbf{" in tex and r"\toprule" in tex and r"\dag" in tex
    # --reference and the paired test
    out2 = tmp_path / "cmp2"
    assert (
        main(
            [
                "compare",
                str(tmp_path / "g"),
                str(tmp_path / "b"),
                "--out",
                str(out2),
                "--reference",
                "bad",
                "--test",
                "wilcoxon",
            ]
        )
        == 0
    )
    t2 = pd.read_csv(out2 / "table_all.csv", keep_default_na=False).set_index("metric")
    assert t2.loc["w1", "reference_model"] == "bad" and t2.loc["w1", "bad_mark"] == ""
    w = allt[allt.metric == "w1"].iloc[0]
    assert float(t2.loc["w1", "good_q"]) == pytest.approx(w["wilcoxon_q"])
    # errors: unknown reference, the same model twice, mixed metric definitions
    assert main(["compare", str(tmp_path / "g"), "--out", str(tmp_path / "x"), "--reference", "nobody"]) == 2
    assert main(["compare", str(tmp_path / "g"), str(tmp_path / "g"), "--out", str(tmp_path / "x")]) == 2
    assert "more than one" in capsys.readouterr().err
    m = pd.read_parquet(tmp_path / "b" / "metrics.parquet").assign(mode="gge")
    (tmp_path / "fake").mkdir()
    m.to_parquet(tmp_path / "fake" / "metrics.parquet")
    assert main(["compare", str(tmp_path / "g"), str(tmp_path / "fake"), "--out", str(tmp_path / "x")]) == 2
    assert "mix" in capsys.readouterr().err and not (tmp_path / "x").exists()


# --------------------------------------------------------- independent evaluators


def _real_as_evaluators_see_it(world) -> ad.AnnData:
    """Observed cells of the evaluated groups + controls of the predicted cell types, run genes."""
    real = world["real"]
    keep = real.obs["gene"].isin([*TEST, CTRL]).to_numpy()
    r = real[keep, RUN_GENES].copy()
    r.obs = r.obs.rename(columns={"gene": "perturbation"})
    return r


def test_gge_mode_agrees_with_gge_eval(world, tmp_path):
    import torch

    try:
        from gge import evaluate as gge_evaluate
        from gge.metrics import (
            EnergyDistance,
            MMDDistance,
            MSEDistance,
            PearsonCorrelation,
            SpearmanCorrelation,  # fmt: skip
            Wasserstein1Distance,
            Wasserstein2Distance,
        )
    except Exception:  # noqa: BLE001
        pytest.skip("gge-eval is not importable (pip install gge-eval==1.0.1)")
    assert _evaluate(world, tmp_path / "gge", "--mode", "gge") == 0
    ours = pd.read_parquet(tmp_path / "gge" / "metrics.parquet")
    assert list(ours.columns[3:13]) == metric_columns("gge")
    real = _real_as_evaluators_see_it(world)
    names = {"pearson_deg": "pearson_deg", "spearman_deg": "spearman_deg", "mse": "mse",
             "mse_pca50": "mse_pca50", "w1": "wasserstein_1_pca50", "w2": "wasserstein_2_pca50",
             "energy": "energy_pca50", "mmd": "mmd_pca50"}  # fmt: skip
    tol = {"pearson_deg": 1e-6, "spearman_deg": 1e-6, "mse": 1e-6, "mse_pca50": 1e-4, "w1": 1e-4,
           "w2": 1e-4, "energy": 1e-3, "mmd": 1e-4}  # fmt: skip
    worst = {}
    for model in ("good", "bad"):
        metrics = [
            PearsonCorrelation(space="deg", deg_lfc=0.05, deg_pval=0.1),
            SpearmanCorrelation(space="deg", deg_lfc=0.05, deg_pval=0.1),
            MSEDistance(),
            MSEDistance(space="pca", n_components=50),
            Wasserstein1Distance(space="pca", n_components=50),
            Wasserstein2Distance(space="pca", n_components=50),
            EnergyDistance(space="pca", n_components=50),
            MMDDistance(space="pca", n_components=50),
        ]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # gge-eval runs geomloss on tiny 1-D problems
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = gge_evaluate(real, world[model], condition_columns=["perturbation", "cell_type"],
                                   metrics=metrics, control_key=CTRL, verbose=False)  # fmt: skip
        finally:
            torch.set_num_threads(threads)
        conds = {c.condition_key: c for c in res.get_all_conditions()}
        mine = ours[ours.model == model]
        assert len(mine) == len(CTS) * len(TEST)
        for row in mine.itertuples():
            c = conds[f"{row.perturbation}####{row.cell_type}"]
            for col, theirs in names.items():
                a, b = getattr(row, col), c.get_metric_value(theirs)
                rel = abs(a - b) / max(abs(b), 1e-12)
                worst[col] = max(worst.get(col, 0.0), rel)
                assert rel <= tol[col], (model, row.cell_type, row.perturbation, col, a, b)
    print("gge-eval agreement, worst relative difference:", {k: f"{v:.1e}" for k, v in worst.items()})


def test_ptrag_mode_agrees_with_cell_eval(world, tmp_path):
    try:
        from cell_eval._types import PerturbationAnndataPair
        from cell_eval.metrics import mae, mse, pearson_delta
    except Exception:  # noqa: BLE001
        pytest.skip("cell-eval is not importable (pip install cell-eval)")
    assert _evaluate(world, tmp_path / "ev") == 0
    ours = pd.read_parquet(tmp_path / "ev" / "metrics.parquet")
    real = _real_as_evaluators_see_it(world)
    worst = {}
    for model in ("good", "bad"):
        pred = world[model]
        for ct in CTS:
            pair = PerturbationAnndataPair(
                real=real[(real.obs.cell_type == ct).to_numpy()].copy(),
                pred=pred[(pred.obs.cell_type == ct).to_numpy()].copy(),
                pert_col="perturbation",
                control_pert=CTRL,
            )
            theirs = {"pearson_delta": pearson_delta(pair), "mse": mse(pair), "mae": mae(pair)}
            mine = ours[(ours.model == model) & (ours.cell_type == ct)].set_index("perturbation")
            for col, vals in theirs.items():
                assert set(vals) == set(TEST)
                for pert, v in vals.items():
                    rel = abs(mine.loc[pert, col] - v) / max(abs(v), 1e-12)
                    worst[col] = max(worst.get(col, 0.0), rel)
                    assert rel < 1e-5, (model, ct, pert, col, mine.loc[pert, col], v)
    print("cell-eval agreement, worst relative difference:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert not math.isnan(worst["pearson_delta"])


# ------------------------------------------------------------------------ real data


def test_real_data_resampled_cells_beat_control_cells(shared_data, tmp_path):
    """devel.h5ad (real Perturb-seq): observed cells resampled vs control cells as 'predictions'."""
    path = shared_data / "perturbench" / "devel.h5ad"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    a = ad.read_h5ad(path)
    X = a.X.toarray() if hasattr(a.X, "toarray") else np.asarray(a.X)
    genes = list(map(str, a.var_names))
    pert = a.obs["perturbation"].astype(str).to_numpy()
    ct = a.obs["cell_type"].astype(str).to_numpy()
    test = ["MAPK1", "PLK4", "SGK1"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "genes.txt").write_text("\n".join(genes) + "\n")
    (run / "config.toml").write_text(
        '[data]\npert_col = "perturbation"\ncell_type_col = "cell_type"\nbatch_col = ""\ncontrol = "control"\n'
    )
    PCASpace.fit(X[~np.isin(pert, test)], gene_names=genes).save(run / "pca.npz")
    rng = np.random.default_rng(0)
    for model in ("resample", "control"):
        blocks, obs = [], []
        for c in ("A172", "T98G", "U87MG"):
            ctrl = X[(pert == "control") & (ct == c)]
            for p in test:
                src = X[(pert == p) & (ct == c)] if model == "resample" else ctrl
                blocks.append(src[rng.integers(0, len(src), 64)])
                obs += [(p, c, False)] * 64
            blocks.append(ctrl)
            obs += [("control", c, True)] * len(ctrl)
        pa = ad.AnnData(
            np.concatenate(blocks).astype(np.float32),
            obs=pd.DataFrame(
                obs, columns=["perturbation", "cell_type", "is_control"], index=[f"c{i}" for i in range(len(obs))]
            ),
            var=pd.DataFrame(index=genes),
        )
        pa.uns["ptrag"] = {
            "model": model,
            "control": "control",
            "pert_col": "perturbation",
            "cell_type_col": "cell_type",
        }
        pa.write_h5ad(tmp_path / f"{model}.h5ad")
    assert main(["evaluate", "--pred", str(tmp_path / "resample.h5ad"), "--pred", str(tmp_path / "control.h5ad"),
                 "--real", str(path), "--run", str(run), "--out", str(tmp_path / "ev")]) == 0  # fmt: skip
    m = pd.read_parquet(tmp_path / "ev" / "metrics.parquet").groupby("model").mean(numeric_only=True)
    assert m.loc["resample", "pearson_deg"] > 0.8 > 0.3 > m.loc["control", "pearson_deg"]
    for col in ("mse", "w1", "w2_sq", "energy"):
        assert m.loc["resample", col] < m.loc["control", col], col
