"""``ptrag train``'s flags: the training options, generated from
:class:`ptrag.train.config.TrainConfig`'s field declarations (:mod:`ptrag.train.options`), and
the command's own options (paths, ``--config``, ``--resume``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ptrag.cli.options import expand_parameter
from ptrag.train.options import TrainOption, cli_options

RunOut = Annotated[Path, typer.Option("--out", help="Run folder to write.")]
TrainGenes = Annotated[
    list[Path] | None,
    typer.Option(
        "--genes",
        help="Gene-embedding table(s) (GenePT pickle, CSV/TSV, parquet, npz); repeat to concatenate. "
        "Required by the embedding models.",
    ),
]
SplitFile = Annotated[Path | None, typer.Option("--split", help="cell-load split TOML; made from --task when absent.")]
ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help=escape("TOML file with any training option (and a [data] table).")),
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]


def _parameter(o: TrainOption) -> inspect.Parameter:
    """A ``None``-default Typer option of ``o`` (``None``: not given). Literal options stay strings,
    checked by :meth:`TrainConfig.validate` with a message naming the flag and the choices."""
    kind = o.type if o.type in (bool, int, float) else str
    decl = f"{o.flag}/--no-{o.flag[2:]}" if kind is bool else o.flag
    text = escape(f"{o.help} {o.default_text}".strip())
    annotation = Annotated[kind | None, typer.Option(decl, help=text, show_default=False)]
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


#: The names of the generated options.
TRAIN_OPTION_NAMES: tuple[str, ...] = tuple(o.name for o in cli_options())


def with_train_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Replace ``command``'s ``options`` parameter by one flag per command-line training option
    (in :class:`TrainConfig`'s field order); the command receives the dict of the ones given."""
    params = [_parameter(o) for o in cli_options()]
    return expand_parameter(
        command, "options", params, lambda values: {k: v for k, v in values.items() if v is not None}, at_end=False
    )
