"""Malformed labels and names are refused at read time: exit 2, one message, nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from _data import make_adata

from ptrag.cli import main


def _run(tmp_path, capsys, a, *extra) -> tuple[int, str]:
    path = tmp_path / "d.h5ad"
    a.write_h5ad(path)
    out = tmp_path / "run"
    code = main(["train", "--data", str(path), "--model", "state", "--max-steps", "2", "--out", str(out), *extra])
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    if code == 2:
        assert not out.exists() or not any(out.iterdir()), "a refused run wrote files"
    return code, err


@pytest.mark.parametrize(
    ("column", "value"),
    [("gene", np.nan), ("gene", ""), ("gene", "   "), ("cell_type", None), ("gem_group", " ")],
)
def test_a_cell_without_a_label_is_refused_with_its_column_and_count(tmp_path, capsys, column, value):
    a = make_adata()
    a.obs[column] = a.obs[column].astype(object)
    a.obs.iloc[[3, 7, 11], a.obs.columns.get_loc(column)] = value
    code, err = _run(tmp_path, capsys, a)
    assert code == 2
    assert f"obs column {column!r}" in err and "no label for 3 of" in err and "'cell3'" in err


def test_duplicated_gene_names_are_refused(tmp_path, capsys):
    a = make_adata()
    names = list(a.var_names)
    names[5] = names[4] = "GENE_X"
    a.var_names = names
    code, err = _run(tmp_path, capsys, a)
    assert code == 2 and "var_names (gene names) occur more than once" in err and "'GENE_X'" in err
    assert "var_names_make_unique" in err


def test_duplicated_cell_names_are_refused(tmp_path, capsys):
    a = make_adata()
    names = list(a.obs_names)
    names[1] = names[0]
    a.obs_names = names
    code, err = _run(tmp_path, capsys, a)
    assert code == 2 and "obs_names (cell names)" in err and "obs_names_make_unique" in err


def test_a_control_label_differing_in_case_is_named(tmp_path, capsys):
    a = make_adata(control="Non-Targeting")
    code, err = _run(tmp_path, capsys, a)
    assert code == 2 and "control label 'non-targeting' does not occur" in err
    assert "pass --control Non-Targeting" in err


def test_a_control_label_with_surrounding_whitespace_is_accepted(tmp_path, capsys):
    """Labels are compared stripped (the perturbation column is stripped when read)."""
    a = make_adata(control=" non-targeting ")
    path = tmp_path / "d.h5ad"
    a.write_h5ad(path)
    assert main(["describe", "--data", str(path)]) == 0


def test_train_out_naming_a_file_is_refused_before_any_work(tmp_path, capsys):
    path = tmp_path / "d.h5ad"
    make_adata().write_h5ad(path)
    out = tmp_path / "taken"
    out.write_text("keep me")
    assert main(["train", "--data", str(path), "--model", "state", "--max-steps", "2", "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"--out {out} exists and is not a folder" in err and "Traceback" not in err
    assert out.read_text() == "keep me"


def test_evaluation_summary_of_a_screen_without_cell_types():
    """The implicit cell type of a screen without a cell-type column is called "all", like the
    pooled scope; the summary of several predictions used to crash on the duplicated index."""
    import pandas as pd

    from ptrag.eval.tables import summary_markdown, summary_table

    rows = [
        {"model": m, "cell_type": "all", "perturbation": p, "pearson_delta": v, "mse": v / 10}
        for m, base in (("state", 0.3), ("control", 0.0))
        for p, v in (("P0", base + 0.1), ("P1", base + 0.3))
    ]
    summary = summary_table(pd.DataFrame(rows))
    assert len(summary) == 2 and set(summary["cell_type"]) == {"all"}
    assert summary.set_index("model").loc["state", "pearson_delta_mean"] == pytest.approx(0.5)
    text = summary_markdown(summary)
    assert text.count("## All cell types") == 1 and "Cell type all" not in text
