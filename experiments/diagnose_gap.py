"""Why a trained model falls behind a simple baseline: the numbers of docs/experiments.md.

    python experiments/diagnose_gap.py EXPERIMENT_DIR DATA.h5ad [GENE_TABLE ...]

For every run of a `ptrag experiment cross-celltype` folder (seed*/<target>/runs/<model>):

* ``target_share``: the fraction of one training epoch's cell sets that belong to the target
  cell type; ``val_cell_types``: the cell types of the validation groups the checkpoint was
  selected on;
* the validation energy of the network as trained (``val_energy_raw``), calibrated
  (``val_energy_cal``, the checkpoint's ``calibration``), of its residual base alone
  (``val_energy_base``: the context-mean baseline's cells with ``--residual-base context_mean``)
  and of the control cells (``val_energy_control``);

and, per model (baselines included) over the test groups of every target and seed:

* ``dist_to_context_mean``: the RMS distance of the predicted mean change from the context-mean
  baseline's, over the RMS of the observed change's (``0``: the model predicts the baseline);
* ``alpha_star``: the least-squares scale of the model's departure from the baseline onto the
  observed departure (1: departure right-sized; < 1: too large);
* ``var_ratio``: the median over genes and groups of predicted / observed per-gene variance
  across cells; ``cov_error``: the relative Frobenius error of the predicted cells' covariance in
  the run's PCA-50 space, ``||C_pred - C_obs|| / ||C_obs||``.

Prints the tables; writes them as CSV beside the experiment (``EXPERIMENT_DIR/diagnosis_*.csv``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from ptrag.data.io import read_perturbseq
from ptrag.data.pca import PCASpace
from ptrag.train.calibrate import validation_outputs
from ptrag.train.config import read_run_config
from ptrag.train.plan import calibrated_prediction
from ptrag.train.predict import load_plan
from ptrag.train.prepare import make_loader, prepare_run


def run_row(run: Path, data: Path, tables: list[str]) -> dict:
    """The training-side numbers of one run folder."""
    cfg = read_run_config(run)
    prep = prepare_run(cfg, data, run / "split.toml", tables if cfg.uses_gene_table else [])
    sets = make_loader(cfg, prep, "train").sampler.plan()
    target = run.parent.parent.name
    val = make_loader(cfg, prep, "val", freeze_epoch=True)
    plan = load_plan(run)
    rows = validation_outputs(plan, val) if val is not None else []
    alpha, beta = (float(v) for v in plan.calibration)

    def energy(fn) -> float:
        return float(sum(plan.energy(fn(b, d), p).sum() for b, d, p, _ in rows) / max(sum(len(r[0]) for r in rows), 1))

    val_groups = prep.split.groups("val")
    return {
        "seed": run.parent.parent.parent.name,
        "target": target,
        "model": run.name,
        "target_share": float(np.mean([cs.cell_type == target for cs in sets])),
        "val_cell_types": ",".join(sorted(set(val_groups["cell_type"]))),
        "val_energy_raw": energy(lambda b, d: torch.relu(b + d)),
        "val_energy_cal": energy(lambda b, d: calibrated_prediction(b, d, alpha, beta)),
        "val_energy_base": energy(lambda b, d: torch.relu(b)),
        "alpha": alpha,
        "beta": beta,
    }


def population_rows(exp: Path, data: Path) -> pd.DataFrame:
    """The prediction-side numbers, one row per (seed, target, model, test group)."""
    pdata = read_perturbseq(data, read_run_config(next(exp.glob("seed*/*/runs/*"))).column_spec)
    obs = pdata.obs
    out = []
    for pred_dir in sorted(exp.glob("seed*/*/pred")):
        target = pred_dir.parent.name
        run = next(pred_dir.parent.glob("runs/*"))
        genes = (run / "genes.txt").read_text().split()
        pca = PCASpace.load(run / "pca.npz")
        ctrl = pdata.expression(np.flatnonzero((obs["cell_type"] == target) & obs["is_control"]), genes).mean(0)
        preds = {f.stem: ad.read_h5ad(f) for f in sorted(pred_dir.glob("*.h5ad"))}
        cm = _group_cells(preds["context_mean"])
        for name, p in preds.items():
            for g, x in _group_cells(p).items():
                rows = np.flatnonzero((obs["cell_type"] == target) & (obs["perturbation"] == g))
                real = pdata.expression(rows, genes)
                o, d, c = real.mean(0) - ctrl, x.mean(0) - ctrl, cm[g].mean(0) - ctrl
                vr = x.var(0) / np.maximum(real.var(0), 1e-8)
                cp, co = np.cov(pca.transform(x), rowvar=False), np.cov(pca.transform(real), rowvar=False)
                out.append(
                    {
                        "seed": pred_dir.parent.parent.name,
                        "target": target,
                        "model": name,
                        "perturbation": g,
                        "dep2": float(((d - c) ** 2).sum()),
                        "dep_obs": float(((o - c) * (d - c)).sum()),
                        "obs2": float(((o - c) ** 2).sum()),
                        "var_ratio": float(np.median(vr[real.var(0) > 1e-6])),
                        "cov_error": float(np.linalg.norm(cp - co) / np.linalg.norm(co)),
                    }
                )
    return pd.DataFrame(out)


def _group_cells(p: ad.AnnData) -> dict[str, np.ndarray]:
    x = p.X.toarray() if hasattr(p.X, "toarray") else np.asarray(p.X)
    keep = ~p.obs["is_control"].astype(bool).to_numpy()
    return {g: x[keep & (p.obs["perturbation"] == g).to_numpy()] for g in p.obs.loc[keep, "perturbation"].unique()}


def summarise(pop: pd.DataFrame) -> pd.DataFrame:
    """Per model and target: distance to the context mean, alpha*, variance and covariance errors."""
    g = pop.groupby(["model", "target"])
    s = pd.DataFrame(
        {
            "dist_to_context_mean": np.sqrt(g["dep2"].sum() / g["obs2"].sum()),
            "alpha_star": g["dep_obs"].sum() / g["dep2"].sum().replace(0, np.nan),
            "var_ratio": g["var_ratio"].median(),
            "cov_error": g["cov_error"].mean(),
        }
    )
    return s.round(3)


def main(exp: Path, data: Path, tables: list[str]) -> None:
    runs = pd.DataFrame([run_row(r, data, tables) for r in sorted(exp.glob("seed*/*/runs/*"))])
    runs.to_csv(exp / "diagnosis_runs.csv", index=False)
    print(runs.groupby(["target", "model"]).mean(numeric_only=True).round(4).to_string())
    print(runs[["target", "val_cell_types"]].drop_duplicates().to_string(index=False))
    pop = population_rows(exp, data)
    pop.to_csv(exp / "diagnosis_groups.csv", index=False)
    print(summarise(pop).to_string())


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
