"""Training curves of an experiment: validation energy and PT-RAG's selection over training.

A collapse of the selection (every cell dropping to its floor) or a run that never beats the
control baseline is visible at a glance in ``training.png``: one row per target cell type of
one seed, validation energy of every model against the predict-the-control energy on the left,
PT-RAG's contexts per cell (training batches and validation) on the right.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ptrag.errors import atomic_save_figure


def read_curves(run_dir: str | Path) -> pd.DataFrame:
    """Per-step curves of one run from ``logs/metrics.csv``.

    Parameters
    ----------
    run_dir
        A ``ptrag train`` run folder.

    Returns
    -------
    pandas.DataFrame
        One row per logged step (``step`` and the columns that were logged there, averaged
        over the rows of a step); empty when the run has no log.
    """
    path = Path(run_dir) / "logs" / "metrics.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["step"])
    return pd.read_csv(path).groupby("step", as_index=False).mean(numeric_only=True)


def _smooth(series: pd.Series, window: int = 10) -> pd.Series:
    return series.rolling(window, min_periods=1).mean()


def plot_training_curves(runs: dict[str, dict[str, Path]], path: str | Path, rag_model: str = "pt_rag") -> Path | None:
    """Validation energy of each model and ``rag_model``'s selection count over training.

    Parameters
    ----------
    runs
        Target -> model -> run folder.
    path
        PNG to write (atomically).
    rag_model
        The model whose ``selected_contexts`` are drawn.

    Returns
    -------
    pathlib.Path or None
        The figure, or ``None`` when no run has a log.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {t: {m: read_curves(d) for m, d in ms.items()} for t, ms in runs.items()}
    targets = [t for t, ms in curves.items() if any("val/energy" in c for c in ms.values())]
    if not targets:
        return None
    fig, axes = plt.subplots(len(targets), 2, figsize=(10, 3.0 * len(targets)), squeeze=False)
    for row, target in zip(axes, targets, strict=True):
        ax_e, ax_s = row
        control = None
        for model, c in curves[target].items():
            if "val/energy" not in c:
                continue
            v = c.dropna(subset=["val/energy"])
            ax_e.plot(v["step"], v["val/energy"], marker="o", markersize=3, label=model)
            if "val/energy_control" in v and control is None:
                control = float(v["val/energy_control"].iloc[-1])
        if control is not None:
            ax_e.axhline(control, color="grey", linestyle="--", label="control")
        ax_e.set_title(f"{target}: validation energy", fontsize=10)
        ax_e.set_xlabel("step")
        ax_e.legend(fontsize=7)
        c = curves[target].get(rag_model)
        if c is not None and "train/selected_contexts" in c:
            t = c.dropna(subset=["train/selected_contexts"])
            ax_s.plot(t["step"], _smooth(t["train/selected_contexts"]), label="training batches (sampled)")
            if "val/selected_contexts" in c:
                v = c.dropna(subset=["val/selected_contexts"])
                ax_s.plot(
                    v["step"], v["val/selected_contexts"], marker="o", markersize=3, label="validation (expected)"
                )
            ax_s.set_ylim(bottom=0)
            ax_s.legend(fontsize=7)
        else:
            ax_s.text(0.5, 0.5, f"no {rag_model} run", ha="center", va="center", transform=ax_s.transAxes)
        ax_s.set_title(f"{target}: {rag_model} contexts per cell", fontsize=10)
        ax_s.set_xlabel("step")
    fig.tight_layout()
    return atomic_save_figure(fig, path, dpi=110)


def experiment_curves(out: Path, seed: int, targets: Sequence[str], models: Sequence[str]) -> Path | None:
    """``out/training.png`` for the runs of ``seed`` (see :func:`plot_training_curves`)."""
    runs = {t: {m: out / f"seed{seed}" / t / "runs" / m for m in models} for t in targets}
    return plot_training_curves(runs, out / "training.png")
