"""cell-eval's metrics in ptrag agree with the installed cell-eval package, on the same files.

The evaluation world of ``test_eval_cli`` (two cell types, three test perturbations, log1p
Poisson counts, a faithful and an uninformative prediction file in ``ptrag predict``'s format)
is scored by ``ptrag evaluate`` and by cell-eval's ``MetricsEvaluator`` (pdex DE included),
metric by metric and perturbation by perturbation; and ``cell-eval run`` reads a ptrag
prediction file unchanged.
"""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_eval_cli import CTRL, CTS, TEST, _evaluate, _real_as_evaluators_see_it, world  # noqa: F401

from ptrag.eval import celleval
from ptrag.eval.registry import CELL_EVAL_COLUMNS

cell_eval = pytest.importorskip("cell_eval", reason="cell-eval is not installed (pip install cell-eval)")

# cell-eval's metric name for each of ptrag's columns (identical names by design)
COLUMNS = [c for c in CELL_EVAL_COLUMNS] + ["pearson_delta", "mse", "mae"]


# cell-eval computes the energy distances in float32 (sklearn), ptrag's match float64 to ~1e-8;
# the correlation over three perturbations of a near-control prediction amplifies the difference
TOL = {"pearson_edistance": 1e-3}


def _cell_eval_results(real, pred, tmp_path) -> pd.DataFrame:
    from cell_eval import MetricsEvaluator

    ev = MetricsEvaluator(
        adata_pred=pred,
        adata_real=real,
        control_pert=CTRL,
        pert_col="perturbation",
        num_threads=1,
        outdir=str(tmp_path),
    )
    res, _ = ev.compute(profile="full", write_csv=False, break_on_error=True)
    return res.to_pandas().set_index("perturbation")


def test_every_cell_eval_metric_agrees_with_cell_eval(world, tmp_path):  # noqa: F811
    assert _evaluate(world, tmp_path / "ev") == 0
    ours = pd.read_parquet(tmp_path / "ev" / "metrics.parquet")
    real = _real_as_evaluators_see_it(world)
    worst: dict[str, float] = {}
    for model in ("good", "bad"):
        pred = world[model]
        for ct in CTS:
            theirs = _cell_eval_results(
                real[(real.obs.cell_type == ct).to_numpy()].copy(),
                pred[(pred.obs.cell_type == ct).to_numpy()].copy(),
                tmp_path / f"{model}{ct}",
            )
            mine = ours[(ours.model == model) & (ours.cell_type == ct)].set_index("perturbation")
            assert sorted(theirs.index) == sorted(TEST)
            for col in COLUMNS:
                for pert in TEST:
                    a, b = float(mine.loc[pert, col]), theirs.loc[pert, col]
                    b = math.nan if b is None else float(b)
                    if math.isnan(b):
                        assert math.isnan(a), (model, ct, pert, col, a, b)
                        continue
                    diff = abs(a - b) / max(abs(b), 1e-6)
                    worst[col] = max(worst.get(col, 0.0), diff)
                    assert diff < TOL.get(col, 1e-4), (model, ct, pert, col, a, b)
    print("cell-eval agreement, worst relative difference:", {k: f"{v:.1e}" for k, v in worst.items()})
    # the check compared values, not NaNs: every metric had a defined value somewhere
    assert set(worst) == set(COLUMNS)
    good = ours[ours.model == "good"]
    bad = ours[ours.model == "bad"]
    assert good["overlap_at_N"].mean() > bad["overlap_at_N"].mean()
    assert good["discrimination_score_l1"].mean() > bad["discrimination_score_l1"].mean()


def test_cell_eval_run_reads_a_ptrag_prediction_file(world, tmp_path):  # noqa: F811
    exe = shutil.which("cell-eval")
    if exe is None:
        pytest.skip("the cell-eval command is not on PATH")
    real = _real_as_evaluators_see_it(world)
    real.write_h5ad(tmp_path / "real.h5ad")
    pred_file = world["root"] / "good.h5ad"  # the prediction file as ptrag writes it, unchanged
    out = tmp_path / "ce"
    proc = subprocess.run(
        [
            exe,
            "run",
            "-ap",
            str(pred_file),
            "-ar",
            str(tmp_path / "real.h5ad"),
            "--control-pert",
            CTRL,
            "--pert-col",
            "perturbation",
            "--celltype-col",
            "cell_type",
            "-o",
            str(out),
            "--num-threads",
            "1",
            "--profile",
            "full",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert any(f.endswith("results.csv") for f in files), files
    assert _evaluate(world, tmp_path / "ev", preds=("good",)) == 0
    ours = pd.read_parquet(tmp_path / "ev" / "metrics.parquet")
    for ct in CTS:
        (path,) = [f for f in out.glob(f"{ct}*results.csv") if "agg" not in f.name]
        res = pd.read_csv(path)
        res = res[res["perturbation"].isin(TEST)].set_index("perturbation")
        mine = ours[ours.cell_type == ct].set_index("perturbation")
        for col in ("overlap_at_N", "discrimination_score_l1", "mae"):
            np.testing.assert_allclose(
                mine.loc[TEST, col].to_numpy(float),
                res.loc[TEST, col].to_numpy(float),
                rtol=1e-4,
                atol=1e-6,
                err_msg=f"{ct} {col}",
            )


# ---------------------------------------------------------------- the building blocks


def test_mann_whitney_against_a_sorted_reference_equals_scipy():
    rng = np.random.default_rng(3)
    ctrl = np.maximum(rng.normal(0.2, 1.0, size=(300, 40)), 0).astype(np.float32)  # many ties at 0
    x = np.maximum(rng.normal(0.5, 1.0, size=(25, 40)), 0).astype(np.float32)
    ctrl[:, 0] = 0.0
    x[:, 0] = 0.0  # constant over both sets: p = 1
    ctrl[:, 1] = np.round(ctrl[:, 1])  # heavy ties across the two sets
    x[:, 1] = np.round(x[:, 1])
    ((u, p),) = celleval.mannwhitney_vs(celleval.RankedReference.of(ctrl), [x])
    ref = stats.mannwhitneyu(x[:, 1:], ctrl[:, 1:], method="asymptotic", axis=0)
    np.testing.assert_allclose(u[1:], ref.statistic, rtol=0, atol=1e-9)
    np.testing.assert_allclose(p[1:], ref.pvalue, rtol=1e-6, atol=1e-12)
    assert p[0] == 1.0


def test_overlap_and_precision_by_hand():
    genes = 6
    real = celleval.DETable(np.array([3, -2, 1, 0.5, 0, 0], np.float32), np.array([0.01, 0.01, 0.01, 0.01, 0.5, 0.5]))
    pred = celleval.DETable(np.array([-5, 0, 2, 0, 4, 0], np.float32), np.array([0.01, 0.5, 0.01, 0.5, 0.01, 0.5]))
    # real significant by |lfc|: 0, 1, 2, 3; predicted: 0, 4, 2
    assert celleval.de_overlap(real, pred, None, "overlap") == pytest.approx(2 / 4)  # {0, 2} of 4
    assert celleval.de_overlap(real, pred, 2, "overlap") == pytest.approx(1 / 2)  # {0,1} vs {0,4}
    assert celleval.de_overlap(real, pred, None, "precision") == pytest.approx(2 / 3)  # top-3 both: {0,1,2} vs {0,4,2}
    rho, direction = celleval.de_agreement(real, pred)
    assert direction == pytest.approx(1 / 4)  # signs of genes 0..3: (+,-), (-,0), (+,+), (+,0)
    assert rho == pytest.approx(stats.spearmanr([3, -2, 1, 0.5], [-5, 0, 2, 0])[0])
    assert genes == len(real.lfc)


def test_discrimination_score_ranks_the_true_perturbation():
    real = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    pred = np.array([[0.9, 0.1, 0], [0.2, 0, 1.0], [0, 0, 1.0]])  # the second looks like the third
    s = celleval.discrimination_scores(real, pred, ["a", "b", "c"], ["x", "y", "z"], "l1")
    # L1 distances of b's prediction to the observed changes: a 1.8, b 2.2, c 0.2 -> b ranks 2 of 3
    np.testing.assert_allclose(s, [1.0, 1 - 2 / 3, 1.0])
    # the gene named like the perturbation is left out: without gene "z", b's prediction is
    # (0.2, 0) against a (1, 0): 0.8, b (0, 1): 1.2, c (0, 0): 0.2 -> still rank 2
    s = celleval.discrimination_scores(real, pred, ["a", "b", "c"], ["x", "y", "b"], "l1")
    assert s[1] == pytest.approx(1 - 2 / 3)
    s = celleval.discrimination_scores(real, pred, ["a", "b", "c"], ["x", "y", "z"], "cosine")
    assert s[0] == 1.0 and s[2] == 1.0
