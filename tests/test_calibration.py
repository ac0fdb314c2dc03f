"""--calibration validation: the set-mean and per-cell scales of the network's change."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch
from geomloss import SamplesLoss

from ptrag.cli import main
from ptrag.train import calibrate as cal_mod
from ptrag.train.calibrate import BETA_GRID, fit_calibration
from ptrag.train.plan import calibrated_prediction
from ptrag.train.predict import load_plan, predict


def test_calibrated_prediction_closed_forms():
    g = torch.Generator().manual_seed(0)
    base = 5.0 + torch.rand(3, 7, 4, generator=g)  # far from 0: the ReLUs are inactive
    delta = torch.randn(3, 7, 4, generator=g)
    y = base + delta
    y_mean, b_mean = y.mean(1, keepdim=True), base.mean(1, keepdim=True)
    assert torch.equal(calibrated_prediction(base, delta, 1.0, 1.0), torch.relu(base + delta))
    torch.testing.assert_close(calibrated_prediction(base, delta, 0.0, 0.0), base)
    half = calibrated_prediction(base, delta, 0.5, 1.0)
    # the set mean moves half-way from the base's to the network's; each cell keeps its deviation
    torch.testing.assert_close(half.mean(1, keepdim=True), (b_mean + y_mean) / 2)
    torch.testing.assert_close(half - half.mean(1, keepdim=True), y - y_mean)
    # the base's cells shifted to the network's mean
    torch.testing.assert_close(calibrated_prediction(base, delta, 1.0, 0.0), base - b_mean + y_mean)
    assert float(calibrated_prediction(-base, delta, 0.3, 0.6).min()) >= 0.0


class _Stub:
    energy = SamplesLoss("energy")
    hparams: ClassVar[dict] = {"residual_base": "context_mean"}  # _rows' base: controls plus a shift


class _ControlStub(_Stub):
    hparams: ClassVar[dict] = {"residual_base": "none"}


def _rows(alpha_true: float, sign: float = 1.0, seed: int = 0):
    """Sets whose observed mean change is the base's shift plus ``alpha_true`` times the
    network's departure from it, and whose observed cells have the base cells' own spread
    (the network's deviations are noise)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(4):
        ctrl = 12.0 + torch.randn(2, 24, 6, generator=g) * 0.3
        base = ctrl + torch.randn(2, 1, 6, generator=g)  # control cells + a shift
        m = torch.randn(2, 1, 6, generator=g)
        noise = torch.randn(2, 24, 6, generator=g)
        delta = m + noise - noise.mean(1, keepdim=True)
        rows.append((base, delta, base + sign * alpha_true * m, ctrl.mean(1)))
    return rows


@pytest.mark.parametrize("alpha_true", [0.0, 0.4, 1.0])
def test_alpha_matches_the_observed_change_and_beta_drops_added_noise(monkeypatch, alpha_true):
    monkeypatch.setattr(cal_mod, "validation_outputs", lambda plan, loader: _rows(alpha_true))
    cal = fit_calibration(_Stub(), loader=[None])
    assert cal.alpha == pytest.approx(alpha_true, abs=1e-5)
    assert cal.val_pearson_delta == pytest.approx(1.0, abs=1e-4)
    assert cal.beta == 0.0  # the observed cells carry none of the network's deviations
    assert cal.val_mse == pytest.approx(0.0, abs=1e-8) and cal.val_energy <= cal.val_energy_raw
    assert cal.n_sets == 8


@pytest.mark.parametrize("alpha_true", [0.4, 1.0])
def test_with_the_control_cells_as_base_alpha_is_the_size_that_fits_by_mse(monkeypatch, alpha_true):
    """The base is the control cells: every alpha > 0 gives the same Pearson delta (the change's
    direction), so the Pearson rule cannot size the change (it keeps 1); the MSE rule finds it."""
    rows = [
        (ctrl_cells, delta, ctrl_cells + alpha_true * delta.mean(1, keepdim=True), ctrl)
        for ctrl_cells, delta, _, ctrl in _control_rows()
    ]
    monkeypatch.setattr(cal_mod, "validation_outputs", lambda plan, loader: rows)
    cal = fit_calibration(_ControlStub(), loader=[None])
    assert cal.alpha == pytest.approx(alpha_true, abs=1e-5)
    assert cal.val_mse == pytest.approx(0.0, abs=1e-8)
    assert cal.val_pearson_delta == pytest.approx(cal.val_pearson_delta_raw, abs=1e-6)
    assert fit_calibration(_Stub(), loader=[None]).alpha == 1.0  # the Pearson rule: every alpha ties


def test_fallback_calibrates_only_a_network_farther_from_the_truth_than_its_base(monkeypatch):
    """Observed = base + the network's mean change: the network (its mean right, its cells noisy)
    beats the unchanged base, so fallback keeps it as trained where validation would drop the
    noise (beta 0). Observed = base: the network is worse, and fallback fits as validation does."""
    monkeypatch.setattr(cal_mod, "validation_outputs", lambda plan, loader: _rows(1.0))
    kept = fit_calibration(_Stub(), loader=[None], fallback=True)
    assert (kept.alpha, kept.beta) == (1.0, 1.0)
    assert kept.val_energy == kept.val_energy_raw and kept.val_mse == kept.val_mse_raw
    assert fit_calibration(_Stub(), loader=[None]).beta == 0.0
    monkeypatch.setattr(cal_mod, "validation_outputs", lambda plan, loader: _rows(0.0))
    fitted = fit_calibration(_Stub(), loader=[None], fallback=True)
    assert fitted == fit_calibration(_Stub(), loader=[None])
    assert fitted.alpha == pytest.approx(0.0, abs=1e-5) and fitted.val_energy < fitted.val_energy_raw


def _control_rows(seed: int = 1):
    """Sets whose base is their control cells (``--residual-base none``)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(4):
        ctrl = 12.0 + torch.randn(2, 24, 6, generator=g) * 0.3
        delta = torch.randn(2, 1, 6, generator=g) + 0.1 * torch.randn(2, 24, 6, generator=g)
        rows.append((ctrl, delta, None, ctrl.mean(1)))
    return rows


def test_alpha_stays_in_the_unit_interval(monkeypatch):
    monkeypatch.setattr(cal_mod, "validation_outputs", lambda plan, loader: _rows(0.5, sign=-1.0))
    assert fit_calibration(_Stub(), loader=[None]).alpha == 0.0
    assert fit_calibration(_Stub(), loader=None) is None


def test_beta_is_chosen_in_the_pca_space(monkeypatch):
    """Deviations only along genes the PCA space ignores: in that space every beta ties and the
    network is kept (beta = 1); in expression space they are dropped (beta = 0)."""
    from ptrag.data.pca import PCASpace

    rows = []
    for base, delta, pert, ctrl in _rows(1.0):
        noise = delta - delta.mean(1, keepdim=True)
        noise[..., :3] = 0.0
        rows.append((base, delta.mean(1, keepdim=True) + noise, pert, ctrl))
    monkeypatch.setattr(cal_mod, "validation_outputs", lambda plan, loader: rows)
    space = PCASpace(components=np.eye(6)[:3], mean=np.zeros(6), explained_variance=np.ones(3))
    assert fit_calibration(_Stub(), [None], pca=space).beta == 1.0
    assert fit_calibration(_Stub(), [None]).beta == 0.0


def test_train_fits_stores_and_predict_applies_the_calibration(tmp_path):
    from test_residual import G, _shared_shift_data

    a, _ = _shared_shift_data()
    a.write_h5ad(tmp_path / "d.h5ad")
    net = "--batch-size 8 --cell-set-size 16 --hidden 32 --n-heads 2 --ffn 64 --fewshot 0.3 --seed 0".split()  # noqa: SIM905
    args = ["train", "--data", str(tmp_path / "d.h5ad"), "--model", "state", "--max-steps", "40", "--val-every", "20"]
    args += [*net, "--n-genes", str(G), "--target-cell-type", "CT1", "--residual-base", "context_mean"]
    run = tmp_path / "run"
    assert main([*args, "--out", str(run), "--calibration", "validation"]) == 0
    fitted = json.loads((run / "train_summary.json").read_text())["calibration"]
    assert set(fitted) == {"best", "last"}
    plan = load_plan(run)
    assert plan.calibration.tolist() == pytest.approx([fitted["best"]["alpha"], fitted["best"]["beta"]])
    assert 0.0 <= fitted["best"]["alpha"] <= 1.0 and fitted["best"]["beta"] in BETA_GRID
    calibrated = predict(run, tmp_path / "d.h5ad", "test").adata
    # refitting from the run folder (`ptrag calibrate`) gives the same scales
    assert main(["calibrate", "--run", str(run), "--data", str(tmp_path / "d.h5ad")]) == 0
    assert load_plan(run).calibration.tolist() == pytest.approx(plan.calibration.tolist())
    # the identity restores the network as trained
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)
    ckpt["state_dict"]["calibration"] = torch.ones(2)
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    raw = predict(run, tmp_path / "d.h5ad", "test").adata
    x_cal, x_raw = (np.asarray(p.X.todense() if hasattr(p.X, "todense") else p.X) for p in (calibrated, raw))
    assert x_cal.shape == x_raw.shape
    if fitted["best"]["alpha"] < 1 or fitted["best"]["beta"] < 1:
        assert not np.allclose(x_cal, x_raw)


def test_a_state_run_keeps_its_unrepresentable_held_out_groups_held_out(tmp_path):
    """STATE cannot represent a held-out perturbation that trains nowhere and leaves it out; the
    run's split.toml must still hold it out (cell-load's format lists only held-out groups, so
    dropping it there made it read back as a training group and broke `ptrag calibrate`)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    from test_residual import G, _shared_shift_data

    from ptrag.data.splits import read_split_toml, resolve_split

    a, _ = _shared_shift_data()
    rng = np.random.default_rng(1)
    only = ad.AnnData(
        sp.csr_matrix(rng.uniform(0.5, 2.0, size=(24, G)).astype(np.float32)),
        obs=pd.DataFrame({"gene": "Ponly", "cell_type": "CT1"}, index=[f"o{i}" for i in range(24)]),
        var=a.var,
    )
    data = tmp_path / "d.h5ad"
    ad.concat([a, only]).write_h5ad(data)
    split = tmp_path / "split.toml"
    split.write_text(
        '[datasets]\ndata = "data"\n[training]\ndata = "train"\n[zeroshot]\n'
        '[fewshot."data.CT1"]\nval = ["P2", "P3"]\ntest = ["Ponly", "P1"]\n'
    )
    run = tmp_path / "run"
    net = "--batch-size 8 --cell-set-size 16 --hidden 32 --n-heads 2 --ffn 64 --max-steps 10 --val-every 10".split()  # noqa: SIM905
    args = ["train", "--data", str(data), "--split", str(split), "--model", "state", *net, "--n-genes", str(G)]
    assert main([*args, "--out", str(run), "--residual-base", "context_mean", "--calibration", "validation"]) == 0
    from ptrag.data.io import ColumnSpec, read_perturbseq

    groups = read_perturbseq(data, ColumnSpec(pert_col="gene")).groups()
    table = resolve_split(read_split_toml(run / "split.toml"), groups).table
    assert table.set_index(["cell_type", "perturbation"]).loc[("CT1", "Ponly"), "split"] == "test"
    assert "Ponly" not in load_plan(run).pert_names
    assert main(["calibrate", "--run", str(run), "--data", str(data)]) == 0
