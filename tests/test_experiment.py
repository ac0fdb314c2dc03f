"""``ptrag experiment cross-celltype`` end to end on a tiny data set, and its resumption."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd

from _data import make_adata
from ptrag.cli import main
from ptrag.train.config import PRESETS

SMALL = ["--max-steps", "2", "--topk", "3"]


def _files(tmp_path):
    make_adata(n_perts=8, cells=16, n_genes=30).write_h5ad(tmp_path / "d.h5ad")
    rng = np.random.default_rng(0)
    with open(tmp_path / "g.pkl", "wb") as f:
        pickle.dump({f"P{i}": rng.normal(size=12).tolist() for i in range(8)}, f)


def test_cross_celltype_runs_every_target_and_resumes(tmp_path, monkeypatch):
    import ptrag.train.fit as fit

    _files(tmp_path)
    args = ["experiment", "cross-celltype", "--data", str(tmp_path / "d.h5ad"), "--genes", str(tmp_path / "g.pkl"),
            "--out", str(tmp_path / "exp"), "--models", "state,pt_rag", *SMALL]
    for key, value in (("hidden", 16), ("batch_size", 4), ("cell_set_size", 8)):  # a smaller cpu preset, for speed
        monkeypatch.setitem(PRESETS["cpu"], key, value)
    assert main(args) == 0
    root = tmp_path / "exp" / "seed0"
    for ct in ("CT0", "CT1"):
        for f in ("split.toml", "runs/state/train_summary.json", "runs/pt_rag/train_summary.json",
                  "pred/state.h5ad", "pred/pt_rag.h5ad", "pred/control.h5ad", "eval/metrics.parquet"):
            assert (root / ct / f).is_file(), (ct, f)
        m = pd.read_parquet(root / ct / "eval" / "metrics.parquet")
        assert set(m["model"]) == {"state", "pt_rag", "control"} and set(m["cell_type"]) == {ct}
    table = pd.read_csv(root / "tables" / "table_all.csv")
    assert {"control", "state", "pt_rag"} <= set(table.columns)
    assert (root / "tables" / "table_CT0.md").is_file() and (root / "tables" / "table_CT1.md").is_file()

    # a second call trains nothing again
    calls = []
    monkeypatch.setattr(fit, "train", lambda *a, **k: calls.append(a))
    assert main(args) == 0
    assert calls == []


def test_cross_celltype_bad_inputs(tmp_path, capsys):
    _files(tmp_path)
    base = ["experiment", "cross-celltype", "--data", str(tmp_path / "d.h5ad"), "--out", str(tmp_path / "exp")]
    assert main([*base, "--models", "state,gpt"]) == 2
    assert main([*base, "--models", "pt_rag"]) == 2  # needs --genes
    assert main([*base, "--models", "state", "--cell-types", "CT9"]) == 2
    assert main([*base, "--models", "state", "--seeds", "a,b"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "gpt" in err and "--genes" in err and "CT9" in err and "--seeds" in err
    assert not (tmp_path / "exp").exists()
