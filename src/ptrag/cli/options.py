"""Options shared by every command that reads data, so that all commands spell them alike."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

DataPath = Annotated[Path, typer.Option("--data", help="Perturb-seq AnnData file (.h5ad).")]

#: The data flags: parameter -> (flag, help, default).
DATA_FLAGS: dict[str, tuple[str, str, str | None]] = {
    "pert_col": ("--pert-col", "obs column with the perturbed gene of each cell.", "gene"),
    "cell_type_col": (
        "--cell-type-col",
        "obs column with the cell type; pass '' for a data set with a single cell type.",
        "cell_type",
    ),
    "batch_col": (
        "--batch-col",
        "obs column with the batch (gem group); '' for none. Unused when the default is absent.",
        "gem_group",
    ),
    "control": ("--control", "Label of control (non-targeting) cells in --pert-col.", "non-targeting"),
    "layer": ("--layer", "Read expression from this layer instead of X.", None),
    "obsm_key": ("--obsm-key", "Read expression from this obsm key instead of X.", None),
}


def _data_flag(name: str, overrides: bool = False) -> Any:
    """The annotation of a data flag; with ``overrides`` its default is ``None`` (not given) and
    its help names the default it stands for."""
    flag, text, default = DATA_FLAGS[name]
    if default is None:
        return Annotated[str | None, typer.Option(flag, help=text)]
    if overrides:
        return Annotated[
            str | None, typer.Option(flag, help=escape(f"{text} [default: {default}]"), show_default=False)
        ]
    return Annotated[str, typer.Option(flag, help=text)]


PertCol = _data_flag("pert_col")
CellTypeCol = _data_flag("cell_type_col")
BatchCol = _data_flag("batch_col")
Control = _data_flag("control")
Layer = _data_flag("layer")
ObsmKey = _data_flag("obsm_key")
Backed = Annotated[
    bool,
    typer.Option(
        "--backed/--in-memory",
        help="Stream the expression matrix from disk (for files larger than memory).",
    ),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]
GeneAliases = Annotated[
    Path | None,
    typer.Option("--gene-aliases", help="CSV alias,symbol for perturbation names spelled differently in the table."),
]


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
DATA_COLUMNS: dict[str, tuple[Any, Any]] = {name: (_data_flag(name), d) for name, (_, _, d) in DATA_FLAGS.items()}


def expand_parameter(
    command: Callable[..., Any],
    name: str,
    params: list[inspect.Parameter],
    collect: Callable[[dict[str, Any]], Any],
    *,
    at_end: bool,
) -> Callable[..., Any]:
    """Replace ``command``'s parameter ``name`` by the options ``params`` (in its place, or after
    the command's own options with ``at_end``); the command receives ``collect`` of their values
    as ``name``."""
    sig = inspect.signature(command)
    if name not in sig.parameters:
        raise TypeError(f"{command.__name__} must take a `{name}` parameter")
    added = [p.name for p in params]
    own: list[inspect.Parameter] = []
    for p in sig.parameters.values():
        if p.name == name:
            own.extend([] if at_end else params)
            continue
        # Typer needs evaluated annotations; `name`'s is never evaluated (it may be a lazy import)
        ann = eval(p.annotation, command.__globals__) if isinstance(p.annotation, str) else p.annotation  # noqa: S307
        own.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=ann))
    new = own + (params if at_end else [])

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {n: kwargs.pop(n) for n in added}
        return command(**kwargs, **{name: collect(values)})

    wrapper.__signature__ = sig.replace(parameters=new)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in new} | {"return": None}
    del wrapper.__wrapped__  # Typer must read the new signature, not the command's
    return wrapper


def with_data_columns(command: Callable[..., Any] | None = None, *, overrides: bool = False) -> Callable[..., Any]:
    """Give a command the shared data flags (``--pert-col`` ... ``--obsm-key``).

    The command declares a ``spec`` parameter instead of the six flags and receives them as
    one :class:`ptrag.data.io.ColumnSpec`; the flags are appended to its options, so every
    command spells and documents them alike. With ``overrides=True`` (``@with_data_columns(
    overrides=True)``) the flags default to ``None`` and ``spec`` is the dict of the ones given
    (``ColumnSpec`` field -> value), for commands whose columns come from a file (a run's or a
    config's ``[data]`` table) that the flags override.
    """
    if command is None:
        return functools.partial(with_data_columns, overrides=overrides)
    flags = [
        inspect.Parameter(
            n,
            inspect.Parameter.KEYWORD_ONLY,
            default=None if overrides else default,
            annotation=_data_flag(n, overrides),
        )
        for n, (_, _, default) in DATA_FLAGS.items()
    ]
    if overrides:
        return expand_parameter(command, "spec", flags, _given, at_end=True)
    return expand_parameter(command, "spec", flags, lambda values: column_spec(**values), at_end=True)


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
