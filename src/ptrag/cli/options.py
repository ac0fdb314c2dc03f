"""Options shared by every command that reads data, so that all commands spell them alike."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DataPath = Annotated[Path, typer.Option("--data", help="Perturb-seq AnnData file (.h5ad).")]
PertCol = Annotated[
    str, typer.Option("--pert-col", help="obs column with the perturbed gene of each cell.")
]
CellTypeCol = Annotated[
    str,
    typer.Option(
        "--cell-type-col",
        help="obs column with the cell type; pass '' for a data set with a single cell type.",
    ),
]
BatchCol = Annotated[
    str,
    typer.Option(
        "--batch-col",
        help="obs column with the batch (gem group); '' for none. Unused when the default is absent.",
    ),
]
Control = Annotated[
    str, typer.Option("--control", help="Label of control (non-targeting) cells in --pert-col.")
]
Layer = Annotated[
    Optional[str], typer.Option("--layer", help="Read expression from this layer instead of X.")
]
ObsmKey = Annotated[
    Optional[str],
    typer.Option("--obsm-key", help="Read expression from this obsm key instead of X."),
]
Backed = Annotated[
    bool,
    typer.Option(
        "--backed/--in-memory",
        help="Stream the expression matrix from disk (for files larger than memory).",
    ),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


def column_spec(
    pert_col: str,
    cell_type_col: str,
    batch_col: str,
    control: str,
    layer: Optional[str],
    obsm_key: Optional[str],
    defaults_given: Optional[set[str]] = None,
):
    """Build a :class:`ptrag.data.io.ColumnSpec` from the CLI options."""
    from ptrag.data.io import ColumnSpec

    return ColumnSpec(
        pert_col=pert_col,
        cell_type_col=cell_type_col or None,
        batch_col=batch_col or None,
        control=control,
        layer=layer,
        obsm_key=obsm_key,
    )
