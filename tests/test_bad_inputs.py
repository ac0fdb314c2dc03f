"""The bad-input matrix: every case exits 2 with one message naming the fault, no traceback,
and writes nothing at --out."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from _data import TINY_MODEL, make_adata

from ptrag.cli import main

TINY = [
    "--max-steps",
    "2",
    "--val-every",
    "1",
    *TINY_MODEL,
    "--target-cell-type",
    "CT1",
]


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    a = make_adata(n_perts=8, cells=16, n_genes=30)
    a.write_h5ad(d / "d.h5ad")
    rng = np.random.default_rng(0)
    with open(d / "genes.pkl", "wb") as f:
        pickle.dump({f"P{i}": rng.normal(size=12).tolist() for i in range(8)}, f)
    # variants of the data
    b = a.copy()
    b.X = b.X.toarray()
    b.X[3, 2] = np.nan
    b.write_h5ad(d / "nan.h5ad")
    b = a.copy()
    b.X = b.X.toarray()
    b.X[3, 2] = -1.0
    b.write_h5ad(d / "neg.h5ad")
    b = a.copy()
    b.var_names = [f"X{i}" for i in range(30)]
    b.write_h5ad(d / "othergenes.h5ad")
    (d / "trunc.h5ad").write_bytes((d / "d.h5ad").read_bytes()[:200])
    (d / "text.h5ad").write_text("gene,cell_type\nP1,CT0\n")
    # gene tables
    with open(d / "ragged.pkl", "wb") as f:
        pickle.dump({"P0": [0.1] * 12, **{f"P{i}": rng.normal(size=11).tolist() for i in range(1, 8)}}, f)
    with open(d / "nan.pkl", "wb") as f:
        pickle.dump({f"P{i}": ([np.nan] * 12 if i == 3 else rng.normal(size=12).tolist()) for i in range(8)}, f)
    with open(d / "partial.pkl", "wb") as f:
        pickle.dump({f"P{i}": rng.normal(size=12).tolist() for i in range(7)}, f)  # no P7
    # splits
    (d / "unknown.toml").write_text(
        '[datasets]\nd = "d"\n[training]\nd = "train"\n[fewshot."d.CT1"]\nval = ["NOPE"]\ntest = ["P1"]\n'
    )
    (d / "overlap.toml").write_text(
        '[datasets]\nd = "d"\n[training]\nd = "train"\n[fewshot."d.CT1"]\nval = ["P1"]\ntest = ["P1", "P2"]\n'
    )
    (d / "empty.toml").write_text("")
    (d / "badct.toml").write_text(
        '[datasets]\nd = "d"\n[training]\nd = "train"\n[fewshot."d.CT9"]\nval = ["P1"]\ntest = ["P2"]\n'
    )
    # configs
    (d / "unknown_key.toml").write_text('model = "state"\nhiden = 64\n')
    (d / "wrong_type.toml").write_text('model = "state"\nhidden = "big"\n')
    (d / "broken.toml").write_text('model = "state\nhidden = \n')
    (d / "notalog.csv").write_text("a,b\n1,2\n")
    # a trained run, then a truncated copy of its checkpoint
    run = d / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(d / "d.h5ad"),
                "--out",
                str(run),
                "--model",
                "pt_rag",
                "--genes",
                str(d / "genes.pkl"),
                *TINY,
            ]
        )
        == 0
    )
    trunc = d / "run_trunc"
    trunc.mkdir()
    for f in ("config.toml", "split.toml", "genes.txt", "pca.npz"):
        (trunc / f).write_bytes((run / f).read_bytes())
    (trunc / "checkpoints").mkdir()
    (trunc / "checkpoints" / "last.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes()[:1000])
    return d


def _predict(w, o, *extra, data="d.h5ad"):
    return ["predict", "--run", str(w / "run"), "--data", str(w / data), *extra, "--out", str(o) + ".h5ad"]


def _train(w, *extra, data="d.h5ad", model="pt_rag", genes="genes.pkl"):
    g = ["--genes", str(w / genes)] if genes else []
    return ["train", "--data", str(w / data), "--model", model, *g, *TINY, *extra]


# (id, argv builder, words the message must contain)
CASES = [
    ("describe-missing-file", lambda w, o: ["describe", "--data", str(w / "nope.h5ad")], ["nope.h5ad"]),
    ("describe-not-h5ad", lambda w, o: ["describe", "--data", str(w / "text.h5ad")], ["text.h5ad"]),
    ("describe-truncated", lambda w, o: ["describe", "--data", str(w / "trunc.h5ad")], ["trunc.h5ad"]),
    (
        "describe-missing-column",
        lambda w, o: ["describe", "--data", str(w / "d.h5ad"), "--pert-col", "guide"],
        ["guide"],
    ),
    ("describe-absent-control", lambda w, o: ["describe", "--data", str(w / "d.h5ad"), "--control", "NTC"], ["NTC"]),
    (
        "split-unknown-cell-type",
        lambda w, o: ["split", "--data", str(w / "d.h5ad"), "--target-cell-type", "CT9", "--out", str(o)],
        ["CT9"],
    ),
    (
        "train-split-unknown-perturbation",
        lambda w, o: [*_train(w), "--split", str(w / "unknown.toml"), "--out", str(o)],
        ["NOPE"],
    ),
    ("train-split-overlap", lambda w, o: [*_train(w), "--split", str(w / "overlap.toml"), "--out", str(o)], ["P1"]),
    ("train-split-empty", lambda w, o: [*_train(w), "--split", str(w / "empty.toml"), "--out", str(o)], ["empty.toml"]),
    (
        "train-split-unknown-cell-type",
        lambda w, o: [*_train(w), "--split", str(w / "badct.toml"), "--out", str(o)],
        ["CT9"],
    ),
    (
        "train-config-unknown-key",
        lambda w, o: [*_train(w), "--config", str(w / "unknown_key.toml"), "--out", str(o)],
        ["hiden"],
    ),
    (
        "train-config-wrong-type",
        lambda w, o: [*_train(w), "--config", str(w / "wrong_type.toml"), "--out", str(o)],
        ["hidden"],
    ),
    ("train-topk-above-database", lambda w, o: [*_train(w), "--topk", "50", "--out", str(o)], ["topk"]),
    (
        "train-negative-sparsity",
        lambda w, o: [*_train(w), "--sparsity-weight", "-1", "--out", str(o)],
        ["sparsity-weight"],
    ),
    ("train-tau-zero", lambda w, o: [*_train(w), "--tau", "0", "--out", str(o)], ["tau"]),
    ("train-set-size-one", lambda w, o: [*_train(w), "--cell-set-size", "1", "--out", str(o)], ["cell-set-size"]),
    ("train-unknown-model", lambda w, o: [*_train(w, model="gpt"), "--out", str(o)], ["gpt"]),
    ("train-embedding-model-without-genes", lambda w, o: [*_train(w, genes=None), "--out", str(o)], ["--genes"]),
    ("train-table-wrong-dimension", lambda w, o: [*_train(w, genes="ragged.pkl"), "--out", str(o)], ["ragged.pkl"]),
    ("train-table-nan", lambda w, o: [*_train(w, genes="nan.pkl"), "--out", str(o)], ["P3"]),
    ("train-table-missing-gene", lambda w, o: [*_train(w, genes="partial.pkl"), "--out", str(o)], ["P7"]),
    ("train-expression-nan", lambda w, o: [*_train(w, data="nan.h5ad"), "--out", str(o)], ["nan.h5ad"]),
    ("train-expression-negative", lambda w, o: [*_train(w, data="neg.h5ad"), "--out", str(o)], ["neg.h5ad"]),
    ("train-missing-table-file", lambda w, o: [*_train(w, genes="none.pkl"), "--out", str(o)], ["none.pkl"]),
    (
        "predict-not-a-run",
        lambda w, o: ["predict", "--run", str(w), "--data", str(w / "d.h5ad"), "--out", str(o) + ".h5ad"],
        ["config.toml"],
    ),
    (
        "predict-truncated-checkpoint",
        lambda w, o: ["predict", "--run", str(w / "run_trunc"), "--data", str(w / "d.h5ad"), "--out", str(o) + ".h5ad"],
        ["last.ckpt"],
    ),
    ("predict-other-gene-set", lambda w, o: _predict(w, o, data="othergenes.h5ad"), ["othergenes.h5ad"]),
    ("predict-unknown-split", lambda w, o: _predict(w, o, "--split", "holdout"), ["holdout"]),
    (
        "predict-not-h5ad-output",
        lambda w, o: ["predict", "--run", str(w / "run"), "--data", str(w / "d.h5ad"), "--out", str(o) + ".csv"],
        [".h5ad"],
    ),
    (
        "evaluate-missing-prediction",
        lambda w, o: [
            "evaluate",
            "--pred",
            str(w / "nope_pred.h5ad"),
            "--real",
            str(w / "d.h5ad"),
            "--run",
            str(w / "run"),
            "--out",
            str(o),
        ],
        ["nope_pred.h5ad"],
    ),
    ("simulate-bad-option", lambda w, o: ["simulate", "--out", str(o), "--n-cell-types", "0"], ["--n-cell-types"]),
    # reliability II: further malformed inputs across the commands
    (
        "train-unknown-target-cell-type",
        lambda w, o: [*_train(w), "--target-cell-type", "CT9", "--out", str(o)],
        ["CT9"],
    ),
    ("train-missing-pert-column", lambda w, o: [*_train(w), "--pert-col", "guide", "--out", str(o)], ["guide"]),
    ("train-missing-cell-type-column", lambda w, o: [*_train(w), "--cell-type-col", "line", "--out", str(o)], ["line"]),
    ("train-missing-layer", lambda w, o: [*_train(w), "--layer", "raw", "--out", str(o)], ["raw"]),
    ("train-missing-obsm-key", lambda w, o: [*_train(w), "--obsm-key", "X_emb", "--out", str(o)], ["X_emb"]),
    ("train-fewshot-above-one", lambda w, o: [*_train(w), "--fewshot", "1.5", "--out", str(o)], ["--fewshot"]),
    ("train-val-every-zero", lambda w, o: [*_train(w), "--val-every", "0", "--out", str(o)], ["--val-every"]),
    ("train-obsm-encoder-without-key", lambda w, o: [*_train(w), "--cell-encoder", "obsm", "--out", str(o)], ["obsm"]),
    ("train-bad-toml", lambda w, o: [*_train(w), "--config", str(w / "broken.toml"), "--out", str(o)], ["broken.toml"]),
    (
        "train-response-topk-above-groups",
        lambda w, o: [*_train(w, model="pt_rag_response"), "--topk", "40", "--out", str(o)],
        ["--topk", "training groups"],
    ),
    (
        "predict-unknown-cell-type",
        lambda w, o: _predict(w, o, "--perturbations", "P1", "--cell-type", "CT9"),
        ["CT9"],
    ),
    ("predict-unknown-checkpoint", lambda w, o: _predict(w, o, "--checkpoint", "epoch3"), ["epoch3"]),
    ("predict-zero-cells", lambda w, o: _predict(w, o, "--n-cells", "0"), ["--n-cells"]),
    ("predict-unknown-baseline", lambda w, o: _predict(w, o, "--baseline", "oracle"), ["oracle"]),
    (
        "evaluate-data-file-as-prediction",
        lambda w, o: [
            "evaluate",
            "--pred",
            str(w / "text.h5ad"),
            "--real",
            str(w / "d.h5ad"),
            "--run",
            str(w / "run"),
            "--out",
            str(o),
        ],
        ["text.h5ad"],
    ),
    ("compare-missing-evaluation", lambda w, o: ["compare", str(w / "noeval"), "--out", str(o)], ["noeval"]),
    ("retrieval-missing-log", lambda w, o: ["retrieval", "--log", str(w / "none.csv"), "--out", str(o)], ["none.csv"]),
    (
        "retrieval-log-without-columns",
        lambda w, o: ["retrieval", "--log", str(w / "notalog.csv"), "--out", str(o)],
        ["notalog.csv"],
    ),
    (
        "split-unknown-target",
        lambda w, o: ["split", "--data", str(w / "d.h5ad"), "--target-cell-type", "CT9", "--out", str(o) + ".toml"],
        ["CT9"],
    ),
    (
        "describe-missing-cell-type-column",
        lambda w, o: ["describe", "--data", str(w / "d.h5ad"), "--cell-type-col", "line"],
        ["line"],
    ),
    (
        "experiment-unknown-model",
        lambda w, o: ["experiment", "cross-celltype", "--out", str(o), "--models", "state,gpt"],
        ["gpt"],
    ),
    (
        "genes-coverage-missing-table",
        lambda w, o: ["genes", "coverage", "--data", str(w / "d.h5ad"), "--genes", str(w / "none.pkl")],
        ["none.pkl"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, w, tmp_path, capsys):
    name, argv, words = case
    out = tmp_path / "out"
    rc = main(argv(w, out))
    err = capsys.readouterr().err
    print(f"[{name}] {' '.join(err.split())}")
    assert rc == 2, (name, err)
    assert "Traceback" not in err
    flat = " ".join(err.split())
    for word in words:
        assert word in flat, (name, word, flat)
    assert not out.exists() and not (tmp_path / "out.h5ad").exists() and not (tmp_path / "out.csv").exists()
    assert not (tmp_path / "out.toml").exists()


def test_matrix_is_large_enough():
    assert len(CASES) >= 25 + 20


def test_with_data_columns_gives_every_command_the_same_flags():
    import typer
    from typer.testing import CliRunner

    from ptrag.cli.options import DATA_COLUMNS, with_data_columns

    seen = {}

    @with_data_columns
    def cmd(spec, n: int = 1) -> None:
        seen.update(spec=spec, n=n)

    app = typer.Typer()
    app.command()(cmd)
    app.command("other")(lambda: None)  # two commands: Typer keeps the command name
    res = CliRunner().invoke(
        app, ["cmd", "--n", "3", "--pert-col", "perturbation", "--cell-type-col", "", "--control", "ctl"]
    )
    assert res.exit_code == 0, res.output
    spec = seen["spec"]
    assert seen["n"] == 3 and spec.pert_col == "perturbation" and spec.cell_type_col is None and spec.control == "ctl"
    assert spec.batch_col == "gem_group" and spec.layer is None  # defaults
    assert list(DATA_COLUMNS) == ["pert_col", "cell_type_col", "batch_col", "control", "layer", "obsm_key"]


# every command with an output path: (argv builder given the --out value, kind of output)
_OUTPUTS = [
    (lambda w, o: ["split", "--data", str(w / "nope.h5ad"), "--target-cell-type", "CT0", "--out", o], "file"),
    (lambda w, o: [*_train(w, data="nope.h5ad"), "--out", o], "folder"),
    (lambda w, o: ["predict", "--run", str(w / "nope"), "--data", str(w / "nope.h5ad"), "--out", o], "file"),
    (lambda w, o: ["evaluate", "--pred", str(w / "n"), "--real", str(w / "n"), "--run", str(w), "--out", o], "folder"),
    (lambda w, o: ["compare", str(w / "noeval"), "--out", o], "folder"),
    (lambda w, o: ["retrieval", "--log", str(w / "none.csv"), "--out", o], "folder"),
    (lambda w, o: ["experiment", "cross-celltype", "--data", str(w / "nope.h5ad"), "--out", o], "folder"),
    (lambda w, o: ["genes", "embed-graph", "--edges", str(w / "none.csv"), "--out", o], "file"),
    (lambda w, o: ["genes", "embed-text", "--summaries", str(w / "none.json"), "--out", o], "file"),
    (lambda w, o: ["genes", "coverage", "--data", str(w / "nope"), "--genes", str(w / "n.pkl"), "--out", o], "file"),
    (lambda w, o: ["simulate", "--out", o], "folder"),
    (lambda w, o: ["demo", "--out", o], "folder"),
]


@pytest.mark.parametrize("i", range(len(_OUTPUTS)))
def test_output_path_is_checked_before_any_work(i, w, tmp_path, capsys):
    argv, kind = _OUTPUTS[i]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    folder = tmp_path / "folder"
    folder.mkdir()
    # under a file; the wrong kind (a folder for a file output, a file for a folder output). The
    # inputs do not exist either: the output is judged first, in one line naming --out
    for out in (blocker / "sub" / "x.out", folder if kind == "file" else blocker):
        rc = main(argv(w, str(out)))
        err = " ".join(capsys.readouterr().err.split())
        assert rc == 2 and "Traceback" not in err, err
        assert err.startswith("error: --out") and str(out) in err, err
    assert blocker.read_text() == "a file" and not any(folder.iterdir())
