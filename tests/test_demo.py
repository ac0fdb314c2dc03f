"""The main job (``ptrag demo``) and its paired comparison with the control baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ptrag.cli import main
from ptrag.experiments.demo import baseline_comparison, run_demo


def test_baseline_comparison_by_hand():
    groups = [("ct", f"P{i}") for i in range(8)]
    ctrl = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    model = np.array([0.5, 0.4, 0.9, 1.2, 0.3, 0.2, 0.8, 0.1])  # 7 of 8 below the control
    rows = [dict(model="control", cell_type=c, perturbation=p, energy=v) for (c, p), v in zip(groups, ctrl)]
    rows += [dict(model="m", cell_type=c, perturbation=p, energy=v) for (c, p), v in zip(groups, model)]
    rows.append(dict(model="m", cell_type="ct", perturbation="EXTRA", energy=0.0))  # unpaired: ignored
    out = baseline_comparison(pd.DataFrame(rows)).set_index("model")
    assert list(out.index) == ["m"]
    assert out.loc["m", "better_than_control"] == pytest.approx(7 / 8)
    assert out.loc["m", "wilcoxon_p"] == pytest.approx(stats.wilcoxon(model, ctrl).pvalue)


def test_demo_end_to_end_small(tmp_path):
    table = run_demo(tmp_path / "demo", max_steps=2, models=("state", "pt_rag"), progress=False)
    assert list(table["model"]) == ["state", "pt_rag", "control"]
    assert (table.loc[table["model"] != "control", "parameters"] > 0).all()
    for name in ("demo_summary.csv", "split.toml", "predictions/state.h5ad", "predictions/pt_rag.h5ad",
                 "predictions/control.h5ad", "predictions/pt_rag.retrieval.csv", "evaluation/metrics.csv",
                 "tables/table_all.md"):
        assert (tmp_path / "demo" / name).is_file(), name
    ctrl = table.set_index("model").loc["control"]
    assert ctrl["val_energy"] == ctrl["val_energy_control"]
    # the control baseline's predicted change is zero up to sampling: its Δ-correlation is near 0
    assert abs(ctrl["test_pearson_delta"]) < 0.2
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "demo" / "demo_summary.csv"), table, check_dtype=False)


def test_demo_refuses_unknown_model(tmp_path):
    assert main(["demo", "--out", str(tmp_path / "d"), "--models", "state,gpt"]) == 2
    assert not (tmp_path / "d").exists()
