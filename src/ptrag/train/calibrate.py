"""Calibration of a trained run on its validation sets (``--calibration validation``).

The network's change is fitted to the training groups. For a held-out group its set mean
carries, besides the signal, the noise of the groups it was learned from (too large a departure
from the residual base), and its per-cell deviations may distort the spread of the cells (on a
low-count screen the predicted cells lose a third of their per-gene variance and their PCA
covariance is off, docs/experiments.md). Two scalars, fitted after training on the validation
sets only, move either part toward the residual base's cells
(:func:`ptrag.train.plan.calibrated_prediction`):

* ``alpha``, the scale of the set mean's departure from the base's: the value of
  :data:`ALPHA_GRID` with the highest mean validation Pearson Δ (the correlation of the
  predicted and observed change of the set mean from the control cells' mean). Pearson Δ, not
  the MSE: a smaller departure always lowers the MSE when the base is good and the network
  noisy, but where the base's direction is poor (the synthetic benchmark) the MSE would still
  trade the change's direction for its size. With the control cells as the base
  (``--residual-base none``) the departure *is* the change, whose direction ``alpha`` cannot
  move (Pearson Δ differs only through the clipping at 0), so there ``alpha`` is the value
  with the lowest validation MSE of the set means: only the change's size is in question;
* ``beta``, the weight of the network's per-cell deviations against the base cells' own: the
  value of :data:`BETA_GRID` with the lowest validation energy given ``alpha``, measured in the
  run's PCA-50 space, where ``ptrag evaluate`` measures W1, W2² and energy (in expression space
  the many noisy genes of a low-count screen hide the distorted covariance).

``alpha = beta = 1`` is the network as trained, ``alpha = beta = 0`` the residual base (the
control cells, or with ``--residual-base context_mean`` the context-mean baseline). The pair is
written into the checkpoint's ``calibration`` buffer, and ``ptrag predict`` applies it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ptrag.errors import atomic_path
from ptrag.nn.readout import pearson_rows
from ptrag.train.plan import calibrated_prediction

log = logging.getLogger("ptrag")

#: Candidate scales of the set-mean change (steps of 0.05) and of the per-cell deviation; on a
#: tie the largest wins (the least change to the network as trained).
ALPHA_GRID = tuple(i / 20 for i in range(21))
BETA_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Calibration:
    """Fitted calibration of one checkpoint.

    Attributes
    ----------
    alpha, beta
        Scales of the set-mean change and of each cell's deviation from it.
    val_energy
        Validation energy with ``alpha``, ``beta``; ``val_energy_raw`` without calibration.
    val_mse, val_mse_raw
        Validation MSE of the set means (calibrated, uncalibrated).
    val_pearson_delta, val_pearson_delta_raw
        Mean validation Pearson Δ of the set means (calibrated, uncalibrated).
    n_sets
        Validation sets it was fitted on.
    """

    alpha: float
    beta: float
    val_energy: float
    val_energy_raw: float
    val_mse: float
    val_mse_raw: float
    val_pearson_delta: float
    val_pearson_delta_raw: float
    n_sets: int

    def describe(self) -> str:
        """One line: the scales and what they changed on the validation sets."""
        return (
            f"alpha {self.alpha:.2f}, beta {self.beta:.2f} on {self.n_sets} validation sets "
            f"(Pearson delta {self.val_pearson_delta_raw:.3f} -> {self.val_pearson_delta:.3f}, "
            f"PCA energy {self.val_energy_raw:.4g} -> {self.val_energy:.4g}, "
            f"mean MSE {self.val_mse_raw:.4g} -> {self.val_mse:.4g})"
        )

    def to_dict(self) -> dict:
        """Plain dict (``train_summary.json``)."""
        return asdict(self)


def validation_outputs(plan, loader) -> list[tuple[torch.Tensor, ...]]:
    """``(base, delta, pert_expr, ctrl_mean)`` of every validation batch (uncalibrated, in eval
    mode; ``ctrl_mean`` ``[B, G]`` the mean of each set's control cells)."""
    plan.eval()
    rows = []
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(plan.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = plan(batch)
            rows.append((plan.residual_base(batch), out.delta, batch["pert_expr"], batch["ctrl_expr"].mean(1)))
    return rows


def fit_calibration(plan, loader, pca=None, fallback: bool = False) -> Calibration | None:
    """Fit ``alpha`` and ``beta`` of ``plan`` on the sets of ``loader`` (see the module).

    With ``fallback`` the fit is kept only where the network as trained is farther from the
    validation sets (energy in the PCA space) than the residual base's cells; elsewhere the
    result is the identity, ``alpha = beta = 1`` (``--calibration fallback``).

    Parameters
    ----------
    plan
        A :class:`~ptrag.train.plan.PerturbationPlan` (left in eval mode, its buffer unchanged).
    loader
        The validation DataLoader (``None`` or empty: no calibration).
    pca
        The run's :class:`~ptrag.data.pca.PCASpace`: the energies that choose ``beta`` are
        then measured in its space, where ``ptrag evaluate`` measures W1, W2² and energy
        (``None``: in expression space, the training loss's).
    fallback
        Calibrate only a network worse than its base on the validation sets.

    Returns
    -------
    Calibration or None
        ``None`` when there is nothing to fit on.
    """
    if loader is None:
        return None
    rows = validation_outputs(plan, loader)
    if not rows:
        return None

    space = _projection(pca)
    n = sum(r[0].shape[0] for r in rows)

    @functools.cache
    def energy(a: float, b: float) -> float:
        total = sum(float(plan.energy(space(calibrated_prediction(x, d, a, b)), space(p)).sum()) for x, d, p, _ in rows)
        return total / n

    def set_means(a: float, b: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return [(calibrated_prediction(x, d, a, b).mean(1), p.mean(1), c) for x, d, p, c in rows]

    @functools.cache
    def pearson_delta(a: float) -> float:
        r = [pearson_rows(pm - c, om - c) for pm, om, c in set_means(a, 1.0)]
        return float(torch.cat(r).nanmean())

    @functools.cache
    def mse(a: float, b: float) -> float:
        return sum(float(((pm - om) ** 2).mean(1).sum()) for pm, om, _ in set_means(a, b)) / n

    if fallback and energy(1.0, 1.0) <= energy(0.0, 0.0):  # the network beats its base: kept as trained
        alpha, beta = 1.0, 1.0
    else:
        if plan.hparams.get("residual_base", "none") == "none":  # the direction is fixed: its size by MSE
            alpha = min(reversed(ALPHA_GRID), key=lambda a: round(mse(a, 1.0), 12))  # ties go to the larger
        else:
            alpha = max(ALPHA_GRID, key=lambda a: (round(pearson_delta(a), 6), a))  # ties go to the larger
        beta = min(reversed(BETA_GRID), key=lambda b: energy(alpha, b))  # reversed: ties go to the larger
    return Calibration(
        alpha=alpha,
        beta=beta,
        val_energy=energy(alpha, beta),
        val_energy_raw=energy(1.0, 1.0),
        val_mse=mse(alpha, beta),
        val_mse_raw=mse(1.0, 1.0),
        val_pearson_delta=pearson_delta(alpha),
        val_pearson_delta_raw=pearson_delta(1.0),
        n_sets=n,
    )


def _projection(pca):
    """Cells ``[..., G]`` to the space the energies are measured in."""
    if pca is None:
        return lambda x: x
    comps = torch.as_tensor(pca.components, dtype=torch.float32).T
    mean = torch.as_tensor(pca.mean, dtype=torch.float32)
    return lambda x: (x - mean.to(x.device)) @ comps.to(x.device)


def calibrate_checkpoint(path: Path, loader, pca=None, fallback: bool = False) -> Calibration | None:
    """Fit the calibration of the checkpoint at ``path`` and write it into the file (atomically);
    ``fallback`` as in :func:`fit_calibration`.

    Returns
    -------
    Calibration or None
        ``None`` (file unchanged) without validation sets.
    """
    from ptrag.train.predict import load_plan

    plan = load_plan(path.parent.parent, str(path))
    cal = fit_calibration(plan, loader, pca, fallback)
    if cal is None:
        log.info("no validation sets: %s is not calibrated", path)
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["state_dict"]["calibration"] = torch.tensor([cal.alpha, cal.beta], dtype=torch.float32)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    log.info("calibration of %s: %s", path.name, cal.describe())
    return cal


def calibrate_run(
    run_dir: str | Path, data_path: str | Path, gene_tables=(), checkpoints: tuple[str, ...] = ("best", "last")
) -> dict[str, Calibration]:
    """Calibrate the checkpoints of an already trained run (``ptrag calibrate``).

    The validation sets are rebuilt from the run's ``config.toml`` and ``split.toml``: the same
    sets :func:`ptrag.train.fit.train` calibrates on with ``--calibration validation``; a run
    configured with ``fallback`` keeps that rule here too.

    Parameters
    ----------
    run_dir
        Run folder of ``ptrag train``.
    data_path
        Its h5ad file.
    gene_tables
        Its gene tables (embedding models).
    checkpoints
        Which of ``best`` / ``last`` to calibrate (missing files are skipped).

    Returns
    -------
    dict
        Checkpoint name -> its :class:`Calibration` (empty without validation sets).
    """
    from ptrag.train.config import read_run_config
    from ptrag.train.prepare import make_loader, prepare_run

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    prep = prepare_run(cfg, data_path, run_dir / "split.toml", list(gene_tables) if cfg.uses_gene_table else [])
    loader = make_loader(cfg, prep, "val", freeze_epoch=True)
    paths = [run_dir / "checkpoints" / f"{name}.ckpt" for name in checkpoints]
    return calibrate_checkpoints(paths, loader, prep.pca, cfg.calibration == "fallback")


def calibrate_checkpoints(
    paths: Iterable[str | Path], loader, pca=None, fallback: bool = False
) -> dict[str, Calibration]:
    """:func:`calibrate_checkpoint` for each existing file of ``paths``.

    Returns
    -------
    dict
        Checkpoint name (the file's stem) -> its :class:`Calibration` (empty without validation sets).
    """
    fitted = {p.stem: calibrate_checkpoint(p, loader, pca, fallback) for p in map(Path, paths) if p.is_file()}
    return {name: cal for name, cal in fitted.items() if cal is not None}
