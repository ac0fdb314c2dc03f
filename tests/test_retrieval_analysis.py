"""PT-RAG retrieval analysis: top contexts and the between-cell-type Jaccard matrix, by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ptrag.cli import main
from ptrag.eval.retrieval import jaccard_matrix, top_contexts


def _log():
    rows = []
    # cell type A, query Q1 selects {a, b}; Q2 selects {c}; Q3 (only in A) selects {a}
    # cell type B, query Q1 selects {b, c}; Q2 selects nothing
    sel = {
        ("A", "Q1"): {"a": 0.9, "b": 0.6, "c": 0.1},
        ("A", "Q2"): {"a": 0.2, "c": 0.7},
        ("A", "Q3"): {"a": 1.0},
        ("B", "Q1"): {"a": 0.4, "b": 0.5, "c": 0.8},
        ("B", "Q2"): {"a": 0.0, "c": 0.3},
    }
    for (ct, q), cands in sel.items():
        for i, (c, f) in enumerate(cands.items()):
            rows.append(dict(cell_type=ct, query=q, candidate=c, similarity=1.0 - 0.1 * i, selected_fraction=f))
    return pd.DataFrame(rows)


def test_jaccard_by_hand():
    jac, cnt = jaccard_matrix(_log(), min_fraction=0.5)
    # A vs B: Q1 -> |{b}| / |{a,b,c}| = 1/3; Q2 -> {c} vs {} = 0; Q3 not in B
    assert jac.loc["A", "B"] == pytest.approx((1 / 3 + 0) / 2)
    assert jac.loc["B", "A"] == jac.loc["A", "B"] and cnt.loc["A", "B"] == 2
    assert jac.loc["A", "A"] == 1.0 and cnt.loc["A", "A"] == 3
    assert jac.loc["B", "B"] == 1.0 and cnt.loc["B", "B"] == 1  # B's Q2 selects nothing: skipped


def test_top_contexts_order():
    top = top_contexts(_log(), n=2)
    a1 = top[(top["cell_type"] == "A") & (top["query"] == "Q1")]
    assert a1["candidate"].tolist() == ["a", "b"] and a1["rank"].tolist() == [1, 2]
    assert len(top[(top["cell_type"] == "A") & (top["query"] == "Q3")]) == 1


def test_cli_writes_tables_and_heatmap(tmp_path, capsys):
    _log().to_csv(tmp_path / "p.retrieval.csv", index=False)
    assert main(["retrieval", "--log", str(tmp_path / "p.retrieval.csv"), "--out", str(tmp_path / "r")]) == 0
    for f in ("top_contexts.csv", "jaccard.csv", "jaccard_queries.csv", "jaccard.png"):
        assert (tmp_path / "r" / f).is_file()
    assert (tmp_path / "r" / "jaccard.png").read_bytes()[:4] == b"\x89PNG"
    jac = pd.read_csv(tmp_path / "r" / "jaccard.csv", index_col=0)
    assert np.isclose(jac.loc["A", "B"], 1 / 6)
    vanilla = _log().assign(selected_fraction=np.nan)
    vanilla.to_csv(tmp_path / "v.retrieval.csv", index=False)
    assert main(["retrieval", "--log", str(tmp_path / "v.retrieval.csv"), "--out", str(tmp_path / "v")]) == 2
    assert main(["retrieval", "--log", str(tmp_path / "none.csv"), "--out", str(tmp_path / "n")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Vanilla RAG" in err and "none.csv" in err
    assert not (tmp_path / "v").exists() and not (tmp_path / "n").exists()
