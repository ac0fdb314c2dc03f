"""Options shared by every command that reads data, so that all commands spell them alike."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

DataPath = Annotated[Path, typer.Option("--data", help="Perturb-seq AnnData file (.h5ad).")]
PertCol = Annotated[str, typer.Option("--pert-col", help="obs column with the perturbed gene of each cell.")]
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
Control = Annotated[str, typer.Option("--control", help="Label of control (non-targeting) cells in --pert-col.")]
Layer = Annotated[str | None, typer.Option("--layer", help="Read expression from this layer instead of X.")]
ObsmKey = Annotated[
    str | None,
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
    layer: str | None,
    obsm_key: str | None,
    defaults_given: set[str] | None = None,
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


#: The data flags of :func:`with_data_columns`: parameter -> (annotation, default).
DATA_COLUMNS: dict[str, tuple[Any, Any]] = {
    "pert_col": (PertCol, "gene"),
    "cell_type_col": (CellTypeCol, "cell_type"),
    "batch_col": (BatchCol, "gem_group"),
    "control": (Control, "non-targeting"),
    "layer": (Layer, None),
    "obsm_key": (ObsmKey, None),
}


def with_data_columns(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the shared data flags (``--pert-col`` ... ``--obsm-key``).

    The command declares a ``spec`` parameter instead of the six flags and receives them as
    one :class:`ptrag.data.io.ColumnSpec`; the flags are appended to its options, so every
    command spells and documents them alike.
    """
    sig = inspect.signature(command)
    if "spec" not in sig.parameters:
        raise TypeError(f"{command.__name__} must take a `spec` parameter")
    # Typer needs evaluated annotations; `spec`'s is never evaluated (ColumnSpec stays a lazy import)
    own = [
        p.replace(
            kind=inspect.Parameter.KEYWORD_ONLY,
            annotation=eval(p.annotation, command.__globals__) if isinstance(p.annotation, str) else p.annotation,  # noqa: S307
        )
        for p in sig.parameters.values()
        if p.name != "spec"
    ]
    flags = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default) in DATA_COLUMNS.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        columns = [kwargs.pop(name) for name in DATA_COLUMNS]
        return command(**kwargs, spec=column_spec(*columns))

    params = own + flags
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
    del wrapper.__wrapped__  # Typer must read the new signature, not the command's
    return wrapper
