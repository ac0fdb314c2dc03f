"""Tests of ptrag.data.embeddings: gene tables, perturbation vectors, one-hot, combinations."""

from __future__ import annotations

import gzip
import logging
import pickle

import numpy as np
import pandas as pd
import pytest

from ptrag.data.embeddings import (
    GeneTable,
    concat_gene_tables,
    coverage,
    drop_combinations,
    l2_normalize,
    load_gene_tables,
    one_hot,
    perturbation_vectors,
    read_aliases,
    read_gene_table,
    split_combination,
    write_gene_table,
)
from ptrag.errors import PtragError

NAMES = ["TP53", "MYC", "ctrl", "KRAS", "Brca1"]


@pytest.fixture
def table() -> GeneTable:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((5, 6)).astype(np.float32)
    v[2] = 0.0  # GenePT's all-zero control row
    return GeneTable(list(NAMES), v, "mem")


def _write_csv(path, rows, header=True, sep=","):
    dim = max(len(r) - 1 for r in rows)
    lines = []
    if header:
        lines.append(sep.join([""] + [str(i) for i in range(dim)]))
    lines += [sep.join(str(x) for x in r) for r in rows]
    text = "\n".join(lines) + "\n"
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


# ------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", ["t.pkl", "t.pickle", "t.csv", "t.csv.gz", "t.tsv", "t.tsv.gz", "t.parquet", "t.npz"])
def test_round_trip_every_format(tmp_path, table, name):
    path = write_gene_table(table, tmp_path / name)
    back = read_gene_table(path)
    assert back.names == table.names
    np.testing.assert_array_equal(back.vectors, table.vectors)
    assert back.dim == 6 and len(back) == 5
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temporary file"


def test_genept_style_files_made_by_hand(tmp_path):
    rng = np.random.default_rng(1)
    vecs = {g: rng.standard_normal(4).tolist() for g in ["A1BG", "AAAS", "ZNF1"]}
    # GenePT pickle: dict symbol -> list of floats
    with open(tmp_path / "genept.pickle", "wb") as fh:
        pickle.dump(vecs, fh)
    t = read_gene_table(tmp_path / "genept.pickle")
    assert t.names == list(vecs)
    np.testing.assert_allclose(t.vectors, np.array(list(vecs.values())), rtol=1e-6)
    # numpy arrays as values are accepted too, with any pickle protocol
    for protocol in (2, 4, 5):
        with open(tmp_path / "np.pkl", "wb") as fh:
            pickle.dump({k: np.asarray(v) for k, v in vecs.items()}, fh, protocol=protocol)
        np.testing.assert_allclose(read_gene_table(tmp_path / "np.pkl").vectors, t.vectors, rtol=1e-6)
    # headerless CSV and TSV (GenePT CSV with and without the ,0,1,.. header)
    rows = [[g, *v] for g, v in vecs.items()]
    for header in (True, False):
        for sep, ext in ((",", "csv"), ("\t", "tsv")):
            p = _write_csv(tmp_path / f"h{header}.{ext}", rows, header=header, sep=sep)
            back = read_gene_table(p)
            assert back.names == list(vecs)
            np.testing.assert_allclose(back.vectors, t.vectors, rtol=1e-6)
    # parquet with the symbols as index; npz with alternative keys
    df = pd.DataFrame(t.vectors, index=t.names, columns=[f"d{i}" for i in range(4)])
    df.to_parquet(tmp_path / "idx.parquet")
    assert read_gene_table(tmp_path / "idx.parquet").names == t.names
    pd.DataFrame({"symbol": t.names, "embedding": [list(v) for v in t.vectors]}).to_parquet(tmp_path / "list.parquet")
    np.testing.assert_allclose(read_gene_table(tmp_path / "list.parquet").vectors, t.vectors)
    np.savez(tmp_path / "alt.npz", genes=np.array(t.names), embeddings=t.vectors)
    assert read_gene_table(tmp_path / "alt.npz").names == t.names


def test_shared_genept_sample(shared_data):
    t = read_gene_table(shared_data / "genes" / "genept_adamson_sample.csv.gz")
    assert (len(t), t.dim) == (87, 1536)
    norms = np.linalg.norm(t.vectors, axis=1)
    assert norms[t.names.index("ctrl")] == 0.0
    np.testing.assert_allclose(np.delete(norms, t.names.index("ctrl")), 1.0, atol=1e-5)
    vecs, kept = perturbation_vectors(["HSPA5", "ctrl"], t, missing="drop")
    assert kept == ["HSPA5"] and vecs.shape == (1, 1536)


# ---------------------------------------------------------------------------- bad input
def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(PtragError, match=r"not found: .*nope\.pkl"):
        read_gene_table(tmp_path / "nope.pkl")
    (tmp_path / "t.h5").write_bytes(b"x")
    with pytest.raises(PtragError, match=r"unknown gene-table format '\.h5'.*\.pkl.*\.parquet.*\.npz"):
        read_gene_table(tmp_path / "t.h5")


def test_row_of_wrong_length(tmp_path):
    rows = [["A", 1, 2, 3], ["B", 4, 5, 6], ["BAD", 7, 8], ["C", 1, 1, 1]]
    for name in ("short.csv", "short.csv.gz"):
        p = _write_csv(tmp_path / name, rows)
        with pytest.raises(PtragError, match=r"row 4 \(gene 'BAD'\) has 2 values; expected 3"):
            read_gene_table(p)
    long_rows = [["A", 1, 2, 3], ["LONG", 4, 5, 6, 7], ["C", 1, 1, 1]]
    p = _write_csv(tmp_path / "long.csv", long_rows, header=False)
    with pytest.raises(PtragError, match=r"row 2 \(gene 'LONG'\) has 4 values; expected 3"):
        read_gene_table(p)
    with open(tmp_path / "bad.pkl", "wb") as fh:
        pickle.dump({"A": [1.0, 2.0], "B": [1.0]}, fh)
    with pytest.raises(PtragError, match=r"gene 'B' \(row 2\) has a vector of length 1; expected 2"):
        read_gene_table(tmp_path / "bad.pkl")


def test_nan_and_inf_name_the_gene(tmp_path):
    p = _write_csv(tmp_path / "nan.csv", [["A", 1, 2], ["NANGENE", "nan", 1], ["C", 0, 1]])
    with pytest.raises(PtragError, match="NANGENE"):
        read_gene_table(p)
    v = np.ones((3, 2), dtype=np.float32)
    v[1, 0] = np.inf
    np.savez(tmp_path / "inf.npz", names=np.array(["A", "INFGENE", "C"]), vectors=v)
    with pytest.raises(PtragError, match=r"NaN or Inf.*'INFGENE'"):
        read_gene_table(tmp_path / "inf.npz")
    df = pd.DataFrame({"gene": ["A", "PQNAN"], "0": [1.0, np.nan]})
    df.to_parquet(tmp_path / "nan.parquet", index=False)
    with pytest.raises(PtragError, match="PQNAN"):
        read_gene_table(tmp_path / "nan.parquet")


def test_duplicates_and_empty(tmp_path):
    p = _write_csv(tmp_path / "dup.csv", [["A", 1, 2], ["a ", 1, 3]])
    with pytest.raises(PtragError, match=r"gene 'A' appears 2 times .* different vectors"):
        read_gene_table(p)
    p = _write_csv(tmp_path / "same.csv", [["A", 1, 2], ["B", 0, 1], ["A", 1, 2]])
    assert read_gene_table(p).names == ["A", "B"]
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(PtragError, match="empty"):
        read_gene_table(tmp_path / "empty.csv")
    with open(tmp_path / "empty.pkl", "wb") as fh:
        pickle.dump({}, fh)
    with pytest.raises(PtragError, match="empty"):
        read_gene_table(tmp_path / "empty.pkl")


def test_pickle_of_arbitrary_objects_is_refused(tmp_path):
    with open(tmp_path / "df.pkl", "wb") as fh:
        pickle.dump(pd.DataFrame({"a": [1.0]}), fh)
    with pytest.raises(PtragError, match="not a GenePT-style pickle"):
        read_gene_table(tmp_path / "df.pkl")


# ------------------------------------------------------------------- symbols, aliases
def test_symbol_normalisation_and_aliases(tmp_path, table):
    assert list(table.rows([" tp53", "BRCA1", "myc "])) == [0, 4, 1]
    assert list(table.rows(["ctrl", "NOPE"])) == [-1, -1]  # zero row counts as missing
    assert table.names[4] == "Brca1"  # display spelling kept
    alias_csv = tmp_path / "aliases.csv"
    alias_csv.write_text("alias,symbol\np53,TP53\nc-myc,myc\n")
    assert read_aliases(alias_csv) == {"P53": "TP53", "C-MYC": "MYC"}
    p = write_gene_table(table, tmp_path / "t.parquet")
    t = read_gene_table(p, aliases=alias_csv)
    np.testing.assert_array_equal(t.lookup(["P53", "c-Myc"]), table.vectors[[0, 1]])
    t2 = load_gene_tables([p], normalize=False, aliases={"p53": "tp53"})
    np.testing.assert_array_equal(t2.lookup(["p53"]), table.vectors[[0]])
    (tmp_path / "three.csv").write_text("a,b,c\n")
    with pytest.raises(PtragError, match="exactly two"):
        read_aliases(tmp_path / "three.csv")


def test_l2_normalisation(tmp_path, table):
    p = write_gene_table(table, tmp_path / "t.npz")
    t = read_gene_table(p, normalize=True)
    norms = np.linalg.norm(t.vectors, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 3, 4]], 1.0, atol=1e-6)
    assert norms[2] == 0.0
    np.testing.assert_allclose(t.vectors[0], table.vectors[0] / np.linalg.norm(table.vectors[0]), rtol=1e-6)
    np.testing.assert_array_equal(l2_normalize(np.zeros((2, 3))), np.zeros((2, 3)))


def test_concatenation_of_two_tables(tmp_path):
    a = GeneTable(["G1", "G2", "ctrl"], np.array([[3, 4], [0, 2], [0, 0]], np.float32), "a")
    b = GeneTable(["g2", "G3", "G1"], np.array([[1, 0, 0], [0, 0, 5], [0, 0, 0]], np.float32), "b")
    pa = write_gene_table(a, tmp_path / "a.csv")
    pb = write_gene_table(b, tmp_path / "b.parquet")
    t = load_gene_tables([pa, pb], normalize=True)
    assert t.names == ["G1", "G2", "G3"] and t.dim == 5  # ctrl: zero everywhere -> absent
    expected = np.array(
        [[0.6, 0.8, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=np.float32
    )  # G1 is zero in b -> zeros there; G3 absent from a -> zeros there
    np.testing.assert_allclose(t.vectors, expected, atol=1e-6)
    _, kept = perturbation_vectors(["G3", "ctrl"], t, missing="drop")
    assert kept == ["G3"]
    raw = concat_gene_tables([a, b])
    np.testing.assert_array_equal(raw.vectors[1], [0, 2, 1, 0, 0])
    assert t.source.endswith("b.parquet") and "+" in t.source
    with pytest.raises(PtragError, match="no gene table"):
        load_gene_tables([])


# ------------------------------------------------------------------ perturbation codes
def test_missing_perturbation_error_lists_genes(table):
    with pytest.raises(PtragError) as exc:
        perturbation_vectors(["TP53", "NOPE1", "ctrl"], table, missing="error")
    msg = str(exc.value)
    assert "2 perturbed genes" in msg and "NOPE1" in msg and "ctrl (all-zero row)" in msg
    assert "--missing-genes drop" in msg and "alias" in msg
    many = [f"X{i}" for i in range(12)]
    with pytest.raises(PtragError, match=r"12 perturbed genes.*X9, \.\.\. \(12 in all\)"):
        perturbation_vectors(many, table)
    with pytest.raises(PtragError, match="invalid value 'skip' for --missing-genes"):
        perturbation_vectors(["TP53"], table, missing="skip")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_missing_perturbation_drop_warns_with_cells(table):
    # a handler on the "ptrag" logger itself: the CLI may have turned propagation off
    handler = _Records()
    logger = logging.getLogger("ptrag")
    logger.addHandler(handler)
    try:
        vecs, kept = perturbation_vectors(
            ["KRAS", "NOPE1", "tp53", "NOPE2"],
            table,
            missing="drop",
            cell_counts={"NOPE1": 30, "NOPE2": 12, "KRAS": 99},
        )
    finally:
        logger.removeHandler(handler)
    assert kept == ["KRAS", "tp53"]
    np.testing.assert_array_equal(vecs, table.vectors[[3, 0]])
    rec = [r for r in handler.records if r.levelno == logging.WARNING]
    assert len(rec) == 1
    text = rec[0].getMessage()
    assert "dropping 2 perturbations with 42 cells" in text and "NOPE1 (30 cells), NOPE2 (12 cells)" in text


def test_one_hot():
    np.testing.assert_array_equal(one_hot(["A", "B", "C"]), np.eye(3, dtype=np.float32))
    oh = one_hot(["B", "A", "B"], categories=["A", "B", "C"])
    np.testing.assert_array_equal(oh, [[0, 1, 0], [1, 0, 0], [0, 1, 0]])
    assert oh.dtype == np.float32
    with pytest.raises(PtragError, match="not among the one-hot categories"):
        one_hot(["Z"], categories=["A"])


def test_split_and_drop_combinations():
    assert split_combination("A+B", "ctrl") == ["A", "B"]
    assert split_combination("A+ctrl", "ctrl") == ["A"]
    assert split_combination("ctrl+A", "non-targeting") == ["A"]
    assert split_combination("A+non-targeting", "non-targeting") == ["A"]
    assert split_combination("non-targeting", "non-targeting") == []
    assert split_combination(" TP53 ", "ctrl") == ["TP53"]
    labels = pd.Series(["A", "A+B", "ctrl", "A+ctrl", "C+D", "A+B", "C+D", "B"])
    mask, n_cells, n_perts = drop_combinations(labels, "ctrl")
    assert mask.tolist() == [False, True, False, False, True, True, True, False]
    assert (n_cells, n_perts) == (4, 2)


def test_coverage_counts(table):
    groups = pd.DataFrame(
        {
            "cell_type": ["k", "k", "k", "j"],
            "perturbation": ["TP53", "NOPE", "TP53+MYC", "MYC"],
            "n_cells": [10, 20, 30, 40],
        }
    )
    other = GeneTable(["NOPE"], np.ones((1, 2), np.float32), "o")
    cov = coverage(groups, {"t": table, "o": other}, "ctrl")
    assert cov["t"].tolist() == [True, False, True, True]
    assert cov["o"].tolist() == [False, True, False, False]
    assert cov["any_table"].tolist() == [True, True, True, True]
    assert cov["combination"].tolist() == [False, False, True, False]
