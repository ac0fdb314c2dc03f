"""Tests of the embedded synthetic benchmark (ptrag.data.synthetic) and ``ptrag simulate``."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ptrag.cli import main
from ptrag.data import synthetic as syn
from ptrag.errors import PtragError

SMALL = dict(
    n_perturbations=48,
    n_modules=6,
    n_genes=120,
    cells_per_perturbation=16,
    controls_per_cell_type=48,
    embedding_dim=32,
)


@pytest.fixture(scope="module")
def bench() -> syn.SyntheticBenchmark:
    """The default benchmark (the one the README's job runs on)."""
    return syn.simulate(seed=0)


@pytest.fixture(scope="module")
def deltas(bench) -> dict[str, pd.DataFrame]:
    return syn.observed_deltas(bench.adata)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------- determinism


def test_same_seed_identical_different_seed_differs():
    a, b, c = syn.simulate(**SMALL, seed=3), syn.simulate(**SMALL, seed=3), syn.simulate(**SMALL, seed=4)
    assert (a.adata.layers["counts"] != b.adata.layers["counts"]).nnz == 0
    assert (a.adata.X != b.adata.X).nnz == 0
    assert a.adata.obs.equals(b.adata.obs)
    assert a.ground_truth.equals(b.ground_truth)
    assert all(np.array_equal(a.gene_table[g], b.gene_table[g]) for g in a.gene_table)
    assert a.adata.shape == c.adata.shape
    assert (a.adata.layers["counts"] != c.adata.layers["counts"]).nnz > 0
    assert not all(np.array_equal(a.gene_table[g], c.gene_table[g]) for g in a.gene_table)


def test_files_bitwise_identical_for_same_seed(tmp_path):
    p1 = syn.write_benchmark(syn.simulate(**SMALL, seed=5), tmp_path / "a")
    p2 = syn.write_benchmark(syn.simulate(**SMALL, seed=5), tmp_path / "b")
    assert set(p1) == {"data", "genes", "ground_truth"}
    for key in p1:
        assert _md5(p1[key]) == _md5(p2[key]), key
    # atomic writes leave no temporary files behind
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        [syn.DATA_FILE, syn.GENES_FILE, syn.GROUND_TRUTH_FILE]
    )


def test_cell_count_option_does_not_change_the_biology():
    a = syn.simulate(**SMALL, seed=1)
    b = syn.simulate(**{**SMALL, "cells_per_perturbation": 20}, seed=1)
    assert a.ground_truth.equals(b.ground_truth)
    assert all(np.array_equal(a.true_effects[ct], b.true_effects[ct]) for ct in a.true_effects)


# ------------------------------------------------------------------------------- shapes, counts


def test_shapes_columns_and_group_sizes(bench):
    cfg = syn.SimulationConfig()
    a = bench.adata
    assert a.shape == (cfg.n_cell_types * (cfg.n_perturbations * 64 + cfg.controls_per_cell_type), cfg.n_genes)
    assert {"gene", "cell_type", "gem_group"} <= set(a.obs.columns)
    assert a.var_names.is_unique and a.obs_names.is_unique
    pert = a.obs[a.obs["gene"] != syn.CONTROL_LABEL]
    sizes = pert.groupby(["cell_type", "gene"], observed=True).size()
    assert len(sizes) == cfg.n_cell_types * cfg.n_perturbations
    assert sizes.min() >= 64
    ctrl = a.obs[a.obs["gene"] == syn.CONTROL_LABEL].groupby("cell_type", observed=True).size()
    assert (ctrl == cfg.controls_per_cell_type).all() and len(ctrl) == cfg.n_cell_types
    # two gem groups per cell type, nested in it
    gg = a.obs.groupby("cell_type", observed=True)["gem_group"].nunique()
    assert (gg == cfg.n_batches).all()
    assert a.obs.groupby("gem_group", observed=True)["cell_type"].nunique().max() == 1
    # every perturbed gene is measured (120 <= 500 // 2) and has an embedding
    assert set(bench.perturbations) <= set(a.var_names)
    assert set(bench.gene_table) == set(bench.perturbations) == set(pert["gene"].astype(str))
    assert a.var.loc[bench.perturbations, "is_perturbed"].all()


def test_more_perturbations_than_half_the_genes():
    b = syn.simulate(**{**SMALL, "n_genes": 60})  # 48 perturbations, 30 measured
    var = b.adata.var
    assert int(var["is_perturbed"].sum()) == 30 and b.adata.n_vars == 60
    assert set(var.index[var["is_perturbed"]]) < set(b.perturbations)
    assert len(b.gene_table) == 48
    assert (var.loc[var["is_perturbed"], "module"] == [g[:5] for g in var.index[var["is_perturbed"]]]).all()


def test_counts_integer_and_x_is_log1p_normalised(bench):
    import scanpy as sc

    a = bench.adata
    counts = a.layers["counts"]
    assert sp.issparse(counts) and sp.issparse(a.X) and a.X.dtype == np.float32
    assert np.array_equal(counts.data, np.round(counts.data)) and counts.data.min() >= 1
    assert "log1p" in a.uns
    rows = np.arange(0, a.n_obs, 7)  # normalisation is per cell: a subset checks it
    ref = ad.AnnData(X=counts[rows].astype(np.float64))
    sc.pp.normalize_total(ref, target_sum=a.uns[syn.SIMULATION_KEY]["target_sum"])
    sc.pp.log1p(ref)
    assert np.allclose(a.X[rows].toarray(), ref.X.toarray(), atol=1e-5)
    # closed form: every cell's expm1(X) sums to the normalisation target
    totals = np.asarray(np.expm1(a.X.astype(np.float64)).sum(axis=1)).ravel()
    # the target is the median library size
    lib = np.asarray(counts.sum(axis=1)).ravel()
    assert a.uns[syn.SIMULATION_KEY]["target_sum"] == pytest.approx(np.median(lib))
    assert np.allclose(totals, a.uns[syn.SIMULATION_KEY]["target_sum"], rtol=1e-4)


def test_sparsity_and_variability_are_realistic(bench):
    counts = bench.adata.layers["counts"]
    sparsity = 1.0 - counts.nnz / np.prod(counts.shape)
    assert 0.55 < sparsity < 0.9
    lib = np.asarray(counts.sum(axis=1)).ravel()
    assert lib.std() / lib.mean() > 0.25  # varying library sizes
    # over-dispersion: variance > mean for most genes among the controls of one cell type
    obs = bench.adata.obs
    ctrl = ((obs["gene"] == syn.CONTROL_LABEL) & (obs["cell_type"] == "cellA")).to_numpy()
    c = counts[ctrl].toarray()
    keep = c.mean(0) > 1
    assert np.mean(c.var(0)[keep] > 1.2 * c.mean(0)[keep]) > 0.8


def test_target_gene_is_knocked_down(bench):
    a = bench.adata
    counts = a.layers["counts"]
    obs = a.obs
    ratios = []
    for g in bench.perturbations[:40]:
        col = a.var_names.get_loc(g)
        for ct in ("cellA", "cellB"):
            in_ct = (obs["cell_type"] == ct).to_numpy()
            kd = counts[in_ct & (obs["gene"] == g).to_numpy(), col].mean()
            ctrl = counts[in_ct & (obs["gene"] == syn.CONTROL_LABEL).to_numpy(), col].mean()
            ratios.append(kd / ctrl)
    # knock-down removes 60-90% of the target (times a per-cell efficiency), plus program effects
    assert np.median(ratios) < 0.5


# ------------------------------------------------------------------------------- ground truth


def _sets(bench) -> dict[tuple[str, str], tuple[str, ...]]:
    return syn.informative_sets(bench.ground_truth, list(bench.true_effects), bench.perturbations)


def test_ground_truth_follows_its_definition(bench):
    thr = bench.config.informative_threshold
    gt = bench.ground_truth
    assert list(gt.columns) == ["cell_type", "query", "informative"]
    assert not gt.duplicated().any() and (gt["query"] != gt["informative"]).all()
    sets = _sets(bench)
    assert len(sets) == 4 * len(bench.perturbations)
    assert sum(len(v) for v in sets.values()) == len(gt)
    idx = {g: i for i, g in enumerate(bench.perturbations)}
    keys = list(sets)
    for j in np.random.default_rng(0).choice(len(keys), 80, replace=False):
        ct, q = keys[j]
        inf = sets[ct, q]
        eff = bench.true_effects[ct].astype(np.float64)
        cos = _cos(eff, eff[idx[q]][None, :])
        cos[idx[q]] = -np.inf
        expected = {g for g in bench.perturbations if cos[idx[g]] > thr}
        assert set(inf) == expected and q not in inf
        assert list(inf) == sorted(inf, key=lambda g: -cos[idx[g]])


def test_informative_effects_are_similar_in_observed_data(bench, deltas):
    inf_cos, non_cos = [], []
    for (ct, q), inf in _sets(bench).items():
        d = deltas[ct]
        c = pd.Series(_cos(d.to_numpy(), d.loc[q].to_numpy()[None, :]), index=d.index).drop(q)
        inf_cos += list(c[list(inf)])
        non_cos += list(c.drop(list(inf)))
    inf_cos, non_cos = np.asarray(inf_cos), np.asarray(non_cos)
    assert inf_cos.mean() > 0.55 and non_cos.mean() < 0.15
    assert inf_cos.mean() - non_cos.mean() > 0.45
    # informative pairs rank above non-informative ones (AUC of the observed cosine)
    rng = np.random.default_rng(0)
    auc = np.mean(rng.choice(inf_cos, 20000) > rng.choice(non_cos, 20000))
    assert auc > 0.9


def test_informative_sets_depend_on_the_cell_type(bench):
    ov = syn.informative_overlap(bench.ground_truth, list(bench.true_effects), bench.perturbations)
    assert ov["frac_queries_differ"] > 0.5
    assert 0.1 < ov["mean_jaccard"] < 0.7
    assert 0.05 < ov["frac_empty"] < 0.5  # inactive modules: nothing informative
    jac = ov["jaccard"].to_numpy()
    assert np.allclose(np.diag(jac), 1.0) and np.allclose(jac, jac.T)
    # module states actually vary between cell types for most modules
    state = np.asarray(bench.adata.uns[syn.SIMULATION_KEY]["module_state"]).astype(str)
    varying = [len(set(state[:, m])) > 1 for m in range(state.shape[1])]
    assert np.mean(varying) > 0.5


def test_same_perturbation_differs_across_cell_types(bench):
    """Cross-cell-type differences are real, not noise: split halves agree far better."""
    a = bench.adata
    obs = a.obs
    x = a.X
    rng = np.random.default_rng(0)
    within, across = [], []
    d = {}
    for g in bench.perturbations[::3]:
        for ct in ("cellA", "cellB"):
            in_ct = (obs["cell_type"] == ct).to_numpy()
            rows = np.flatnonzero(in_ct & (obs["gene"] == g).to_numpy())
            ctrl = np.asarray(x[in_ct & (obs["gene"] == syn.CONTROL_LABEL).to_numpy()].mean(0)).ravel()
            rows = rng.permutation(rows)
            h1 = np.asarray(x[np.sort(rows[::2])].mean(0)).ravel() - ctrl
            h2 = np.asarray(x[np.sort(rows[1::2])].mean(0)).ravel() - ctrl
            within.append(_cos(h1, h2))
            d[ct] = h1
        across.append(_cos(d["cellA"], d["cellB"]))
    assert np.median(within) > np.median(across) + 0.2


def test_embedding_retrieval_is_informative_but_imperfect(bench):
    r = syn.embedding_retrieval_precision(bench.gene_table, bench.ground_truth, k=10)
    assert r["precision"] > 4 * r["random"]
    assert 0.2 < r["precision"] < 0.8
    vecs = np.stack([bench.gene_table[g] for g in bench.perturbations])
    assert vecs.shape == (len(bench.perturbations), 256) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_precision_and_overlap_closed_form():
    table = {"a": np.array([1.0, 0.0]), "b": np.array([0.9, 0.1]), "c": np.array([0.0, 1.0])}
    gt = pd.DataFrame({"cell_type": ["x", "x"], "query": ["a", "b"], "informative": ["c", "a"]})
    r = syn.embedding_retrieval_precision(table, gt, k=1)
    # a's neighbour is b (miss), b's is a (hit); c has no informative set
    assert r["precision"] == pytest.approx(0.5)
    assert r["precision_all"] == pytest.approx(1 / 3)
    assert r["random"] == pytest.approx(0.5)
    # two cell types: x {a: c, b: a}, y {a: c, b: c}; Jaccard over non-empty pairs = (1 + 0) / 2
    gt2 = pd.DataFrame(
        {"cell_type": ["x", "x", "y", "y"], "query": ["a", "b", "a", "b"], "informative": ["c", "a", "c", "c"]}
    )
    ov = syn.informative_overlap(gt2, ["x", "y"], ["a", "b", "c"])
    assert ov["mean_jaccard"] == pytest.approx(0.5)
    assert ov["frac_queries_differ"] == pytest.approx(1 / 3)
    assert ov["frac_empty"] == pytest.approx(2 / 6)
    assert ov["mean_size"] == {"x": pytest.approx(2 / 3), "y": pytest.approx(2 / 3)}


# ------------------------------------------------------------------------------- files


def test_write_benchmark_round_trip(tmp_path):
    b = syn.simulate(**SMALL, seed=2)
    paths = syn.write_benchmark(b, tmp_path / "out")
    assert paths == {
        "data": tmp_path / "out" / "perturbseq.h5ad",
        "genes": tmp_path / "out" / "genept.pkl",
        "ground_truth": tmp_path / "out" / "ground_truth.csv",
    }
    with open(paths["genes"], "rb") as fh:
        table = pickle.load(fh)
    assert isinstance(table, dict) and set(table) == set(b.gene_table)
    for g, v in table.items():
        assert isinstance(v, list) and all(type(x) is float for x in v)
        assert np.array_equal(np.asarray(v, dtype=np.float32), b.gene_table[g])
    back = ad.read_h5ad(paths["data"])
    assert back.X.dtype == np.float32
    assert (back.X != b.adata.X).nnz == 0 and (back.layers["counts"] != b.adata.layers["counts"]).nnz == 0
    assert back.obs.equals(b.adata.obs)
    for source in (paths["ground_truth"], paths["data"], back):
        assert syn.load_ground_truth(source).equals(b.ground_truth)
    csv = pd.read_csv(paths["ground_truth"])
    assert list(csv.columns) == ["cell_type", "query", "informative"] and len(csv) == len(b.ground_truth)
    # a benchmark without any informative pair still writes and reads back (empty table)
    none = syn.simulate(**SMALL, informative_threshold=0.999)
    assert none.ground_truth.empty
    p = syn.write_benchmark(none, tmp_path / "none")
    assert syn.load_ground_truth(p["data"]).empty and syn.load_ground_truth(p["ground_truth"]).empty


def test_files_read_by_the_data_layer(tmp_path):
    io = pytest.importorskip("ptrag.data.io")
    emb = pytest.importorskip("ptrag.data.embeddings")
    b = syn.simulate(**SMALL, seed=2)
    paths = syn.write_benchmark(b, tmp_path)
    data = io.read_perturbseq(paths["data"])
    groups = data.groups()
    assert len(groups) == 4 * SMALL["n_perturbations"]
    assert groups["n_cells"].min() == SMALL["cells_per_perturbation"]
    rows = np.flatnonzero(data.obs["is_control"].to_numpy())[:5]
    assert np.allclose(data.expression(rows), b.adata.X[rows].toarray(), atol=1e-6)
    table = emb.read_gene_table(paths["genes"])
    assert sorted(table.names) == sorted(b.gene_table)


def test_load_ground_truth_errors(tmp_path):
    with pytest.raises(PtragError, match="does not exist"):
        syn.load_ground_truth(tmp_path / "missing.csv")
    with pytest.raises(PtragError, match="ptrag_ground_truth"):
        syn.load_ground_truth(ad.AnnData(np.zeros((2, 2), dtype=np.float32)))
    bad = tmp_path / "bad.csv"
    bad.write_text("cell_type,query\nA,B\n")
    with pytest.raises(PtragError, match="informative"):
        syn.load_ground_truth(bad)


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"n_genes": 5}, "n_genes"),
        ({"n_cell_types": 0}, "n_cell_types"),
        ({"n_perturbations": 10}, "n_perturbations"),
        ({"embedding_noise": -1.0}, "embedding_noise"),
        ({"informative_threshold": 1.5}, "informative_threshold"),
        ({"seed": -1}, "seed"),
        ({"cells_per_perturbation": 2.5}, "cells_per_perturbation"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_invalid_options_name_the_option(override, name):
    with pytest.raises(PtragError, match=name):
        syn.simulate(**override)


# ------------------------------------------------------------------------------- CLI


CLI_SMALL = [
    "--n-perturbations",
    "24",
    "--n-modules",
    "4",
    "--n-genes",
    "60",
    "--cells-per-perturbation",
    "8",
    "--controls-per-cell-type",
    "16",
    "--embedding-dim",
    "16",
]


def test_cli_simulate_ok(tmp_path, capsys):
    out = tmp_path / "sim"
    rc = main(["simulate", "--out", str(out), "--seed", "7", *CLI_SMALL])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "perturbseq.h5ad" in printed and "cellA" in printed
    a = ad.read_h5ad(out / "perturbseq.h5ad")
    assert a.shape == (4 * (24 * 8 + 16), 60)
    assert (out / "genept.pkl").is_file() and (out / "ground_truth.csv").is_file()
    ref = syn.write_benchmark(
        syn.simulate(
            n_perturbations=24,
            n_modules=4,
            n_genes=60,
            cells_per_perturbation=8,
            controls_per_cell_type=16,
            embedding_dim=16,
            seed=7,
        ),
        tmp_path / "ref",
    )
    assert _md5(ref["data"]) == _md5(out / "perturbseq.h5ad")


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--n-genes", "5"], "--n-genes"), (["--n-perturbations", "10"], "--n-perturbations")],
)
def test_cli_simulate_bad_option(tmp_path, capsys, args, flag):
    out = tmp_path / "sim"
    rc = main(["simulate", "--out", str(out), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err
    assert not out.exists()


def test_cli_simulate_help_shows_defaults(capsys):
    rc = main(["simulate", "--help"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "default: 500" in text and "default: 120" in text and "default: 256" in text


# ------------------------------------------------------------------------------- large file


def test_write_large_h5ad_backed_matches_plain(tmp_path):
    path = syn.write_large_h5ad(tmp_path / "large.h5ad", n_cells=3000, n_genes=100, seed=1, chunk_cells=1000)
    plain = ad.read_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    assert plain.shape == backed.shape == (3000, 100)
    assert {"gene", "cell_type", "gem_group"} <= set(plain.obs.columns)
    assert (plain.obs["gene"] == syn.CONTROL_LABEL).sum() > 0
    assert sp.issparse(plain.X) and plain.X.dtype == np.float32
    for lo, hi in ((0, 1000), (999, 1001), (2500, 3000)):
        part = backed.X[lo:hi]
        part = part.toarray() if sp.issparse(part) else np.asarray(part)
        assert np.array_equal(part, plain.X[lo:hi].toarray())
    sparsity = 1.0 - plain.X.nnz / (3000 * 100)
    assert 0.75 < sparsity < 0.95
    # closed form: log1p of counts normalised to 1e4 per cell
    totals = np.asarray(np.expm1(plain.X.astype(np.float64)).sum(axis=1)).ravel()
    assert np.allclose(totals[totals > 0], 1e4, rtol=1e-4)
    backed.file.close()
    # values do not depend on the chunk size
    other = ad.read_h5ad(syn.write_large_h5ad(tmp_path / "b.h5ad", 3000, 100, seed=1, chunk_cells=3000))
    assert (other.X != plain.X).nnz == 0 and other.obs.equals(plain.obs)


def test_write_large_h5ad_rejects_bad_sizes(tmp_path):
    with pytest.raises(PtragError, match="n_cells"):
        syn.write_large_h5ad(tmp_path / "x.h5ad", n_cells=0, n_genes=10)
    assert not (tmp_path / "x.h5ad").exists()


def test_ground_truth_feeds_the_retrieval_metric(bench):
    """The long table is the format ptrag.eval.metrics scores selections against."""
    metrics = pytest.importorskip("ptrag.eval.metrics")
    genes = bench.perturbations
    emb = np.stack([bench.gene_table[g] for g in genes]).astype(np.float64)
    cos = emb @ emb.T
    np.fill_diagonal(cos, -np.inf)
    top = np.argsort(-cos, axis=1, kind="stable")[:, :10]
    log = pd.DataFrame(
        [(ct, q, genes[j], cos[i, j], 1.0) for ct in bench.true_effects for i, q in enumerate(genes) for j in top[i]],
        columns=["cell_type", "query", "candidate", "similarity", "selected_fraction"],
    )
    table = metrics.retrieval_precision_recall(log, bench.ground_truth)
    ours = syn.embedding_retrieval_precision(bench.gene_table, bench.ground_truth, k=10)
    assert table["precision_topk"].mean() == pytest.approx(ours["precision_all"])
