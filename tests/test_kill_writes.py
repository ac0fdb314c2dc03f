"""`ptrag predict` and `ptrag evaluate` killed (SIGKILL) in the middle of writing leave no output
file; the next run writes it whole and clears the killed writer's temporary."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from _data import TINY_TRAIN, make_adata

from ptrag.cli import main

# Kill the process from inside the writer: after the temporary file is (partly) written,
# before anything is renamed into place.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import anndata, pandas

    def killing(orig):
        def write(self, path, *a, **k):
            orig(self, path, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        return write

    anndata.AnnData.write_h5ad = killing(anndata.AnnData.write_h5ad)
    pandas.DataFrame.to_parquet = killing(pandas.DataFrame.to_parquet)
    from ptrag.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill")
    make_adata().write_h5ad(d / "d.h5ad")
    args = ["train", "--data", str(d / "d.h5ad"), "--model", "state", "--target-cell-type", "CT1"]
    assert main([*args, "--out", str(d / "run"), *TINY_TRAIN]) == 0
    return d


def _killed(args):
    p = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr  # SIGKILL


def _visible(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_killed_predict_leaves_no_output_and_the_rerun_cleans_up(run, tmp_path):
    out = tmp_path / "pred.h5ad"
    args = ["predict", "--run", str(run / "run"), "--data", str(run / "d.h5ad"), "--out", str(out)]
    _killed(args)
    assert _visible(tmp_path) == []  # no pred.h5ad, whole or partial
    leftovers = list(tmp_path.glob(".pred.h5ad.ptrag-*"))
    assert leftovers  # the killed writer's hidden temporary...
    assert main(args) == 0
    assert _visible(tmp_path) == ["pred.h5ad"]
    assert not any(p.exists() for p in leftovers)  # ...is removed by the next write


def test_killed_evaluate_leaves_no_output(run, tmp_path):
    pred = tmp_path / "pred.h5ad"
    assert main(["predict", "--run", str(run / "run"), "--data", str(run / "d.h5ad"), "--out", str(pred)]) == 0
    out = tmp_path / "eval"
    args = ["evaluate", "--pred", str(pred), "--real", str(run / "d.h5ad"), "--run", str(run / "run")]
    args += ["--out", str(out)]
    _killed(args)
    assert not out.exists()  # no folder, so no partial set of files
    assert main(args) == 0
    assert _visible(out) == ["evaluation.json", "metrics.csv", "metrics.parquet", "summary.csv", "summary.md"]
    assert not list(tmp_path.glob(".eval.ptrag-*"))
