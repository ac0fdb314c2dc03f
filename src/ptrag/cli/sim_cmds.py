"""``ptrag simulate``: write the embedded synthetic cross-cell-type benchmark."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from ptrag.errors import check_output

# SimulationConfig fields that are CLI flags (their errors are reworded as --flag-name)
_FLAGS = (
    "n_cell_types",
    "n_perturbations",
    "n_genes",
    "n_modules",
    "cells_per_perturbation",
    "controls_per_cell_type",
    "embedding_dim",
    "seed",
)


def simulate_cmd(
    out: Annotated[
        Path, typer.Option("--out", help="Folder to write perturbseq.h5ad, genept.pkl and ground_truth.csv into.")
    ],
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed and options: identical files).")] = 0,
    n_genes: Annotated[int, typer.Option("--n-genes", help="Measured genes.")] = 500,
    n_perturbations: Annotated[int, typer.Option("--n-perturbations", help="Perturbed genes.")] = 120,
    n_cell_types: Annotated[int, typer.Option("--n-cell-types", help="Cell types (at most 26).")] = 4,
    cells_per_perturbation: Annotated[
        int, typer.Option("--cells-per-perturbation", help="Cells per (cell type, perturbation).")
    ] = 64,
    controls_per_cell_type: Annotated[
        int, typer.Option("--controls-per-cell-type", help="Non-targeting control cells per cell type.")
    ] = 320,
    n_modules: Annotated[int, typer.Option("--n-modules", help="Functional modules of the perturbed genes.")] = 12,
    embedding_dim: Annotated[
        int, typer.Option("--embedding-dim", help="Dimension of the GenePT-format gene embeddings (real GenePT: 1536).")
    ] = 256,
) -> None:
    """Simulate the synthetic cross-cell-type Perturb-seq benchmark and write its three files."""
    check_output(out, "folder")
    from ptrag.data.synthetic import SimulationConfig, simulate, summarize, write_benchmark
    from ptrag.errors import PtragError

    config = SimulationConfig(
        n_cell_types=n_cell_types,
        n_perturbations=n_perturbations,
        n_genes=n_genes,
        n_modules=n_modules,
        cells_per_perturbation=cells_per_perturbation,
        controls_per_cell_type=controls_per_cell_type,
        embedding_dim=embedding_dim,
        seed=seed,
    )
    _validate(config)
    if out.exists() and not out.is_dir():
        raise PtragError(f"--out {out} exists and is not a folder: pass a folder path.")
    bench = simulate(config)
    paths = write_benchmark(bench, out)
    _print_summary(summarize(bench), paths, seed)


def _validate(config) -> None:
    """``config.validate()`` with the options named by their flags."""
    from ptrag.errors import PtragError

    try:
        config.validate()
    except PtragError as exc:
        msg = str(exc)
        for name in _FLAGS:
            msg = re.sub(rf"(option )?\b{name}\b", f"--{name.replace('_', '-')}", msg)
        raise PtragError(msg) from None


def _print_summary(stats: dict, paths: dict, seed: int) -> None:
    """The benchmark's table per cell type, its statistics and the files written."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"synthetic benchmark (seed {seed})", show_header=True)
    table.add_column("cell type")
    table.add_column("perturbations", justify="right")
    table.add_column("control cells", justify="right")
    table.add_column("mean informative set", justify="right")
    for ct, n in stats["perturbations_per_cell_type"].items():
        table.add_row(
            str(ct),
            str(n),
            str(stats["controls_per_cell_type"][ct]),
            f"{stats['mean_size'][ct]:.1f}",
        )
    console.print(table)
    console.print(
        f"{stats['n_cells']:,} cells x {stats['n_genes']} genes, >= {stats['min_cells_per_group']} cells "
        f"per (cell type, perturbation), {stats['sparsity']:.0%} zero counts; informative sets: mean "
        f"Jaccard between cell types {stats['mean_jaccard']:.2f}; embedding top-10 precision "
        f"{stats['retrieval_precision']:.2f} (random {stats['retrieval_random']:.2f})."
    )
    for key, label in (("data", "expression"), ("genes", "gene embeddings"), ("ground_truth", "ground truth")):
        console.print(f"{label:>16}: {paths[key]}")


def register(app: typer.Typer) -> None:
    """Add ``ptrag simulate`` to ``app``."""
    app.command("simulate")(simulate_cmd)
