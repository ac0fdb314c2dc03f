"""Which cell types a pt_rag_response run reads flat or without the transfer, and why (``ptrag.nn.readout``).

Usage: ``python experiments/flat_readout.py RUN [RUN ...]`` (run folders of ``ptrag train``).

Per run and cell type it prints the training entries measured (``n``), the z-score of the best
temperature's mean leave-one-out gain over equal weights (the rule keeps the softmax above
``MARGIN_SE``), the mean leave-one-out Pearson correlation at each temperature and with equal
weights, and ``FLAT`` where the readout weighs equally; then the transfer choice: the mean
leave-one-out squared error of the whole readout with and without the transfer, and
``NO-TRANSFER`` where the cell type reads without it. The database depends on the run's
training groups only, so a run trained for one step (``--max-steps 1``) gives the same answer.
"""

from __future__ import annotations

import sys

from ptrag.nn.readout import (
    TEMPERATURES,
    cell_type_fits,
    flat_cell_types,
    leave_one_out_fit,
    model_transfer,
    ranking_z,
    transfer_errors,
)
from ptrag.train.predict import load_plan


def describe(run: str) -> str:
    """One line per run: each cell type's ``n``, z, fits and choice."""
    model = load_plan(run).model
    db, cfg = model.responses, model.cfg
    transfer = model_transfer(db, cfg)
    fit = leave_one_out_fit(db, cfg.topk, cfg.response_candidates, transfer)
    flat = flat_cell_types(db, cfg.topk, cfg.response_candidates, transfer)
    errors = [e[1:] for e in transfer_errors(db, cfg.topk, cfg.response_candidates)]
    parts = []
    for t, (name, f) in enumerate(zip(db.cell_type_names, cell_type_fits(db, fit), strict=True)):
        n = f.shape[1]
        keep = transfer if isinstance(transfer, bool) else bool(transfer[t])
        name += f" (error {errors[t][0]:.5f} with the transfer, {errors[t][1]:.5f} without" + (
            ")" if keep else "; NO-TRANSFER)"
        )
        if n < 2:
            parts.append(f"{name}: n={n}")
            continue
        fits = "/".join(f"{x:.2f}" for x in f.mean(1).tolist())
        parts.append(f"{name}: n={n} z={ranking_z(f):.1f} fit {fits}" + (" FLAT" if flat[t] else ""))
    return f"{run}  " + " | ".join(parts)


def main(runs: list[str]) -> int:
    """Print :func:`describe` for each run."""
    if not runs:
        print(__doc__)
        return 2
    print("fit: mean leave-one-out Pearson at T = " + ", ".join(map(str, TEMPERATURES)) + " and equal weights")
    for run in runs:
        print(describe(run))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
