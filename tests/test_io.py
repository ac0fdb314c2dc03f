"""Reading Perturb-seq files: columns, controls, counts detection, HVGs, backed mode, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from _data import make_adata

from ptrag.data.hvg import select_hvg
from ptrag.data.io import ColumnSpec, detect_counts, read_perturbseq
from ptrag.errors import PtragError


@pytest.fixture()
def h5(tmp_path):
    p = tmp_path / "d.h5ad"
    make_adata().write_h5ad(p)
    return p


def test_reads_defaults_and_groups(h5):
    d = read_perturbseq(h5)
    g = d.groups()
    assert len(g) == 2 * 6 and (g["n_cells"] == 20).all()
    assert d.control_counts().to_dict() == {"CT0": 40, "CT1": 40}
    assert not d.is_counts
    assert d.spec.batch_col == "gem_group"


def test_expression_rows_in_given_order_and_backed_equal(h5):
    d = read_perturbseq(h5)
    b = read_perturbseq(h5, backed=True)
    rows = np.array([7, 3, 3, 0, 100])
    e = d.expression(rows, ["G5", "G1"])
    full = d.expression(np.arange(d.n_cells))
    np.testing.assert_array_equal(e, full[rows][:, [5, 1]])
    np.testing.assert_array_equal(b.expression(rows, ["G5", "G1"]), e)


def test_counts_detected_and_normalised_like_scanpy(tmp_path):
    a = make_adata(counts=True)
    p = tmp_path / "c.h5ad"
    a.write_h5ad(p)
    d = read_perturbseq(p)
    assert d.is_counts
    ref = a.copy()
    sc.pp.normalize_total(ref)
    sc.pp.log1p(ref)
    rows = np.arange(0, a.n_obs, 7)
    np.testing.assert_allclose(d.expression(rows), ref.X[rows].toarray(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        read_perturbseq(p, backed=True).expression(rows), ref.X[rows].toarray(), rtol=1e-5, atol=1e-5
    )


def test_detect_counts_rules():
    x = np.array([[0, 2, 5], [1, 0, 3]], dtype=np.float32)
    assert detect_counts(x, {})
    assert not detect_counts(x, {"log1p": {}})
    assert not detect_counts(np.log1p(x), {})


def test_hvg_on_training_rows_only(h5):
    d = read_perturbseq(h5)
    genes = select_hvg(d, np.arange(d.n_cells), n_top=10)
    assert len(genes) == 10 and genes == [g for g in d.var_names if g in genes]
    assert select_hvg(d, np.arange(10), n_top=1000) == d.var_names


def test_single_cell_type_without_column(tmp_path):
    a = make_adata(n_cell_types=1)
    del a.obs["cell_type"]
    p = tmp_path / "one.h5ad"
    a.write_h5ad(p)
    d = read_perturbseq(p)
    assert d.cell_types == ["all"]


def test_combination_cells_excluded(tmp_path):
    a = make_adata()
    a.obs["gene"] = a.obs["gene"].astype(str)
    a.obs.iloc[40:45, 0] = "P0+P1"
    a.obs.iloc[45:50, 0] = "P2+ctrl"
    p = tmp_path / "combo.h5ad"
    a.write_h5ad(p)
    d = read_perturbseq(p)
    assert int((~d.obs["keep"]).sum()) == 5
    assert (d.obs["perturbation"].iloc[45:50] == "P2").all()


@pytest.mark.parametrize(
    "spec, needle",
    [
        (ColumnSpec(pert_col="target_gene"), "'target_gene'"),
        (ColumnSpec(control="ctrl"), "control label 'ctrl'"),
        (ColumnSpec(cell_type_col="cell_line"), "'cell_line'"),
        (ColumnSpec(batch_col="plate"), "'plate'"),
        (ColumnSpec(layer="counts"), "layer 'counts'"),
        (ColumnSpec(obsm_key="X_state"), "obsm key 'X_state'"),
    ],
)
def test_bad_columns(h5, spec, needle):
    with pytest.raises(PtragError, match=needle):
        read_perturbseq(h5, spec)


def test_suggests_alternative_columns(tmp_path):
    a = make_adata(pert_col="perturbation", cell_type_col="cell_line", control="control")
    p = tmp_path / "alt.h5ad"
    a.write_h5ad(p)
    with pytest.raises(PtragError, match="pass --pert-col perturbation"):
        read_perturbseq(p)
    with pytest.raises(PtragError, match="pass --cell-type-col cell_line"):
        read_perturbseq(p, ColumnSpec(pert_col="perturbation"))
    with pytest.raises(PtragError, match="pass --control control"):
        read_perturbseq(p, ColumnSpec(pert_col="perturbation", cell_type_col="cell_line"))


def test_bad_files(tmp_path):
    with pytest.raises(PtragError, match="not found"):
        read_perturbseq(tmp_path / "nope.h5ad")
    bad = tmp_path / "x.h5ad"
    bad.write_text("gene,cell\n")
    with pytest.raises(PtragError, match=r"not an \.h5ad"):
        read_perturbseq(bad)


@pytest.mark.parametrize("value, needle", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (-1.0, "negative")])
def test_bad_values(tmp_path, value, needle):
    a = make_adata()
    x = a.X.toarray()
    x[3, 2] = value
    a.X = x
    p = tmp_path / "v.h5ad"
    a.write_h5ad(p)
    with pytest.raises(PtragError, match=needle):
        read_perturbseq(p)
    with pytest.raises(PtragError, match=needle):
        read_perturbseq(p, backed=True)


def test_devel_h5ad_loads_with_its_columns(shared_data):
    d = read_perturbseq(
        shared_data / "perturbench" / "devel.h5ad", ColumnSpec(pert_col="perturbation", control="control")
    )
    assert d.cell_types == ["A172", "T98G", "U87MG", "k562"]
    g = d.groups()
    shared = set.intersection(*(set(s["perturbation"]) for _, s in g.groupby("cell_type")))
    assert len(shared) == 9


@pytest.mark.parametrize("counts", [False, True])
def test_in_memory_gene_subset_read_equals_the_backed_read(tmp_path, counts):
    import scipy.sparse as sp

    a = make_adata(counts=counts, n_genes=30)
    a.X = sp.csr_matrix(a.X)
    a.write_h5ad(tmp_path / "x.h5ad")
    mem, backed = read_perturbseq(tmp_path / "x.h5ad"), read_perturbseq(tmp_path / "x.h5ad", backed=True)
    genes = [a.var_names[i] for i in (7, 3, 29, 0, 3)]  # permuted, one repeated
    rows = np.array([5, 2, 5, 40, 0, 2])  # unsorted, repeated
    np.testing.assert_allclose(mem.expression(rows, genes), backed.expression(rows, genes), rtol=1e-6)
    cached = mem._columns_cache[1]
    mem.expression(rows[:2], genes)
    assert mem._columns_cache[1] is cached  # the restricted matrix is built once per gene list
    np.testing.assert_allclose(mem.expression(rows), backed.expression(rows), rtol=1e-6)  # all genes
