"""cell-load TOML splits and the programmatic few-shot / unseen-perturbation splitters."""

from __future__ import annotations

import pandas as pd
import pytest

from ptrag.data.io import ColumnSpec, read_perturbseq
from ptrag.data.splits import fewshot_split, make_split, read_split_toml, resolve_split, unseen_perturbation_split
from ptrag.errors import PtragError


def groups(n_ct=3, n_p=20):
    return pd.DataFrame(
        [(f"CT{c}", f"P{i}") for c in range(n_ct) for i in range(n_p)], columns=["cell_type", "perturbation"]
    )


@pytest.mark.parametrize("ct", ["hepg2", "jurkat", "k562", "rpe1"])
def test_paper_split_files_parse(shared_data, ct):
    s = read_split_toml(shared_data / "splits" / f"replogle_nadig_{ct}.toml")
    assert s.datasets == {"replogle_proper": "Replogle_Nadig_dataset"}
    assert s.training == {"replogle_proper": "train"}
    lists = s.fewshot[f"replogle_proper.{ct}"]
    assert len(lists["val"]) == 104 and len(lists["test"]) == 624
    assert not set(lists["val"]) & set(lists["test"])


def test_fewshot_split_fractions_and_seed():
    g = groups()
    s = fewshot_split(g, "CT1", 0.3, seed=3)
    c = s.counts()
    assert c.loc["CT1"].to_dict() == {"train": 6, "val": 2, "test": 12}
    assert c.loc["CT0", "train"] == 20 and c.loc["CT2", "train"] == 20
    assert s.table.equals(fewshot_split(g, "CT1", 0.3, seed=3).table)
    assert not s.table.equals(fewshot_split(g, "CT1", 0.3, seed=4).table)


def test_unseen_perturbation_split_holds_out_everywhere():
    s = unseen_perturbation_split(groups(), 0.3, seed=0)
    held = s.table[s.table["split"] != "train"]["perturbation"].unique()
    assert len(held) == 6
    assert not s.table[s.table["perturbation"].isin(held) & (s.table["split"] == "train")].shape[0]


def test_toml_round_trip(tmp_path):
    s = fewshot_split(groups(), "CT2", seed=1)
    s.to_toml(tmp_path / "s.toml")
    back = resolve_split(read_split_toml(tmp_path / "s.toml"), groups())
    pd.testing.assert_frame_equal(back.table, s.table)
    u = make_split(groups(1), task="fewshot")  # one cell type -> unseen-perturbation
    u.to_toml(tmp_path / "u.toml")
    pd.testing.assert_frame_equal(resolve_split(read_split_toml(tmp_path / "u.toml"), groups(1)).table, u.table)


def test_bad_splits(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[fewshot."d.CT9"]\nval = ["P1"]\ntest = ["P2"]\n')
    with pytest.raises(PtragError, match="cell type 'CT9'"):
        resolve_split(read_split_toml(p), groups())
    p.write_text('[fewshot."d.CT0"]\nval = ["P1"]\ntest = ["NOPE"]\n')
    with pytest.raises(PtragError, match="NOPE"):
        resolve_split(read_split_toml(p), groups())
    p.write_text('[fewshot."d.CT0"]\nval = ["P1"]\ntest = ["P1"]\n')
    with pytest.raises(PtragError, match="both val and test"):
        read_split_toml(p)
    p.write_text("[datasets]\nd = 'x'\n")
    with pytest.raises(PtragError, match="empty"):
        resolve_split(read_split_toml(p), groups())
    p.write_text("[zeroshot]\n'd.CT0' = 'test'\n")
    with pytest.raises(PtragError, match="no training"):
        resolve_split(read_split_toml(p), groups(1))
    p.write_text("not toml [")
    with pytest.raises(PtragError, match="not a valid TOML"):
        read_split_toml(p)
    with pytest.raises(PtragError, match="not found"):
        read_split_toml(tmp_path / "missing.toml")
    with pytest.raises(PtragError, match="target cell type"):
        fewshot_split(groups(), "CT7")


def test_devel_fewshot_split_for_each_cell_type(shared_data):
    d = read_perturbseq(
        shared_data / "perturbench" / "devel.h5ad", ColumnSpec(pert_col="perturbation", control="control")
    )
    for ct in d.cell_types:
        s = fewshot_split(d.groups(), ct, 0.3, seed=0)
        c = s.counts().loc[ct]
        n = int(c.sum())
        assert c["train"] == round(0.3 * n) and c["val"] >= 1 and c["test"] >= 1
        others = s.table[s.table["cell_type"] != ct]
        assert (others["split"] == "train").all()
