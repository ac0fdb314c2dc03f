"""``ptrag genes ...``: gene-knowledge tables and their coverage of a data set's perturbations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from ptrag.cli.options import Backed, DataPath, GeneAliases, with_data_columns
from ptrag.errors import PtragError, atomic_write_csv, check_output

if TYPE_CHECKING:
    from ptrag.data.io import ColumnSpec

console = Console()

genes_app = typer.Typer(
    help="Gene knowledge for perturbation representations: coverage, text and graph gene tables.",
    no_args_is_help=True,
)

GenesOpt = Annotated[
    list[Path],
    typer.Option(
        "--genes",
        help="Gene table (GenePT .pkl, .csv/.tsv[.gz], .parquet, .npz); repeat to concatenate several.",
    ),
]
OutTable = Annotated[
    Path,
    typer.Option("--out", help="Output table: .parquet, .csv[.gz], .tsv[.gz], .npz or .pkl (GenePT's dict)."),
]


def _labels(paths: list[Path]) -> list[str]:
    """Short, unique column labels for tables (file names without extensions)."""
    labels: list[str] = []
    for p in paths:
        base = p.name.split(".")[0] or p.name
        label, i = base, 2
        while label in labels:
            label, i = f"{base}_{i}", i + 1
        labels.append(label)
    return labels


def _coverage_table(title: str, cov, labels: list[str]) -> Table:
    """Per cell type (and all): perturbations and cells with a vector in each table."""
    t = Table(title=title)
    t.add_column("cell type")
    t.add_column("perturbations", justify="right")
    t.add_column("cells", justify="right")
    for lab in labels:
        t.add_column(lab, justify="right")
    singles = cov[~cov["combination"]]
    for ct, sub in [*singles.groupby("cell_type", sort=True), ("all", singles)]:
        row = [str(ct), str(len(sub)), str(int(sub["n_cells"].sum()))]
        for lab in labels:
            hit = sub[sub[lab]]
            row.append(f"{len(hit)}/{len(sub)} ({int(hit['n_cells'].sum())})")
        t.add_row(*row, end_section=(ct == singles["cell_type"].max()))
    return t


def _report_uncovered(cov, final: str, show_missing: int) -> None:
    """Print the combination groups left out and the perturbations without a vector."""
    n_combo = cov["combination"].sum()
    if n_combo:
        combo = cov[cov["combination"]]
        console.print(
            f"{int(n_combo)} combination groups ({int(combo['n_cells'].sum())} cells, e.g. "
            f"{combo['perturbation'].iloc[0]}) are not counted above: ptrag predicts single-gene "
            "perturbations and the data layer excludes them."
        )
    singles = cov[~cov["combination"]]
    miss = singles[~singles["any_table"]].groupby("perturbation")["n_cells"].sum().sort_values(ascending=False)
    if len(miss):
        shown = ", ".join(f"{g} ({n})" for g, n in miss.head(show_missing).items())
        more = f", ... ({len(miss)} in all)" if len(miss) > show_missing else ""
        console.print(f"without a vector in {final} (cells): {shown}{more}")
        console.print(
            "To cover them: an alias map (--gene-aliases), another table (--genes, e.g. from "
            "`ptrag genes embed-text` or `ptrag genes embed-graph`), or --missing-genes drop when training."
        )
    else:
        console.print(f"every single-gene perturbation has a vector in {final}.")


@with_data_columns
def coverage_cmd(
    data: DataPath,
    genes: GenesOpt,
    spec: ColumnSpec,
    backed: Backed = False,
    gene_aliases: GeneAliases = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write one row per (cell type, perturbation) as CSV.")
    ] = None,
    show_missing: Annotated[int, typer.Option("--show-missing", help="How many uncovered genes to list.")] = 20,
) -> None:
    """Report which perturbations of a data set have a vector in each gene table, per cell type."""
    if out is not None:
        check_output(out, "file")
    from ptrag.data.embeddings import coverage, read_gene_table
    from ptrag.data.io import read_perturbseq

    if out is not None and out.suffix.lower() != ".csv":
        raise PtragError(f"--out {out}: the coverage report is written as .csv.")
    if not genes:
        raise PtragError("pass at least one gene table with --genes.")
    tables = {lab: read_gene_table(p, aliases=gene_aliases) for lab, p in zip(_labels(genes), genes, strict=True)}
    d = read_perturbseq(data, spec, backed=backed)
    obs = d.obs[~d.obs["is_control"]]
    groups = obs.groupby(["cell_type", "perturbation"], observed=True).size().rename("n_cells").reset_index()
    if groups.empty:
        raise PtragError(f"{data}: no perturbed cells besides controls ({spec.control!r}).")
    cov = coverage(groups, tables, d.spec.control)
    labels = list(tables) + (["any_table"] if len(tables) > 1 else [])
    title = f"{data.name}: perturbations with a gene vector: covered/all (cells covered)"
    console.print(_coverage_table(title, cov, labels))
    _report_uncovered(cov, "any table" if len(tables) > 1 else labels[0], show_missing)
    if out is not None:
        atomic_write_csv(out, cov)
        console.print(f"coverage written to {out}")


def embed_text_cmd(
    summaries: Annotated[Path, typer.Option("--summaries", help="JSON object {gene symbol: summary text}.")],
    out: OutTable,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per forward pass.")] = 64,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Local sentence-transformers model folder (default: bundled all-MiniLM-L6-v2)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, ... or auto.")] = "auto",
    long_text: Annotated[
        str, typer.Option("--long-text", help="chunk (average windows of a long summary) or truncate.")
    ] = "chunk",
) -> None:
    """Embed gene summaries with an offline sentence model (the GenePT recipe, locally)."""
    check_output(out, "file")
    from ptrag.data.embeddings import table_format, write_gene_table
    from ptrag.errors import check_choice
    from ptrag.genes.text import embed_summaries, read_summaries

    check_choice("--long-text", long_text, ("chunk", "truncate"))
    table_format(out)
    texts = read_summaries(summaries)
    start = time.perf_counter()
    table = embed_summaries(
        texts, model=model, batch_size=batch_size, device=None if device == "auto" else device, long_text=long_text
    )
    write_gene_table(table, out)
    console.print(f"{len(table)} genes x {table.dim} dims written to {out} in {time.perf_counter() - start:.1f} s")


def embed_graph_cmd(
    out: OutTable,
    edges: Annotated[
        Path | None,
        typer.Option("--edges", help="Edge list CSV[.gz] with gene symbols in its first two columns (e.g. STRING)."),
    ] = None,
    gmt: Annotated[
        Path | None, typer.Option("--gmt", help="Gene sets in GMT format (e.g. GO Biological Process).")
    ] = None,
    dim: Annotated[int, typer.Option("--dim", help="Embedding dimension.")] = 128,
    min_score: Annotated[
        float | None, typer.Option("--min-score", help="Drop edges whose weight (combined_score) is below this.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the eigen-solver's start vector.")] = 0,
) -> None:
    """Spectral gene embeddings from a network (--edges) or from gene sets (--gmt)."""
    check_output(out, "file")
    from ptrag.data.embeddings import table_format, write_gene_table
    from ptrag.genes.graph import embed_edges, embed_gene_sets, read_edges

    if (edges is None) == (gmt is None):
        raise PtragError("give exactly one of --edges (a network such as STRING) or --gmt (gene sets such as GO).")
    if min_score is not None and edges is None:
        raise PtragError("--min-score applies to --edges only.")
    table_format(out)
    start = time.perf_counter()
    if edges is not None:
        table = embed_edges(read_edges(edges, min_weight=min_score), dim=dim, seed=seed)
        table.source = str(edges)
    else:
        table = embed_gene_sets(gmt, dim=dim, seed=seed)
    write_gene_table(table, out)
    console.print(f"{len(table)} genes x {table.dim} dims written to {out} in {time.perf_counter() - start:.1f} s")


def neighbours_cmd(
    genes: GenesOpt,
    edges: Annotated[Path | None, typer.Option("--edges", help="Judge by shared edges of this network.")] = None,
    gmt: Annotated[Path | None, typer.Option("--gmt", help="Judge by shared gene sets of this GMT file.")] = None,
    k: Annotated[int, typer.Option("--k", help="Nearest neighbours per gene.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random pairs.")] = 0,
) -> None:
    """How often a gene's nearest neighbours share a gene set / an edge, against random pairs."""
    from ptrag.data.embeddings import load_gene_tables
    from ptrag.genes.graph import read_edges, read_gmt
    from ptrag.genes.neighbours import neighbour_sharing_rate, shared_genes

    if (edges is None) == (gmt is None):
        raise PtragError("give exactly one of --edges or --gmt as the knowledge to judge neighbours by.")
    table = load_gene_tables(genes)
    knowledge = read_gmt(gmt) if gmt is not None else read_edges(edges)[["a", "b"]]
    knn, rand = neighbour_sharing_rate(table, knowledge, k=k, seed=seed)
    n = len(shared_genes(table, knowledge))
    ratio = f"{knn / rand:.1f}x" if rand > 0 else "inf"
    console.print(
        f"{n} genes; share a {'gene set' if gmt is not None else 'edge'} with a gene: "
        f"{k} nearest neighbours {knn:.3f}, random partners {rand:.3f} ({ratio})"
    )


def register(app: typer.Typer) -> None:
    """Add the ``genes`` command group."""
    genes_app.command("coverage")(coverage_cmd)
    genes_app.command("embed-text")(embed_text_cmd)
    genes_app.command("embed-graph")(embed_graph_cmd)
    genes_app.command("neighbours")(neighbours_cmd)
    app.add_typer(genes_app, name="genes")
