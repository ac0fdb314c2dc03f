"""Cell-set sampler invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data import make_adata

from ptrag.data.io import read_perturbseq
from ptrag.data.sets import SetDataset, SetSampler
from ptrag.errors import PtragError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("d") / "d.h5ad"
    a = make_adata(cells=25)
    a.write_h5ad(p)
    return read_perturbseq(p)


def test_sets_are_pure_and_matched(data):
    s = SetSampler(data.obs, data.groups(), set_size=8, seed=0)
    o = data.obs
    plan = s.plan()
    assert len(plan) == len(s) == 12 * 4  # ceil(25 / 8) sets per group
    for cs in plan:
        assert len(cs.pert_rows) == len(cs.ctrl_rows) == 8
        assert set(o["perturbation"].iloc[cs.pert_rows]) == {cs.perturbation}
        assert set(o["cell_type"].iloc[cs.pert_rows]) == {cs.cell_type}
        assert o["is_control"].iloc[cs.ctrl_rows].all()
        assert set(o["cell_type"].iloc[cs.ctrl_rows]) == {cs.cell_type}


def test_every_cell_used_each_epoch(data):
    s = SetSampler(data.obs, data.groups(), set_size=8, seed=0)
    used = np.concatenate([cs.pert_rows for cs in s.plan()])
    assert set(used) == set(np.flatnonzero(~data.obs["is_control"].to_numpy()))


def test_same_seed_same_sets_new_epoch_new_sets(data):
    a = SetSampler(data.obs, data.groups(), 8, seed=1).plan(0)
    b = SetSampler(data.obs, data.groups(), 8, seed=1).plan(0)
    c = SetSampler(data.obs, data.groups(), 8, seed=1).plan(1)
    assert all(
        np.array_equal(x.pert_rows, y.pert_rows) and np.array_equal(x.ctrl_rows, y.ctrl_rows)
        for x, y in zip(a, b, strict=True)
    )
    assert not all(np.array_equal(x.pert_rows, y.pert_rows) for x, y in zip(a, c, strict=True))


def test_eval_sets_keep_real_size(data):
    s = SetSampler(data.obs, data.groups(), 8, mode="eval", seed=0)
    sizes = [len(cs.pert_rows) for cs in s.plan()]
    assert sizes[:4] == [8, 8, 8, 1]
    used = np.concatenate([cs.pert_rows for cs in s.plan()])
    assert len(used) == len(set(used))  # no cell twice at evaluation


def test_match_batch(data):
    s = SetSampler(data.obs, data.groups(), 8, seed=0, match_batch=True)
    b = data.obs["batch"].to_numpy()
    for cs in s.plan():
        assert np.array_equal(b[cs.pert_rows], b[cs.ctrl_rows])


def test_dataset_reads_expression(data):
    s = SetSampler(data.obs, data.groups(), 8, seed=0)
    ds = SetDataset(
        data, data.var_names[:5], {p: i for i, p in enumerate(sorted(data.groups()["perturbation"].unique()))}
    )
    cs = s.plan()[0]
    item = ds[cs]
    np.testing.assert_array_equal(item["pert_expr"].numpy(), data.expression(cs.pert_rows)[:, :5])
    np.testing.assert_array_equal(item["ctrl_expr"].numpy(), item["cell_input"].numpy())


def test_bad_set_size_and_missing_controls(data):
    with pytest.raises(PtragError, match="at least 2"):
        SetSampler(data.obs, data.groups(), 1)
    obs = data.obs.copy()
    obs.loc[obs["cell_type"] == "CT1", "is_control"] = False
    with pytest.raises(PtragError, match="no control cells"):
        SetSampler(obs, data.groups(), 8)


def test_resume_skips_the_consumed_sets_once(tmp_path):
    make_adata().write_h5ad(tmp_path / "x.h5ad")
    data = read_perturbseq(tmp_path / "x.h5ad")
    groups = data.groups()
    groups = groups[~groups["perturbation"].eq("non-targeting")]
    s = SetSampler(data.obs, groups, set_size=8, mode="train", seed=1)
    whole = s.plan(epoch=2)
    s.resume(2, 5)
    assert [c.pert_rows.tolist() for c in s] == [c.pert_rows.tolist() for c in whole[5:]]
    s.set_epoch(2)
    assert len(list(s)) == len(whole)  # the skip is used once


def test_groups_smaller_than_the_set_size_are_reported(tmp_path, ptrag_log):
    make_adata(cells=6).write_h5ad(tmp_path / "x.h5ad")
    data = read_perturbseq(tmp_path / "x.h5ad")
    groups = data.groups()
    groups = groups[~groups["perturbation"].eq("non-targeting")]
    s = SetSampler(data.obs, groups, set_size=8, mode="train", seed=0)
    assert f"{len(groups)} of {len(groups)} training groups have fewer than --cell-set-size 8" in ptrag_log.text
    assert all(len(c.pert_rows) == 8 for c in s.plan(0))  # filled to S


def test_batched_read_equals_set_by_set(tmp_path):
    make_adata(counts=True).write_h5ad(tmp_path / "x.h5ad")  # counts: normalised on read
    data = read_perturbseq(tmp_path / "x.h5ad")
    groups = data.groups()
    groups = groups[~groups["perturbation"].eq("non-targeting")]
    sets = SetSampler(data.obs, groups, set_size=8, mode="train", seed=0).plan(0)[:6]
    names = sorted(groups["perturbation"].unique())
    ds = SetDataset(data, list(data.var_names)[::-1], {n: i for i, n in enumerate(names)})
    for one, many in zip([ds[cs] for cs in sets], ds.__getitems__(sets), strict=True):
        assert one.keys() == many.keys()
        for k in one:
            assert torch.equal(one[k], many[k]), k
