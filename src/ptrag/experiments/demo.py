"""The main job on the embedded default: the cross-cell-type experiment on the synthetic benchmark.

``ptrag demo --out DIR`` needs no input file and finishes in minutes on two CPU cores: it is
``ptrag experiment cross-celltype`` (:func:`ptrag.experiments.cross_celltype.cross_celltype`)
with the data left out — the synthetic benchmark is simulated into ``DIR/data`` with its gene
table and ground truth — restricted by default to two target cell types and one seed, with
the ``cpu`` preset. ``DIR/report.md`` and ``DIR/report.html`` hold every table and figure;
the whole protocol (all four targets, three seeds, the sweeps) is

    ptrag experiment cross-celltype --out DIR --seeds 0,1,2 --sweeps
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ptrag.experiments.cross_celltype import CrossCellTypeResult, cross_celltype, step_overrides
from ptrag.train.config import MODELS

#: Target cell types of the demo (the synthetic benchmark's first two).
DEMO_TARGETS = ("cellA", "cellB")


def run_demo(
    out_dir: str | Path,
    max_steps: int | None = None,
    seed: int = 0,
    models: Sequence[str] = MODELS,
    cell_types: Sequence[str] = DEMO_TARGETS,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> CrossCellTypeResult:
    """Run the demo: the cross-cell-type experiment on the synthetic benchmark.

    Parameters
    ----------
    out_dir
        Experiment folder (synthetic data, splits, runs, predictions, tables, report).
        Whatever is already there is reused (an interrupted run is resumed).
    max_steps
        Training steps per model (default: the ``cpu`` preset's).
    seed
        Seed of the splits and the trainings (the simulation always uses seed 0).
    models
        Models to train.
    cell_types
        Target cell types.
    progress
        Show progress bars.
    command
        The command line, recorded for the report.

    Returns
    -------
    CrossCellTypeResult
        Folders of the evaluations, tables and report.
    """
    return cross_celltype(
        None,
        out_dir,
        models=models,
        cell_types=cell_types,
        seeds=(seed,),
        overrides=step_overrides(max_steps),
        progress=progress,
        command=command,
    )
