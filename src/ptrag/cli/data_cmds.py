"""``ptrag describe``, ``ptrag split`` and ``ptrag prepare``: look at a data set, make its split,
write its run-ready copy for fast ``--backed`` training."""

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


@with_data_columns
def prepare_cmd(
    data: DataPath,
    spec: ColumnSpec,
    gene_list: Annotated[
        Path | None,
        typer.Option(
            "--gene-list",
            help="Keep only these genes, one per line (a run's genes.txt works); default: every gene of the file.",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            help="Write the prepared file here instead of beside the data (then set PTRAG_PREPARED_DIR to this "
            "folder so that --backed reads find it).",
        ),
    ] = None,
) -> None:
    """Write, once, a run-ready copy of an h5ad file that --backed training reads fast.

    The copy (DATA.ptrag.h5 beside the data) holds the log-normalised expression of the chosen
    genes, cells ordered by group, memory-mapped when read. Every later --backed command on
    DATA uses it automatically while DATA is unchanged.
    """
    import time

    from ptrag.data.io import read_perturbseq
    from ptrag.data.prepare_write import write_prepared
    from ptrag.data.prepared import prepared_path
    from ptrag.errors import PtragError

    out = check_output(prepared_path(data, out_dir), "file", "--out-dir" if out_dir else "--data")
    genes: list[str] = []
    if gene_list is not None:
        try:
            genes = gene_list.read_text().split()
        except (OSError, UnicodeDecodeError) as e:
            raise PtragError(f"--gene-list {gene_list}: cannot be read ({e}).") from e
        if not genes:
            raise PtragError(f"--gene-list {gene_list} lists no genes; list one gene per line or leave it out.")
    t = time.perf_counter()
    d = read_perturbseq(data, spec, backed=True)
    try:
        write_prepared(d, out, genes)
    finally:
        d.close()
    size = out.stat().st_size / 2**20
    n_genes = len(genes) or len(d.var_names)
    console.print(
        f"prepared {d.n_cells:,} cells x {n_genes:,} genes in {time.perf_counter() - t:.1f} s: {out} ({size:,.0f} MiB)"
    )


def register(app: typer.Typer) -> None:
    """Add ``describe``, ``split`` and ``prepare``."""
    app.command("describe")(describe_cmd)
    app.command("split")(split_cmd)
    app.command("prepare")(prepare_cmd)
