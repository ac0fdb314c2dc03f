"""ptrag.eval.metrics / pca / gge: closed forms, hand-computed values, and gge-eval agreement."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ptrag.data.pca import PCASpace
from ptrag.errors import PtragError
from ptrag.eval import gge as G
from ptrag.eval.metrics import (
    ControlSet,
    GroupStats,
    MetricOptions,
    benjamini_hochberg,
    delta_correlations,
    energy_distance,
    group_metrics,
    mean_errors,
    mmd_rbf,
    retrieval_precision_recall,
    retrieval_summary,
    set_distances,
    wasserstein_1,
    wasserstein_2_squared,
    welch_degs,
)

# ------------------------------------------------------------------ distances


def test_w1_w2_of_a_shifted_cloud_are_the_shift_length():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    v = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    y = x + v
    assert wasserstein_1(x, y) == pytest.approx(np.linalg.norm(v), rel=1e-9)
    assert wasserstein_2_squared(x, y) == pytest.approx(float(v @ v), rel=1e-9)
    # row order of a set does not matter
    assert wasserstein_1(x, y[rng.permutation(40)]) == pytest.approx(np.linalg.norm(v), rel=1e-9)


def test_w1_w2_in_one_dimension_match_scipy_and_sorted_pairing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    y = rng.gamma(2.0, size=50)
    assert wasserstein_1(x, y) == pytest.approx(stats.wasserstein_distance(x, y), rel=1e-9)
    # unequal sizes
    z = rng.normal(size=31) * 2
    assert wasserstein_1(x, z) == pytest.approx(stats.wasserstein_distance(x, z), rel=1e-9)
    # W2² in 1-D with equal sizes: mean squared difference of the sorted samples
    assert wasserstein_2_squared(x, y) == pytest.approx(np.mean((np.sort(x) - np.sort(y)) ** 2), rel=1e-9)


def test_energy_distance_zero_for_identical_sets_and_hand_values():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 4))
    assert energy_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-12)
    # X = {0, 1}, Y = {3, 4}: E|X-Y| = (3+4+2+3)/4 = 3, E|X-X'| = E|Y-Y'| = (0+1+1+0)/4 = 0.5
    assert energy_distance(np.array([0.0, 1.0]), np.array([3.0, 4.0])) == pytest.approx(2 * 3 - 0.5 - 0.5)
    # Shift s beyond the range: |x_i - y_j| = s + x_j - x_i, so E|X-Y| = s and
    # energy = 2 s - 2 E|X-X'|, with E|X-X'| the mean over all n² pairs (V-statistic).
    u = rng.uniform(0, 1, size=25)
    s = 5.0
    e_xx = np.mean([abs(a - b) for a in u for b in u])
    assert energy_distance(u, u + s) == pytest.approx(2 * s - 2 * e_xx, rel=1e-12)
    # the same in 3-D with the shift along one axis and the cloud spread along it only
    cloud = np.zeros((25, 3))
    cloud[:, 0] = u
    assert energy_distance(cloud, cloud + np.array([s, 0, 0])) == pytest.approx(2 * s - 2 * e_xx, rel=1e-12)


def test_mmd_hand_value_median_heuristic_and_identical_sets():
    # X = {0, 1}, Y = {0, 2}: pooled distinct-pair distances [1, 0, 2, 1, 1, 2] -> median 1 -> σ = 1
    k = lambda d: math.exp(-(d**2) / 2)  # noqa: E731
    expected = k(1) + k(2) - 2 * (k(0) + k(2) + k(1) + k(1)) / 4
    assert mmd_rbf(np.array([0.0, 1.0]), np.array([0.0, 2.0])) == pytest.approx(expected, rel=1e-12)
    assert mmd_rbf(np.array([0.0, 1.0]), np.array([0.0, 2.0]), bandwidth=1.0) == pytest.approx(expected, rel=1e-12)
    # identical sets: unbiased estimate = 2 (S - n) / (n (n-1)) - 2 S / n² (S = kernel sum), ~0
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 10))
    n = len(x)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    # pooled sample = x twice: distinct pairs are the within-x pairs (twice), the cross pairs
    z = np.concatenate([x, x])
    dz = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))
    sigma = np.median(dz[np.triu_indices(2 * n, 1)])
    kmat = np.exp(-(d**2) / (2 * sigma**2))
    s_ = kmat.sum()
    val = mmd_rbf(x, x.copy())
    assert val == pytest.approx(2 * (s_ - n) / (n * (n - 1)) - 2 * s_ / n**2, rel=1e-10)
    assert abs(val) < 2 / n
    # two samples of the same law: ~0; a shifted one: clearly positive
    y = rng.normal(size=(64, 10))
    assert abs(mmd_rbf(x, y)) < 0.02
    assert mmd_rbf(x, y + 2.0) > 0.2


def test_set_distances_equals_the_separate_functions():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(27, 3)) + 0.5
    d = set_distances(x, y)
    assert d["w1"] == pytest.approx(wasserstein_1(x, y))
    assert d["w2_sq"] == pytest.approx(wasserstein_2_squared(x, y))
    assert d["energy"] == pytest.approx(energy_distance(x, y))
    assert d["mmd"] == pytest.approx(mmd_rbf(x, y))


# ----------------------------------------------------------- DEGs, correlations


def test_welch_degs_match_scipy_ttest_on_a_constructed_example():
    rng = np.random.default_rng(5)
    ctrl = rng.normal(1.0, 0.5, size=(80, 30))
    pert = rng.normal(1.0, 0.5, size=(40, 30))
    pert[:, :5] += 1.5  # five strong DEGs
    pert[:, 5] += 0.25  # a weak one
    pert[:, 29] = 2.0  # constant in the perturbed cells (still testable)
    res = welch_degs(pert, ctrl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = stats.ttest_ind(pert, ctrl, equal_var=False, axis=0).pvalue
    np.testing.assert_allclose(res.pvalues, p, rtol=1e-10)
    np.testing.assert_array_equal(res.mask, p < 0.05)
    assert res.mask[:5].all() and res.mask[29]
    np.testing.assert_allclose(res.lfc, pert.mean(0) - ctrl.mean(0))
    # stats computed from chunks give the same answer
    chunked = GroupStats.of_chunks([ctrl[:33], ctrl[33:]])
    np.testing.assert_allclose(welch_degs(pert, chunked).pvalues, p, rtol=1e-8)
    # BH-adjusted p and a minimum |lfc|
    bh = welch_degs(pert, ctrl, MetricOptions(deg_correction="bh"))
    np.testing.assert_array_equal(bh.mask, stats.false_discovery_control(p) < 0.05)
    lfc = welch_degs(pert, ctrl, MetricOptions(deg_min_lfc=1.0))
    np.testing.assert_array_equal(lfc.mask, (p < 0.05) & (np.abs(pert.mean(0) - ctrl.mean(0)) >= 1.0))
    assert lfc.mask[:5].all() and not lfc.mask[5]
    # a gene constant in both groups has no p-value and is not a DEG
    ctrl2, pert2 = ctrl.copy(), pert.copy()
    ctrl2[:, 7] = 1.0
    pert2[:, 7] = 1.0
    r2 = welch_degs(pert2, ctrl2)
    assert np.isnan(r2.pvalues[7]) and not r2.mask[7]


def test_benjamini_hochberg_hand_computed():
    # p = [0.01, 0.04, 0.03, 0.005]: sorted 0.005, 0.01, 0.03, 0.04 -> p*m/rank = 0.02, 0.02, 0.04, 0.04
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(q[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(q[4])


def test_delta_correlations_on_constructed_changes():
    real = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 0.0])
    mask = np.array([True] * 5 + [False])
    r, rho, why = delta_correlations(2 * real + 1, real, mask)
    assert (r, rho, why) == (pytest.approx(1.0), pytest.approx(1.0), "")
    r, rho, _ = delta_correlations(-real, real, mask)
    assert r == pytest.approx(-1.0) and rho == pytest.approx(-1.0)
    r, rho, _ = delta_correlations(np.exp(real), real, mask)
    assert rho == pytest.approx(1.0)
    assert r == pytest.approx(np.corrcoef(np.exp(real[:5]), real[:5])[0, 1])
    r, rho, why = delta_correlations(real, real, np.array([True, True] + [False] * 4))
    assert math.isnan(r) and math.isnan(rho) and "fewer than 3 DEGs" in why


def test_group_metrics_on_constructed_sets():
    rng = np.random.default_rng(6)
    n_genes = 12
    ctrl_cells = rng.normal(0.0, 1.0, size=(200, n_genes))
    ctrl = GroupStats.of(ctrl_cells)
    effect = np.zeros(n_genes)
    effect[:4] = [3.0, -2.0, 2.5, 4.0]
    real = rng.normal(0.0, 1.0, size=(60, n_genes)) + effect
    pca = PCASpace.fit(np.concatenate([ctrl_cells, real]), n_components=5)
    perfect = real.copy()  # the observed cells themselves
    scaled = ctrl.mean + 2 * (real - ctrl.mean)  # doubled changes: same correlation, larger error
    out = group_metrics({"perfect": perfect, "scaled": scaled}, real, ControlSet.of(ctrl_cells), pca)
    p, s = out["perfect"], out["scaled"]
    # cell-eval's metrics of the observed cells themselves: perfect agreement
    assert p["mae_delta"] == 0 and p["mse_delta"] == 0 and p["overlap_at_N"] == 1 and p["precision_at_N"] == 1
    assert p["de_direction_match"] == 1 and p["de_spearman_lfc_sig"] == pytest.approx(1.0)
    assert s["mae_delta"] == pytest.approx(np.mean(np.abs(d := real.mean(0) - ctrl.mean)))
    assert p["pearson_deg"] == pytest.approx(1.0) and p["spearman_deg"] == pytest.approx(1.0)
    assert s["pearson_deg"] == pytest.approx(1.0)
    assert p["mse"] == pytest.approx(0.0, abs=1e-20) and p["w1"] == pytest.approx(0.0, abs=1e-9)
    assert p["energy"] == pytest.approx(0.0, abs=1e-9) and p["w2_sq"] == pytest.approx(0.0, abs=1e-9)
    assert s["mse"] == pytest.approx(np.mean(d**2)) and s["mae"] == pytest.approx(np.mean(np.abs(d)))
    assert s["rmse"] == pytest.approx(math.sqrt(s["mse"]))
    dz = pca.transform(scaled).mean(0) - pca.transform(real).mean(0)
    assert s["mse_pca50"] == pytest.approx(np.mean(dz**2))
    assert p["n_deg"] == s["n_deg"] >= 4 and p["n_pred"] == 60 and p["n_real"] == 60 and p["reason"] == ""
    # a group without DEGs: NaN correlations with a reason, the other metrics still there
    null = rng.normal(0.0, 1.0, size=(5, n_genes))
    o = group_metrics({"m": null}, null, ctrl, pca, MetricOptions(deg_pval=1e-12))["m"]
    assert math.isnan(o["pearson_deg"]) and "fewer than 3 DEGs" in o["reason"] and np.isfinite(o["w1"])


def test_mean_errors_hand_values():
    e = mean_errors(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 6.0]))
    assert e == {"mse": pytest.approx(13 / 3), "rmse": pytest.approx(math.sqrt(13 / 3)), "mae": pytest.approx(5 / 3)}


# --------------------------------------------------------------------------- PCA


def test_pca_space_fit_transform_save_load(tmp_path):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
    space = PCASpace.fit(X, n_components=5, gene_names=[f"g{i}" for i in range(20)])
    ref = PCA(n_components=5, svd_solver="full").fit(X)
    z, zr = space.transform(X), ref.transform(X)
    np.testing.assert_allclose(np.abs(z), np.abs(zr), rtol=1e-6, atol=1e-8)  # up to sign
    space.save(tmp_path / "pca.npz")
    back = PCASpace.load(tmp_path / "pca.npz")
    np.testing.assert_array_equal(back.transform(X), z)
    assert back.gene_names == space.gene_names and back.n_components == 5
    assert [p.name for p in tmp_path.iterdir()] == ["pca.npz"]  # no temporary left behind
    # n_components = min(50, n_cells - 1, n_genes)
    assert PCASpace.fit(X[:8]).n_components == 7
    assert PCASpace.fit(X).n_components == 20
    # subsampling beyond max_cells is seeded
    a = PCASpace.fit(X, n_components=3, max_cells=100, seed=1)
    b = PCASpace.fit(X, n_components=3, max_cells=100, seed=1)
    np.testing.assert_array_equal(a.components, b.components)
    with pytest.raises(PtragError, match="not found"):
        PCASpace.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(PtragError, match="could not be read"):
        PCASpace.load(tmp_path / "bad.npz")


# ------------------------------------------------------------------- retrieval


def test_retrieval_precision_recall_hand_example():
    log = pd.DataFrame(
        {
            "cell_type": ["K562"] * 4 + ["RPE1"] * 2,
            "query": ["A"] * 4 + ["A"] * 2,
            "candidate": ["B", "C", "D", "E", "B", "C"],
            "similarity": [0.9, 0.8, 0.7, 0.6, 0.9, 0.8],
            "selected_fraction": [0.9, 0.5, 0.2, 0.0, 0.1, 0.0],
        }
    )
    truth = pd.DataFrame(
        {"cell_type": ["K562", "K562", "K562", "RPE1"], "query": ["A"] * 4, "informative": ["B", "D", "Z", "C"]}
    )
    pr = retrieval_precision_recall(log, truth, min_fraction=0.5).set_index("cell_type")
    k = pr.loc["K562"]
    # selected {B, C}; informative {B, D, Z}; top-K {B, C, D, E}
    assert (k["n_selected"], k["tp_selected"], k["tp_topk"]) == (2, 1, 2)
    assert k["precision_selected"] == pytest.approx(1 / 2) and k["recall_selected"] == pytest.approx(1 / 3)
    assert k["precision_topk"] == pytest.approx(2 / 4) and k["recall_topk"] == pytest.approx(2 / 3)
    r = pr.loc["RPE1"]
    assert r["n_selected"] == 0 and math.isnan(r["precision_selected"]) and r["recall_selected"] == 0
    assert r["precision_topk"] == pytest.approx(1 / 2) and r["recall_topk"] == 1
    summ = retrieval_summary(pr.reset_index())
    assert summ.loc["all", "recall_topk"] == pytest.approx((2 / 3 + 1) / 2)
    assert summ.loc["all", "precision_selected"] == pytest.approx(1 / 2)  # NaN (nothing selected) skipped
    assert summ.loc["K562", "n_queries"] == 1
    with pytest.raises(PtragError, match="selected_fraction"):
        retrieval_precision_recall(log.drop(columns="selected_fraction"), truth)


# ------------------------------------------------------ gge-eval definitions


def test_gge_per_feature_definitions_closed_forms():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(30, 4))
    y = rng.normal(size=(20, 4)) * 2
    w = G.wasserstein1_per_feature(x, y)
    np.testing.assert_allclose(w, [stats.wasserstein_distance(x[:, j], y[:, j]) for j in range(4)], rtol=1e-12)
    e = G.energy_per_feature(x, y)
    half = [
        np.abs(x[:, j, None] - y[None, :, j]).mean()
        - 0.5 * np.abs(x[:, j, None] - x[None, :, j]).mean()
        - 0.5 * np.abs(y[:, j, None] - y[None, :, j]).mean()
        for j in range(4)
    ]
    np.testing.assert_allclose(e, half, rtol=1e-12)
    # index-paired correlation: equal sizes -> mean of per-feature correlations
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    per = [stats.pearsonr(a[:, j], b[:, j])[0] for j in range(3)]
    assert G.paired_or_mean_correlation(a, b) == pytest.approx(np.mean(per))
    # different sizes -> correlation of the mean profiles
    assert G.paired_or_mean_correlation(x, y) == pytest.approx(stats.pearsonr(x.mean(0), y.mean(0))[0])


def _gge():
    try:
        import gge  # noqa: F401
        from gge.metrics import correlation, distances
    except Exception:  # noqa: BLE001
        pytest.skip("gge-eval is not importable (pip install gge-eval==1.0.1)")
    return correlation, distances


def test_gge_functions_agree_with_gge_eval_package():
    correlation, distances = _gge()
    rng = np.random.default_rng(9)
    x = rng.normal(size=(60, 6))
    y = rng.normal(size=(60, 6)) * 1.5 + 0.2
    z = rng.normal(size=(45, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(
            G.wasserstein1_per_feature(x, y), distances.Wasserstein1Distance().compute_per_gene(x, y), rtol=1e-10
        )
        np.testing.assert_allclose(
            G.mmd_per_feature(x, z), distances.MMDDistance().compute_per_gene(x, z), rtol=1e-9, atol=1e-12
        )
        # gge-eval runs geomloss in float32: agreement to ~2e-6 absolute
        np.testing.assert_allclose(
            G.energy_per_feature(x, y), distances.EnergyDistance().compute_per_gene(x, y), rtol=1e-3, atol=1e-5
        )
        np.testing.assert_allclose(
            G.sinkhorn_w2_per_feature(x, y), distances.Wasserstein2Distance().compute_per_gene(x, y), rtol=1e-6
        )
        for cls, method in ((correlation.PearsonCorrelation, "pearson"), (correlation.SpearmanCorrelation, "spearman")):
            for other in (y, z):  # paired (same size) and mean-profile (different size) paths
                ref = np.nanmean(cls().compute_per_gene(x, other))
                assert G.paired_or_mean_correlation(x, other, method) == pytest.approx(ref, rel=1e-10)
