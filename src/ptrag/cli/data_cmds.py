"""``ptrag describe`` and ``ptrag split``: look at a data set and make its split."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ptrag.cli.options import Backed, DataPath, with_data_columns
from ptrag.errors import check_output

if TYPE_CHECKING:
    from ptrag.data.io import ColumnSpec

console = Console()


@with_data_columns
def describe_cmd(
    data: DataPath,
    spec: ColumnSpec,
    backed: Backed = False,
) -> None:
    """Validate a Perturb-seq h5ad file and summarise it per cell type."""
    from ptrag.data.io import read_perturbseq

    d = read_perturbseq(data, spec, backed=backed)
    g = d.groups()
    console.print(repr(d))
    t = Table(title=f"{data.name}: cells per cell type")
    for c in (
        "cell type",
        "perturbations",
        "perturbed cells",
        "control cells",
        "min cells / group",
        "median cells / group",
    ):
        t.add_column(c, justify="right" if c != "cell type" else "left")
    ctrl = d.control_counts()
    for ct, sub in g.groupby("cell_type"):
        t.add_row(
            ct,
            str(len(sub)),
            str(int(sub["n_cells"].sum())),
            str(int(ctrl.get(ct, 0))),
            str(int(sub["n_cells"].min())),
            str(int(sub["n_cells"].median())),
        )
    console.print(t)
    shared = set.intersection(*(set(s["perturbation"]) for _, s in g.groupby("cell_type")))
    console.print(f"{len(shared)} perturbations occur in every cell type.")


@with_data_columns
def split_cmd(
    data: DataPath,
    spec: ColumnSpec,
    out: Annotated[Path, typer.Option("--out", help="Where to write the split (cell-load TOML).")],
    task: Annotated[str, typer.Option("--task", help="fewshot or unseen-perturbation.")] = "fewshot",
    target_cell_type: Annotated[
        str | None, typer.Option("--target-cell-type", help="Target cell type (few-shot).")
    ] = None,
    fewshot: Annotated[
        float,
        typer.Option(
            "--fewshot",
            help="Few-shot: fraction of the target's perturbations that train; unseen-perturbation: fraction held out.",
        ),
    ] = 0.3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    backed: Backed = False,
) -> None:
    """Make the paper's few-shot (or an unseen-perturbation) split and write it as cell-load TOML."""
    check_output(out, "file")
    from ptrag.data.io import read_perturbseq
    from ptrag.data.splits import make_split

    d = read_perturbseq(data, spec, backed=backed)
    s = make_split(d.groups(), task=task, target_cell_type=target_cell_type, fraction=fewshot, seed=seed)
    s.to_toml(out)
    console.print(s.counts())
    console.print(f"split written to {out}")


def register(app: typer.Typer) -> None:
    """Add ``describe`` and ``split``."""
    app.command("describe")(describe_cmd)
    app.command("split")(split_cmd)
