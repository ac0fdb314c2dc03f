"""The main job (``ptrag demo``: the cross-cell-type experiment on the synthetic benchmark)
and the paired comparison with the control baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ptrag.cli import main
from ptrag.eval.stats import baseline_comparison
from ptrag.experiments.demo import run_demo
from ptrag.train.baselines import BASELINES


def test_baseline_comparison_by_hand():
    groups = [("ct", f"P{i}") for i in range(8)]
    ctrl = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    model = np.array([0.5, 0.4, 0.9, 1.2, 0.3, 0.2, 0.8, 0.1])  # 7 of 8 below the control
    rows = [
        dict(model="control", cell_type=c, perturbation=p, energy=v) for (c, p), v in zip(groups, ctrl, strict=True)
    ]
    rows += [dict(model="m", cell_type=c, perturbation=p, energy=v) for (c, p), v in zip(groups, model, strict=True)]
    rows.append(dict(model="m", cell_type="ct", perturbation="EXTRA", energy=0.0))  # unpaired: ignored
    out = baseline_comparison(pd.DataFrame(rows)).set_index("model")
    assert list(out.index) == ["m"]
    assert out.loc["m", "better_than_control"] == pytest.approx(7 / 8)
    assert out.loc["m", "wilcoxon_p"] == pytest.approx(stats.wilcoxon(model, ctrl).pvalue)


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, max_steps=2, models=("state", "pt_rag"), cell_types=("cellA",), progress=False)
    for name in (
        "data/perturbseq.h5ad",
        "data/ground_truth.csv",
        "seed0/cellA/split.toml",
        "seed0/cellA/pred/state.h5ad",
        "seed0/cellA/pred/pt_rag.h5ad",
        *(f"seed0/cellA/pred/{b}.h5ad" for b in BASELINES),
        "seed0/cellA/pred/pt_rag.retrieval.csv",
        "tables/table_all.md",
        "retrieval/precision_recall.csv",
        "cost.csv",
        "report.md",
        "report.html",
    ):
        assert (out / name).is_file(), name
    assert result.report == out / "report.md"
    m = pd.read_parquet(out / "seed0" / "cellA" / "eval" / "metrics.parquet")
    assert set(m["model"]) == {"state", "pt_rag", *BASELINES}
    # the control baseline's predicted change is zero up to sampling: its Δ-correlation is near 0
    assert abs(m.loc[m["model"] == "control", "pearson_delta"].mean()) < 0.2
    # the retrieval precision/recall is scored against the simulator's truth: values are fractions
    pr = pd.read_csv(out / "retrieval" / "precision_recall.csv")
    assert pr["precision_topk"].between(0, 1).all() and pr["recall_topk"].between(0, 1).all()


def test_demo_refuses_unknown_model(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "d"), "--models", "state,gpt"]) == 2
    assert not (tmp_path / "d").exists()


def test_demo_refuses_unknown_cell_type_and_leaves_nothing(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--cell-types", "cellZ"]) == 2
    assert "cellZ" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_closing_line_names_only_the_report_parts_that_were_made(tmp_path):
    from ptrag.cli.experiment_cmds import report_parts

    assert report_parts(tmp_path) == ["tables", "commands"]
    (tmp_path / "retrieval").mkdir()
    (tmp_path / "retrieval" / "jaccard.png").write_bytes(b"")
    (tmp_path / "cost.csv").write_text("name\n")
    assert report_parts(tmp_path) == ["tables", "heatmap", "cost", "commands"]
    (tmp_path / "sweeps").mkdir()
    assert report_parts(tmp_path) == ["tables", "heatmap", "sweeps", "cost", "commands"]
