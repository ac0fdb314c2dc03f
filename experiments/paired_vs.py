"""Table 1 of an experiment folder with every model tested against one reference model.

    python experiments/paired_vs.py EXPERIMENT_DIR REFERENCE_MODEL

Pools the test groups of every seed and target exactly as Table 1 does (one sample per
(seed, cell type, perturbation)), runs the paired Wilcoxon test of each model against
REFERENCE_MODEL for every metric (BH over the table), writes EXPERIMENT_DIR/tables/vs_<REF>/
and prints its Table 1. Example: is PT-RAG significantly worse than STATE+GenePT?

    python experiments/paired_vs.py synth3 state_genept
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ptrag.eval.tables import write_comparison
from ptrag.experiments.cross_celltype import pooled_metrics


def main(out: Path, reference: str) -> None:
    dirs = {}
    for d in sorted(out.glob("seed*/*/eval")):
        if (d / "metrics.parquet").is_file():
            dirs[(int(re.sub(r"\D", "", d.parent.parent.name)), d.parent.name)] = d
    if not dirs:
        sys.exit(f"{out}: no seed*/<target>/eval/metrics.parquet; is it an experiment folder?")
    _, pooled, mode = pooled_metrics(dirs)
    dest = out / "tables" / f"vs_{reference}"
    write_comparison(pooled, mode, dest, reference=reference, test="wilcoxon")
    print((dest / "table_all.md").read_text())
    print(f"(paired Wilcoxon against {reference}, BH; tables and q-values in {dest})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), sys.argv[2])
