"""Names shared by the synthetic-benchmark modules: labels, ``uns`` keys and file names.

They live here, below every ``synthetic_*`` module, so that those modules import them without a
cycle; :mod:`ptrag.data.synthetic` re-exports them.
"""

from __future__ import annotations

CONTROL_LABEL = "non-targeting"
"""Label of non-targeting control cells in the ``gene`` obs column."""
GROUND_TRUTH_KEY = "ptrag_ground_truth"
"""``adata.uns`` key of the ground truth (string arrays ``cell_type``, ``query``, ``informative``)."""
SIMULATION_KEY = "ptrag_simulation"
"""``adata.uns`` key of the simulation's parameters and module states."""

DATA_FILE = "perturbseq.h5ad"
GENES_FILE = "genept.pkl"
GROUND_TRUTH_FILE = "ground_truth.csv"

GT_COLUMNS = ("cell_type", "query", "informative")
"""Columns of the ground-truth table, in order."""
