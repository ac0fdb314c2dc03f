"""A training run killed with SIGKILL and continued with --resume ends with the weights of an
uninterrupted run (same seed): data order, optimiser and RNG state all come back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from _data import TINY_MODEL, make_adata, write_gene_table

from ptrag.cli import main

# 4 batches of 4 sets per epoch; validation (and last.ckpt) every 3 steps; the kill at the
# start of step 8 leaves the step-6 checkpoint, in the middle of the second epoch.
ARGS = [
    "--model",
    "pt_rag",
    "--max-steps",
    "14",
    "--val-every",
    "3",
    *TINY_MODEL,
    "--target-cell-type",
    "CT1",
    "--seed",
    "3",
]

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback

    class Kill(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)

    init = pl.Trainer.__init__
    def patched(self, *a, **k):
        k["callbacks"] = list(k.get("callbacks") or []) + [Kill()]
        init(self, *a, **k)
    pl.Trainer.__init__ = patched
    from ptrag.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _weights(run):
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["global_step"], ckpt["state_dict"]


@pytest.mark.timeout(300)
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    make_adata(n_perts=8, cells=16, n_genes=30).write_h5ad(tmp_path / "d.h5ad")
    write_gene_table(tmp_path / "g.pkl")
    base = ["train", "--data", str(tmp_path / "d.h5ad"), "--genes", str(tmp_path / "g.pkl"), *ARGS]

    assert main([*base, "--out", str(tmp_path / "whole")]) == 0

    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, *base, "--out", str(killed)],
        env={**os.environ, "KILL_AT": "8"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    step, _ = _weights(killed)
    assert step == 6  # the last checkpoint before the kill, in the middle of epoch 1
    assert main([*base, "--out", str(killed), "--resume"]) == 0

    (s1, w1), (s2, w2) = _weights(tmp_path / "whole"), _weights(killed)
    assert s1 == s2 == 14
    assert w1.keys() == w2.keys()
    for k in w1:
        if isinstance(w1[k], torch.Tensor):
            assert torch.equal(w1[k], w2[k]), k
        else:  # extra state (the retrieval database's names)
            assert w1[k] == w2[k], k


def test_same_seed_same_weights_predictions_and_metrics(tmp_path):
    make_adata(n_perts=8, cells=16, n_genes=30).write_h5ad(tmp_path / "d.h5ad")
    write_gene_table(tmp_path / "g.pkl")
    args = [a if a != "14" else "6" for a in ARGS]
    base = ["train", "--data", str(tmp_path / "d.h5ad"), "--genes", str(tmp_path / "g.pkl"), *args]
    files = {}
    for r in ("a", "b"):
        run = tmp_path / r
        assert main([*base, "--out", str(run)]) == 0
        assert (
            main(["predict", "--run", str(run), "--data", str(tmp_path / "d.h5ad"), "--out", str(run / "p.h5ad")]) == 0
        )
        assert (
            main(
                [
                    "evaluate",
                    "--pred",
                    str(run / "p.h5ad"),
                    "--real",
                    str(tmp_path / "d.h5ad"),
                    "--run",
                    str(run),
                    "--out",
                    str(run / "eval"),
                ]
            )
            == 0
        )
        files[r] = run
    (_, w1), (_, w2) = _weights(files["a"]), _weights(files["b"])
    assert all(torch.equal(w1[k], w2[k]) if isinstance(w1[k], torch.Tensor) else w1[k] == w2[k] for k in w1)
    assert (files["a"] / "p.h5ad").read_bytes() != b""
    import anndata as ad
    import pandas as pd

    np.testing.assert_array_equal(ad.read_h5ad(files["a"] / "p.h5ad").X, ad.read_h5ad(files["b"] / "p.h5ad").X)
    pd.testing.assert_frame_equal(
        pd.read_parquet(files["a"] / "eval" / "metrics.parquet"),
        pd.read_parquet(files["b"] / "eval" / "metrics.parquet"),
        check_exact=True,
    )


def test_out_of_memory_suggests_backed_mode(tmp_path, monkeypatch, capsys):
    import ptrag.data.sources as io

    make_adata().write_h5ad(tmp_path / "d.h5ad")

    def boom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(io.ad, "read_h5ad", boom)
    assert main(["describe", "--data", str(tmp_path / "d.h5ad")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "out of memory" in err and "--backed" in err and "Traceback" not in err


def test_file_larger_than_memory_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    import ptrag.data.checks as io

    a = make_adata()
    a.write_h5ad(tmp_path / "d.h5ad")
    need = io.h5ad_memory_bytes(tmp_path / "d.h5ad")
    assert need >= a.X.data.nbytes + a.X.indices.nbytes  # at least the matrix itself
    monkeypatch.setattr(io, "available_memory", lambda: need // 2)
    assert main(["describe", "--data", str(tmp_path / "d.h5ad")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "d.h5ad needs about" in err and "--backed" in err
    assert main(["describe", "--data", str(tmp_path / "d.h5ad"), "--backed"]) == 0  # streaming works


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    from ptrag.train.fit import atomic_checkpoint_io

    io = atomic_checkpoint_io()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    good = path.read_bytes()

    def dies_midway(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted while writing

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == good  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
