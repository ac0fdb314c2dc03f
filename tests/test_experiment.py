"""``ptrag experiment cross-celltype`` end to end on a tiny data set, and its resumption."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from _data import make_adata, write_gene_table

from ptrag.cli import main
from ptrag.train.baselines import BASELINES
from ptrag.train.config import PRESETS

SMALL = ["--max-steps", "2", "--topk", "3"]


def _files(tmp_path):
    make_adata(n_perts=8, cells=16, n_genes=30).write_h5ad(tmp_path / "d.h5ad")
    write_gene_table(tmp_path / "g.pkl")


def test_cross_celltype_runs_every_target_and_resumes(tmp_path, monkeypatch):
    import ptrag.train.fit as fit

    _files(tmp_path)
    args = [
        "experiment",
        "cross-celltype",
        "--data",
        str(tmp_path / "d.h5ad"),
        "--genes",
        str(tmp_path / "g.pkl"),
        "--out",
        str(tmp_path / "exp"),
        "--models",
        "state,pt_rag",
        *SMALL,
    ]
    for key, value in (("hidden", 16), ("batch_size", 4), ("cell_set_size", 8)):  # a smaller cpu preset, for speed
        monkeypatch.setitem(PRESETS["cpu"], key, value)
    assert main(args) == 0
    root = tmp_path / "exp" / "seed0"
    for ct in ("CT0", "CT1"):
        for f in (
            "split.toml",
            "runs/state/train_summary.json",
            "runs/pt_rag/train_summary.json",
            "pred/state.h5ad",
            "pred/pt_rag.h5ad",
            *(f"pred/{b}.h5ad" for b in BASELINES),
            "eval/metrics.parquet",
        ):
            assert (root / ct / f).is_file(), (ct, f)
        m = pd.read_parquet(root / ct / "eval" / "metrics.parquet")
        assert set(m["model"]) == {"state", "pt_rag", *BASELINES} and set(m["cell_type"]) == {ct}
    table = pd.read_csv(root / "tables" / "table_all.csv")
    assert {"state", "pt_rag", *BASELINES} <= set(table.columns)
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


def _small_preset(monkeypatch):
    for key, value in (("hidden", 16), ("batch_size", 4), ("cell_set_size", 8)):  # a smaller cpu preset, for speed
        monkeypatch.setitem(PRESETS["cpu"], key, value)


def test_two_seeds_pool_into_table_1_with_report_and_cost(tmp_path, monkeypatch):
    _files(tmp_path)
    _small_preset(monkeypatch)
    out = tmp_path / "exp"
    args = [
        "experiment",
        "cross-celltype",
        "--data",
        str(tmp_path / "d.h5ad"),
        "--genes",
        str(tmp_path / "g.pkl"),
        "--out",
        str(out),
        "--models",
        "state,vanilla_rag",
        "--seeds",
        "0,1",
        *SMALL,
    ]
    assert main(args) == 0
    per_seed = {
        s: pd.concat([pd.read_parquet(out / f"seed{s}" / ct / "eval" / "metrics.parquet") for ct in ("CT0", "CT1")])
        for s in (0, 1)
    }
    # Table 1 pools every (seed, cell type, perturbation) of a model: its mean is the mean of all rows
    table = pd.read_csv(out / "tables" / "table_all.csv").set_index("metric")
    for model in ("state", "vanilla_rag", "control"):
        rows = pd.concat([m[m["model"] == model] for m in per_seed.values()])
        assert table.loc["pearson_delta", f"{model}_n"] == len(rows)
        assert table.loc["pearson_delta", model] == pytest.approx(rows["pearson_delta"].mean())
    # the seed table holds each seed's own mean
    seeds = pd.read_csv(out / "tables" / "seeds.csv").set_index(["model", "seed"])
    for s, m in per_seed.items():
        assert seeds.loc[("state", s), "energy"] == pytest.approx(m.loc[m["model"] == "state", "energy"].mean())
    # cost: one row per model, the trained run's parameter count, FLOPs per cell = per batch / (B x S)
    cost = pd.read_csv(out / "cost.csv").set_index("name")
    assert list(cost.index) == ["state", "vanilla_rag"]
    for model in cost.index:
        summ = json.loads((out / "seed0" / "CT0" / "runs" / model / "train_summary.json").read_text())
        assert cost.loc[model, "parameters"] == summ["n_parameters"]
    assert (cost["mflop_per_cell"] * 1e6 * 4 * 8).to_numpy() == pytest.approx(cost["gflop_per_batch"].to_numpy() * 1e9)
    assert cost.loc["state", "time_vs_first"] == 1.0
    # the report names the command and links only figures that exist
    md = (out / "report.md").read_text()
    assert "ptrag experiment cross-celltype --data" in md and "## Table 1" in md and "## Cost" in md
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link
    html = (out / "report.html").read_text()
    assert html.count("<table>") >= 5 and "<h2>Commands</h2>" in html


def test_sweep_command_grid_and_contexts(tmp_path, monkeypatch):
    _files(tmp_path)
    _small_preset(monkeypatch)
    data = tmp_path / "d.h5ad"
    assert (
        main(
            [
                "split",
                "--data",
                str(data),
                "--target-cell-type",
                "CT0",
                "--fewshot",
                "0.3",
                "--out",
                str(tmp_path / "split.toml"),
            ]
        )
        == 0
    )
    out = tmp_path / "sw"
    assert (
        main(
            [
                "experiment",
                "sweep",
                "--data",
                str(data),
                "--split",
                str(tmp_path / "split.toml"),
                "--model",
                "vanilla_rag",
                "--genes",
                str(tmp_path / "g.pkl"),
                "--grid",
                "topk=1,3",
                "--max-steps",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["variant"]) == ["vanilla_rag_K1", "vanilla_rag_K3", *BASELINES]
    # every baseline row but control's is tested against the control baseline
    assert table.set_index("variant").loc[list(BASELINES[1:]), "better_than_control"].notna().all()
    # Vanilla RAG gives every cell all K retrieved contexts
    assert table["mean_contexts"].iloc[:2].tolist() == [1.0, 3.0]
    assert (out / "sweep.png").is_file() and "vanilla_rag_K3" in (out / "sweep.md").read_text()
    assert "ptrag experiment sweep" in (out / "commands.txt").read_text()


def test_parse_grid_types_and_errors():
    from ptrag.errors import PtragError
    from ptrag.experiments.sweep import grid_points, parse_grid, variant_name

    grid = parse_grid(["sparsity_weight=0,0.01", "--topk=16,32"])
    assert grid == {"sparsity_weight": [0.0, 0.01], "topk": [16, 32]}
    assert isinstance(grid["topk"][0], int) and isinstance(grid["sparsity_weight"][0], float)
    points = grid_points(grid)
    assert len(points) == 4 and points[1] == {"sparsity_weight": 0.0, "topk": 32}
    assert variant_name("pt_rag", points[3]) == "pt_rag_lambda0.01_K32"
    for bad in ("topk", "topk=a", "colour=1,2", "model=state"):
        with pytest.raises(PtragError):
            parse_grid([bad])


def test_mean_selected_contexts_by_hand():
    from ptrag.experiments.sweep import mean_selected_contexts

    log = pd.DataFrame(
        {
            "cell_type": ["a"] * 3 + ["b"] * 3,
            "query": ["q"] * 6,
            "candidate": list("xyzxyz"),
            "selected_fraction": [1.0, 0.5, 0.0, 0.25, 0.25, 0.0],
        }
    )
    assert mean_selected_contexts(log) == pytest.approx((1.5 + 0.5) / 2)
    assert mean_selected_contexts(log.assign(selected_fraction=np.nan)) == 3.0  # Vanilla RAG: all K


def test_retrieval_analysis_averages_jaccard_over_seeds(tmp_path):
    from ptrag.experiments.cross_celltype import retrieval_analysis

    def write(seed, ct, selected):
        rows = [
            dict(cell_type=ct, query="Q", candidate=c, similarity=0.5, selected_fraction=1.0 if c in selected else 0.0)
            for c in "ABCD"
        ]
        path = tmp_path / f"seed{seed}" / ct / "pred"
        path.mkdir(parents=True)
        pd.DataFrame(rows).to_csv(path / "pt_rag.retrieval.csv", index=False)

    write(0, "X", "AB"), write(0, "Y", "BC")  # J = 1/3
    write(1, "X", "AB"), write(1, "Y", "AB")  # J = 1
    retrieval_analysis(tmp_path, [0, 1], ["X", "Y"], top=2)  # the two selected of the K = 4
    jac = pd.read_csv(tmp_path / "retrieval" / "jaccard.csv", index_col=0)
    assert jac.loc["X", "Y"] == pytest.approx((1 / 3 + 1) / 2)
    assert jac.loc["X", "X"] == 1.0
    assert pd.read_csv(tmp_path / "retrieval" / "jaccard_queries.csv", index_col=0).loc["X", "Y"] == 2
    ctx = pd.read_csv(tmp_path / "retrieval" / "contexts.csv")
    assert ctx["contexts_per_cell"].tolist() == [2.0] * 4
    assert (tmp_path / "retrieval" / "jaccard.png").is_file()


def test_record_command_appends_once(tmp_path):
    from ptrag.experiments.report import record_command

    record_command(tmp_path, ["ptrag", "demo", "--out", "my dir"])
    record_command(tmp_path, ["ptrag", "demo", "--out", "my dir"])
    record_command(tmp_path, ["ptrag", "experiment", "report", "--out", "x"])
    assert (tmp_path / "commands.txt").read_text().splitlines() == [
        "ptrag demo --out 'my dir'",
        "ptrag experiment report --out x",
    ]


def test_report_refuses_a_folder_that_is_not_an_experiment(tmp_path, capsys):
    assert main(["experiment", "report", "--out", str(tmp_path)]) == 2
    assert "experiment.json" in capsys.readouterr().err


def test_missing_or_malformed_gene_table_stops_before_anything_is_written(tmp_path, capsys):
    _files(tmp_path)
    (tmp_path / "bad.pkl").write_text("not a pickle")
    base = ["experiment", "cross-celltype", "--data", str(tmp_path / "d.h5ad"), "--models", "state_genept"]
    assert main([*base, "--genes", str(tmp_path / "none.pkl"), "--out", str(tmp_path / "e1")]) == 2
    assert main([*base, "--genes", str(tmp_path / "bad.pkl"), "--out", str(tmp_path / "e2")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "none.pkl" in err and "bad.pkl" in err and "Traceback" not in err
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()
