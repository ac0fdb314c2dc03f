"""The inputs of a cross-cell-type experiment, checked before its first training.

* :func:`check_options` — the model and seed lists and the experiment folder.
* :class:`CrossCellTypePlan` — the inputs of one run; :func:`load_inputs` reads the data (or
  simulates the embedded synthetic benchmark, :func:`synthetic_data`), checks the target cell
  types and resolves the training configuration of every (seed, model).
* :func:`experiment_manifest` / :func:`write_manifest` — ``experiment.json`` and ``commands.txt``.

:func:`ptrag.experiments.cross_celltype.cross_celltype` runs the protocol on them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrag.data.io import ColumnSpec, PerturbData
from ptrag.data.sources import DataSource, write_source
from ptrag.errors import PtragError, atomic_write_text, check_choice
from ptrag.train.config import MODELS, TrainConfig, resolve_config

#: The file of ``OUT/data/`` an in-memory AnnData given as the experiment's data is written to.
INPUT_FILE = "input.h5ad"


def synthetic_data(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """The embedded synthetic benchmark in ``out_dir/data`` (simulated once, then reused).

    Returns
    -------
    dict[str, pathlib.Path]
        ``data``, ``genes`` and ``ground_truth`` files (see
        :func:`ptrag.data.synthetic.write_benchmark`).
    """
    from ptrag.data.synthetic import DATA_FILE, GENES_FILE, GROUND_TRUTH_FILE, simulate, write_benchmark

    d = Path(out_dir) / "data"
    files = {"data": d / DATA_FILE, "genes": d / GENES_FILE, "ground_truth": d / GROUND_TRUTH_FILE}
    if all(f.is_file() for f in files.values()):
        return files
    return write_benchmark(simulate(seed=seed), d)


def check_options(out: Path, models: Sequence[str], seeds: Sequence[int]) -> None:
    """Reject an empty or unknown model list, an empty seed list and an ``out`` that is a file.

    Parameters
    ----------
    out
        Experiment folder.
    models
        Models to train.
    seeds
        Seeds of the experiment.
    """
    if not models:
        raise PtragError("--models is empty: name at least one of " + ", ".join(MODELS) + ".")
    for m in models:
        check_choice("--models", m, MODELS)
    if not seeds:
        raise PtragError("--seeds is empty: give at least one seed.")
    if out.exists() and not out.is_dir():
        raise PtragError(f"--out {out} exists and is not a folder: pass a folder path.")


@dataclass
class CrossCellTypePlan:
    """The inputs of one cross-cell-type run (the arguments of its function, checked).

    :func:`load_inputs` sets the synthetic benchmark's files when ``data_path`` is ``None``,
    then ``targets`` and ``configs``.

    Attributes
    ----------
    out
        Experiment folder.
    data_path, gene_tables, ground_truth
        Data file (``None``: the synthetic benchmark; an in-memory AnnData is replaced by
        ``out/data/input.h5ad`` once checked), gene tables and ground-truth context pairs.
    models, seeds, fewshot, preset, overrides, spec
        As in :func:`ptrag.experiments.cross_celltype.cross_celltype`.
    targets
        Target cell types.
    configs
        ``seed -> model -> training configuration``.
    """

    out: Path
    data_path: DataSource | None
    gene_tables: Sequence[str | Path]
    ground_truth: str | Path | None
    models: list[str]
    seeds: Sequence[int]
    fewshot: float
    preset: str
    overrides: Mapping[str, Any] | None
    spec: ColumnSpec
    targets: list[str] = field(default_factory=list)
    configs: dict[int, dict[str, TrainConfig]] = field(default_factory=dict)


def load_inputs(plan: CrossCellTypePlan, cell_types: Sequence[str] | None) -> PerturbData:
    """Read the data and check every input, completing ``plan`` (see :class:`CrossCellTypePlan`).

    Bad input found here, before the first training, leaves no folder behind: an experiment
    folder this call created is removed before the error propagates.

    Parameters
    ----------
    plan
        The run's inputs; its data files, targets and configurations are set here (an
        in-memory AnnData is written to ``out/data/input.h5ad`` and its path set).
    cell_types
        Target cell types (``None`` or empty: every cell type of the data).

    Returns
    -------
    PerturbData
        The open data set (the caller closes it).
    """
    from ptrag.data.io import read_perturbseq

    created = not plan.out.exists()
    try:
        if plan.data_path is None:
            files = synthetic_data(plan.out)
            plan.data_path, plan.gene_tables = files["data"], [files["genes"]]
            plan.ground_truth = files["ground_truth"]
        data = read_perturbseq(plan.data_path, plan.spec)
        plan.targets = check_targets(data, cell_types, data.path)
        plan.configs = resolve_configs(plan)
        # an in-memory AnnData, once checked, is written for the steps, which read it by path
        plan.data_path = write_source(plan.data_path, plan.out / "data" / INPUT_FILE)
    except PtragError:
        if created and plan.out.is_dir():
            import shutil

            shutil.rmtree(plan.out)
        raise
    return data


def check_targets(data: PerturbData, cell_types: Sequence[str] | None, data_path: str | Path) -> list[str]:
    """The target cell types, each one of the data's; the data must hold at least two cell types.

    Parameters
    ----------
    data
        The data set.
    cell_types
        Requested targets (``None`` or empty: every cell type of the data).
    data_path
        The data file (or an AnnData's label, :attr:`PerturbData.path`), for the messages.

    Returns
    -------
    list[str]
    """
    targets = list(cell_types) if cell_types else list(data.cell_types)
    for t in targets:
        if t not in data.cell_types:
            raise PtragError(f"--cell-types: {t!r} is not a cell type of {data_path} ({', '.join(data.cell_types)}).")
    if len(data.cell_types) < 2:
        raise PtragError(f"{data_path} has one cell type: the cross-cell-type protocol needs at least two.")
    return targets


def resolve_configs(plan: CrossCellTypePlan) -> dict[int, dict[str, TrainConfig]]:
    """Every (seed, model) training configuration, resolved (and so checked) before the first training.

    A model that needs gene embeddings without gene tables, or a missing or malformed gene table,
    stops here rather than at the first training.

    Parameters
    ----------
    plan
        The run's inputs.

    Returns
    -------
    dict
        ``seed -> model -> TrainConfig``.
    """
    configs = {
        seed: {
            m: resolve_config(
                {**dict(plan.overrides or {}), "model": m, "seed": seed, "data": plan.spec.to_dict()},
                preset=plan.preset,
            )
            for m in plan.models
        }
        for seed in plan.seeds
    }
    first = configs[plan.seeds[0]]
    for m, cfg in first.items():
        if cfg.uses_gene_table and not plan.gene_tables:
            raise PtragError(f"--models includes {m}, which needs gene embeddings: pass --genes TABLE.")
    if plan.gene_tables and any(cfg.uses_gene_table for cfg in first.values()):
        from ptrag.data.embeddings import load_gene_tables

        load_gene_tables(plan.gene_tables)
    return configs


def machine_description() -> str:
    """The operating system, CPU cores, torch version and threads, and the GPU if any."""
    import os
    import platform

    import torch

    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
        + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
    )


def experiment_manifest(data: PerturbData, plan: CrossCellTypePlan) -> dict[str, Any]:
    """The content of ``experiment.json``: the data, the protocol's settings and the machine.

    Parameters
    ----------
    data
        The (open) data set.
    plan
        The run's inputs, after :func:`load_inputs`.

    Returns
    -------
    dict
    """
    return dict(
        data=str(plan.data_path),
        n_cells=int(data.n_cells),
        n_genes=len(data.var_names),
        cell_types=list(data.cell_types),
        targets=plan.targets,
        fewshot=plan.fewshot,
        seeds=list(plan.seeds),
        models=plan.models,
        preset=plan.preset,
        options=dict(plan.overrides or {}),
        gene_tables=[str(g) for g in plan.gene_tables],
        ground_truth=str(plan.ground_truth) if plan.ground_truth else None,
        machine=machine_description(),
    )


def write_manifest(out: Path, manifest: Mapping[str, Any], command: Sequence[str] | None) -> None:
    """Write ``out/experiment.json`` and, given the command line, record it in ``commands.txt``.

    Parameters
    ----------
    out
        Experiment folder.
    manifest
        Output of :func:`experiment_manifest`.
    command
        The command line that runs the experiment, or ``None``.
    """
    atomic_write_text(out / "experiment.json", json.dumps(manifest, indent=2) + "\n")
    if command:
        from ptrag.experiments.report import record_command

        record_command(out, list(command))
