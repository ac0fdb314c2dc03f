"""Prepared (run-ready) files: ``ptrag prepare`` and their transparent use by ``--backed`` reads."""

from __future__ import annotations

import os
from contextlib import closing

import h5py
import numpy as np
import pytest
from _data import make_adata

from ptrag.cli import main
from ptrag.data.io import read_perturbseq
from ptrag.data.prepare_write import group_order, write_prepared
from ptrag.data.prepared import PREPARED_DIR_ENV, prepared_path
from ptrag.data.sets import SetDataset, SetSampler
from ptrag.errors import PtragError


@pytest.fixture(params=[False, True], ids=["lognorm", "counts"])
def h5(tmp_path, request):
    a = make_adata(n_cell_types=3, n_perts=5, cells=17, n_controls=23, n_genes=40, counts=request.param, seed=3)
    # interleave the cells so that no group is contiguous in the source
    a = a[np.random.default_rng(0).permutation(a.n_obs)].copy()
    a.obs.loc[a.obs_names[:4], "gene"] = "P0+P1"  # combination cells: kept in the file, excluded
    path = tmp_path / "x.h5ad"
    a.write_h5ad(path)
    return path


def _prepare(path, genes=(), **kw):
    with closing(read_perturbseq(path, backed=True)) as d:
        return write_prepared(d, prepared_path(path), genes, **kw)


def test_prepared_reads_equal_source_reads_for_any_rows_and_genes(h5):
    source = read_perturbseq(h5, backed=True)
    rows = np.random.default_rng(1).integers(0, source.n_cells, 300)  # any order, repeats
    genes = [f"G{i}" for i in (7, 3, 39, 0, 21)]
    ref_all, ref_sub = source.expression(rows), source.expression(rows, genes)
    source.close()
    # small buckets and chunks: several buckets, rows of one chunk spread over them
    _prepare(h5, bucket_mib=0, chunk=13)
    d = read_perturbseq(h5, backed=True)
    assert d._prepared is not None
    np.testing.assert_array_equal(d.expression(rows), ref_all)
    np.testing.assert_array_equal(d.expression(rows, genes), ref_sub)
    d.close()


def test_prepared_file_is_ordered_by_group_and_readable_as_csr(h5):
    _prepare(h5)
    d = read_perturbseq(h5, backed=True)
    order = group_order(d)
    with h5py.File(prepared_path(h5)) as f:
        position = f["position"][:]
        indptr = f["X/indptr"][:]
        assert f["X"].attrs["encoding-type"] == "csr_matrix" and f["X/indices"].dtype == np.uint16
        assert f["X/data"].chunks is None  # contiguous: memory-mappable
    np.testing.assert_array_equal(position[order], np.arange(d.n_cells))
    assert indptr[-1] == sum(np.count_nonzero(d.expression(np.arange(d.n_cells)), axis=1))
    # every group (and every cell type's controls) occupies one contiguous run of rows
    obs = d.obs.iloc[order]
    key = (
        np.where(obs["is_control"], "ctrl", obs["perturbation"].astype(str))
        + "|"
        + obs["cell_type"].astype(str).to_numpy()
    )
    changes = np.flatnonzero(key[1:] != key[:-1])
    assert len(changes) + 1 == len(set(key))
    assert obs["is_control"].to_numpy()[: int(obs["is_control"].sum())].all()  # controls first
    d.close()


def test_a_run_gene_subset_is_read_from_the_prepared_file_other_genes_from_the_source(h5):
    genes = ["G5", "G1", "G30"]
    _prepare(h5, genes)
    d = read_perturbseq(h5, backed=True)
    assert d._prepared.genes == genes
    rows = np.arange(0, d.n_cells, 3)
    fast = d.expression(rows, ["G30", "G5"])  # a subset of the prepared genes, reordered
    slow = d.expression(rows, ["G30", "G2"])  # G2 is not prepared: read from the source
    d.close()
    ref = read_perturbseq(h5)
    np.testing.assert_array_equal(fast, ref.expression(rows, ["G30", "G5"]))
    np.testing.assert_allclose(slow, ref.expression(rows, ["G30", "G2"]), rtol=1e-6)


def test_training_sets_from_the_prepared_file_equal_in_memory_sets(h5):
    _prepare(h5)
    mem, disk = read_perturbseq(h5), read_perturbseq(h5, backed=True)
    genes = ["G0", "G9", "G17", "G33"]
    perts = {p: i for i, p in enumerate(sorted(mem.groups()["perturbation"].unique()))}
    plan = SetSampler(mem.obs, mem.groups(), 8, seed=0).plan()
    a, b = SetDataset(mem, genes, perts).__getitems__(plan), SetDataset(disk, genes, perts).__getitems__(plan)
    for x, y in zip(a, b, strict=True):
        for k in ("ctrl_expr", "pert_expr"):
            np.testing.assert_allclose(x[k].numpy(), y[k].numpy(), rtol=1e-6, atol=1e-7)
    disk.close()


def test_a_stale_prepared_file_is_ignored_with_a_warning(h5, ptrag_log):
    _prepare(h5)
    st = os.stat(h5)
    os.utime(h5, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the source "changed"
    d = read_perturbseq(h5, backed=True)
    assert d._prepared is None
    assert "changed since it was prepared" in ptrag_log.text and "ptrag prepare" in ptrag_log.text
    d.close()


def test_prepared_dir_from_the_environment(h5, tmp_path, monkeypatch):
    other = tmp_path / "cache"
    other.mkdir()
    with closing(read_perturbseq(h5, backed=True)) as d:
        write_prepared(d, prepared_path(h5, other))
    assert read_perturbseq(h5, backed=True)._prepared is None
    monkeypatch.setenv(PREPARED_DIR_ENV, str(other))
    assert read_perturbseq(h5, backed=True)._prepared is not None


def test_prepare_refuses_genes_absent_from_the_file(h5):
    with closing(read_perturbseq(h5, backed=True)) as d, pytest.raises(PtragError, match="NOPE"):
        write_prepared(d, prepared_path(h5), ["G1", "NOPE"])
    assert not prepared_path(h5).exists()


def test_prepare_cli_with_a_run_gene_list(h5, tmp_path, capsys):
    (tmp_path / "genes.txt").write_text("G4\nG2\n")
    assert main(["prepare", "--data", str(h5), "--gene-list", str(tmp_path / "genes.txt")]) == 0
    assert prepared_path(h5).exists() and "x 2 genes" in " ".join(capsys.readouterr().out.split())
    assert read_perturbseq(h5, backed=True)._prepared.genes == ["G4", "G2"]
    (tmp_path / "bad.txt").write_text("G4\nXX\n")
    assert main(["prepare", "--data", str(h5), "--gene-list", str(tmp_path / "bad.txt")]) == 2
    err = capsys.readouterr().err
    assert "XX" in err and "Traceback" not in err


def test_reads_stay_equal_when_pages_are_released_after_every_gather(h5):
    from ptrag.data.prepared import PreparedMatrix

    _prepare(h5)
    d = read_perturbseq(h5, backed=True)
    rows = np.random.default_rng(2).integers(0, d.n_cells, 1500)  # several gathers of 512 rows
    ref = d.expression(rows)
    d._prepared.close()
    d._prepared, d._prepared_maps = PreparedMatrix(prepared_path(h5), touch_budget_mib=0), {}
    np.testing.assert_array_equal(d.expression(rows), ref)
    d.close()
