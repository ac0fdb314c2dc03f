"""The AnnData-first Python API: every entry point takes an in-memory AnnData as well as a path,
and the README's Python example runs as it is written."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _data import make_adata, write_gene_table

import ptrag
from ptrag.data.io import read_perturbseq
from ptrag.errors import PtragError

README = Path(__file__).resolve().parents[1] / "README.md"

#: Training options of a seconds-long run (as ``_data.TINY_TRAIN``), for ``resolve_config``.
TINY = dict(batch_size=4, cell_set_size=8, hidden=16, n_heads=2, ffn=32, n_genes=20, topk=3, max_steps=4, val_every=2)


def _same_data(a, b) -> None:
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.var_names == b.var_names and a.spec == b.spec
    assert a.is_counts == b.is_counts and a.target_sum == b.target_sum
    rows = np.arange(a.n_cells)
    np.testing.assert_array_equal(a.expression(rows), b.expression(rows))
    pd.testing.assert_frame_equal(a.groups(), b.groups())


@pytest.mark.parametrize("counts", [False, True])
def test_reading_an_anndata_equals_reading_its_file(tmp_path, counts):
    adata = make_adata(counts=counts)
    adata.write_h5ad(tmp_path / "d.h5ad")
    from_memory = read_perturbseq(adata)
    _same_data(from_memory, read_perturbseq(tmp_path / "d.h5ad"))
    assert str(from_memory.path) == f"<AnnData {adata.n_obs} x {adata.n_vars}>"
    assert "<AnnData" in repr(from_memory)
    # a subset view reads like the copy written to disk
    view = adata[adata.obs["cell_type"] == "CT0"]
    view.copy().write_h5ad(tmp_path / "ct0.h5ad")
    _same_data(read_perturbseq(view), read_perturbseq(tmp_path / "ct0.h5ad"))


def test_backed_with_an_anndata(tmp_path, ptrag_log):
    adata = make_adata()
    data = read_perturbseq(adata, backed=True)
    assert not data.backed and "backed=True ignored" in ptrag_log.text
    adata.write_h5ad(tmp_path / "d.h5ad")
    backed = ad.read_h5ad(tmp_path / "d.h5ad", backed="r")  # streamed from its own file
    data = read_perturbseq(backed)
    assert data.backed and data.path == tmp_path / "d.h5ad"
    _same_data(data, read_perturbseq(adata))
    data.close()
    backed.file.close()


def test_bad_input_names_what_is_wrong():
    with pytest.raises(PtragError, match=r"expected an anndata\.AnnData or the path of an \.h5ad file, got DataFrame"):
        read_perturbseq(pd.DataFrame({"gene": ["a"]}))
    adata = make_adata(pert_col="target")
    with pytest.raises(PtragError, match=r"<AnnData 320 x 30>: obs column 'gene' \(perturbation\) not found"):
        read_perturbseq(adata)
    with pytest.raises(PtragError, match="<AnnData 320 x 30>: control label 'ctrl' does not occur"):
        read_perturbseq(make_adata(), ptrag.ColumnSpec(control="ctrl"))
    with pytest.raises(PtragError, match=r"a prediction must be an \.h5ad path, an AnnData or a ptrag Prediction"):
        from ptrag.eval.inputs import read_predictions

        read_predictions(42, ["G0"])


def test_splits_take_the_data(tmp_path):
    adata = make_adata()
    adata.write_h5ad(tmp_path / "d.h5ad")
    expected = ptrag.fewshot_split(read_perturbseq(tmp_path / "d.h5ad").groups(), "CT1", seed=3).table
    for source in (adata, read_perturbseq(adata), tmp_path / "d.h5ad"):
        pd.testing.assert_frame_equal(ptrag.fewshot_split(source, "CT1", seed=3).table, expected)
    with pytest.raises(PtragError, match="no column 'cell_type'"):
        ptrag.fewshot_split(pd.DataFrame({"perturbation": ["P0"]}), "CT1")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same tiny pt_rag run trained from an AnnData and from its file."""
    d = tmp_path_factory.mktemp("anndata_api")
    adata = make_adata(n_perts=8, cells=16)
    adata.write_h5ad(d / "d.h5ad")
    write_gene_table(d / "genept.pkl")
    cfg = ptrag.resolve_config({"model": "pt_rag", "target_cell_type": "CT1", **TINY})
    for name, source in (("memory", adata), ("file", d / "d.h5ad")):
        ptrag.fit(cfg, source, d / name, gene_tables=[d / "genept.pkl"], progress=False)
    return d, adata


def test_training_and_prediction_on_an_anndata_match_the_file(two_runs):
    d, adata = two_runs
    assert (d / "memory" / "split.toml").read_text() == (d / "file" / "split.toml").read_text()
    assert (d / "memory" / "genes.txt").read_text() == (d / "file" / "genes.txt").read_text()
    from_memory = ptrag.predict(d / "memory", adata)
    from_file = ptrag.predict(d / "file", d / "d.h5ad")
    assert isinstance(from_memory.adata, ad.AnnData)
    np.testing.assert_array_equal(from_memory.adata.X, from_file.adata.X)  # bit-identical
    pd.testing.assert_frame_equal(from_memory.adata.obs, from_file.adata.obs)
    pd.testing.assert_frame_equal(from_memory.retrieval, from_file.retrieval)
    base_memory = ptrag.predict_baselines(d / "memory", adata, ["context_mean"])["context_mean"]
    base_file = ptrag.predict_baselines(d / "file", d / "d.h5ad", ["context_mean"])["context_mean"]
    np.testing.assert_allclose(base_memory.adata.X, base_file.adata.X, rtol=1e-6, atol=1e-6)


def test_evaluate_takes_anndata_predictions_and_data(two_runs, tmp_path):
    d, adata = two_runs
    run = d / "file"
    pred = ptrag.predict(run, adata)
    pred.write(tmp_path / "pred.h5ad")
    on_files = ptrag.evaluate([tmp_path / "pred.h5ad"], d / "d.h5ad", run, tmp_path / "eval")
    for preds in ([pred], [pred.adata]):
        in_memory = ptrag.evaluate(preds, adata, run)  # no out folder: nothing written
        pd.testing.assert_frame_equal(in_memory, on_files)
    info = (tmp_path / "eval" / "evaluation.json").read_text()
    assert "pred.h5ad" in info
    ptrag.evaluate([pred.adata], adata, run, tmp_path / "eval2")
    assert "<AnnData" in (tmp_path / "eval2" / "evaluation.json").read_text()


def test_an_experiment_writes_an_anndata_once_and_uses_its_path(tmp_path):
    from ptrag.experiments.cross_celltype_inputs import CrossCellTypePlan, load_inputs

    adata = make_adata()
    out = tmp_path / "exp"
    plan = CrossCellTypePlan(out, adata, (), None, ["state"], (0,), 0.3, "cpu", None, ptrag.ColumnSpec())
    data = load_inputs(plan, None)
    assert plan.data_path == out / "data" / "input.h5ad" and plan.targets == ["CT0", "CT1"]
    _same_data(read_perturbseq(plan.data_path), data)
    # bad input found before the first training leaves no folder behind
    plan = CrossCellTypePlan(tmp_path / "bad", adata, (), None, ["state"], (0,), 0.3, "cpu", None, ptrag.ColumnSpec())
    with pytest.raises(PtragError, match="'CT9' is not a cell type of <AnnData 320 x 30>"):
        load_inputs(plan, ["CT9"])
    assert not (tmp_path / "bad").exists()


def _readme_example() -> str:
    text = README.read_text()
    m = re.search(r"<!-- python-example:begin -->\s*```python\n(.*?)```\s*<!-- python-example:end -->", text, re.S)
    assert m, "README.md has no python-example block between its markers"
    return m.group(1)


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    from ptrag.data.synthetic import simulate, write_benchmark

    bench = simulate(
        n_cell_types=2,
        n_perturbations=16,
        n_genes=40,
        n_modules=4,
        cells_per_perturbation=8,
        controls_per_cell_type=40,
        embedding_dim=16,
    )
    write_benchmark(bench, tmp_path)  # perturbseq.h5ad and genept.pkl, the names the example reads
    monkeypatch.chdir(tmp_path)
    code = _readme_example()
    tiny = '"data": spec.to_dict()}'
    assert tiny in code, "the README example's training options changed: update this test"
    code = code.replace(tiny, '"data": spec.to_dict(), **TINY}')
    namespace = {"TINY": TINY, "__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)  # the README's own code
    assert isinstance(namespace["pred_adata"], ad.AnnData)
    metrics = namespace["metrics"]
    assert {"pt_rag", "context_mean", "control"} <= set(metrics["model"])
    written = ("split.toml", "runs/pt_rag/genes.txt", "pred/pt_rag.h5ad", "eval/summary.md", "pt_rag_vs_baselines.png")
    for name in written:
        assert (tmp_path / name).is_file(), name
