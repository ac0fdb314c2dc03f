"""The embedded synthetic cross-cell-type Perturb-seq benchmark.

:func:`simulate` builds a small, fully seeded Perturb-seq data set in which the question
PT-RAG asks ("which retrieved perturbations are informative for this query *in this cell
type*?") has a known answer:

* genes (the perturbed ones) belong to functional **modules**, each split into
  **sub-modules**; a knock-down acts through the transcriptional **program** of its
  sub-module;
* per (cell type, module) the module is *coincident* (all its sub-modules share one program),
  *divergent* (each sub-module has its own program) or *inactive* (no program: a knock-down
  only lowers its own target), and programs, activities and effect sizes differ between cell
  types, so the informative neighbours of a query depend on the cell type;
* a GenePT-format gene-embedding table whose geometry reflects module membership (weakly the
  sub-module) with noise and with confusers (cross-module "families", mis-annotated genes), so
  cosine retrieval is informative but imperfect and blind to the cell type;
* the ground truth: for every (cell type, query perturbation) the other perturbations whose
  true mean effect in that cell type has cosine similarity above a threshold with the query's.

Counts are negative-binomial with varying library sizes, per-cell knock-down efficiency, a
latent cell-state axis and a mild batch (``gem_group``) effect; ``X`` holds
``log1p(normalize_total(counts))`` and ``layers["counts"]`` the raw counts.

:func:`write_large_h5ad` writes a much larger, simpler Perturb-seq-like file chunk by chunk
(for streaming benchmarks) without ever holding the whole matrix in memory.

This module holds the options, the result type and :func:`simulate`; the work is done in
``synthetic_model`` (genes, programs, true effects, embeddings), ``synthetic_cells`` (counts),
``synthetic_truth`` (ground truth and statistics) and ``synthetic_files`` (files), whose public
functions are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ptrag.data.synthetic_cells import log_normalise, simulate_cells
from ptrag.data.synthetic_constants import (
    CONTROL_LABEL,
    DATA_FILE,
    GENES_FILE,
    GROUND_TRUTH_FILE,
    GROUND_TRUTH_KEY,
    SIMULATION_KEY,
)
from ptrag.data.synthetic_draws import cell_type_names
from ptrag.data.synthetic_files import write_benchmark, write_large_h5ad
from ptrag.data.synthetic_model import (
    PerturbedGenes,
    baseline_expression,
    gene_embeddings,
    measured_genes,
    module_states,
    perturbation_effects,
    perturbed_genes,
    programs,
)
from ptrag.data.synthetic_truth import (
    embedding_retrieval_precision,
    ground_truth_to_uns,
    informative_overlap,
    informative_sets,
    load_ground_truth,
    observed_deltas,
    summarize,
    true_ground_truth,
)
from ptrag.errors import PtragError

__all__ = [
    "CONTROL_LABEL",
    "DATA_FILE",
    "GENES_FILE",
    "GROUND_TRUTH_FILE",
    "GROUND_TRUTH_KEY",
    "SIMULATION_KEY",
    "SimulationConfig",
    "SyntheticBenchmark",
    "embedding_retrieval_precision",
    "informative_overlap",
    "informative_sets",
    "load_ground_truth",
    "observed_deltas",
    "simulate",
    "summarize",
    "write_benchmark",
    "write_large_h5ad",
]

log = logging.getLogger("ptrag")


@dataclass
class SimulationConfig:
    """Options of :func:`simulate` (every field has a default; see ``docs/synthetic.md``).

    Parameters
    ----------
    n_cell_types
        Number of cell types (named ``cellA``, ``cellB``, ...; at most 26).
    n_perturbations
        Number of perturbed genes (besides the non-targeting control).
    n_genes
        Number of measured genes (``var``); perturbed genes are measured genes where possible
        (at most half of the measured genes are perturbed genes).
    n_modules
        Number of functional modules the perturbed genes belong to.
    submodules_per_module
        Sub-modules per module (1 = no divergence possible).
    cells_per_perturbation
        Cells per (cell type, perturbation).
    controls_per_cell_type
        Non-targeting control cells per cell type.
    n_batches
        ``gem_group`` batches per cell type (cells are split at random between them).
    embedding_dim
        Dimension of the gene-embedding table (real GenePT: 1536).
    embedding_noise
        Standard deviation (relative to the unit module signal) of the isotropic noise in the
        gene embeddings; larger means worse cosine retrieval.
    informative_threshold
        Cosine similarity between true mean effects above which another perturbation counts as
        informative for a query in a cell type.
    inactive_fraction
        Probability that a module is inactive in a cell type.
    divergent_fraction
        Probability that an active module's sub-modules have diverging programs in a cell type.
    program_correlation
        Correlation of a module's (or sub-module's) program between two cell types.
    effect_size
        L2 norm (natural-log fold change over all genes) of a typical knock-down's program.
    counts_per_gene
        Mean UMI counts per gene and cell (the library size scales with ``n_genes``).
    seed
        Seed of every random draw; equal seeds and options give bitwise-identical files.
    """

    n_cell_types: int = 4
    n_perturbations: int = 120
    n_genes: int = 500
    n_modules: int = 12
    submodules_per_module: int = 2
    cells_per_perturbation: int = 64
    controls_per_cell_type: int = 320
    n_batches: int = 2
    embedding_dim: int = 256
    embedding_noise: float = 2.0
    informative_threshold: float = 0.5
    inactive_fraction: float = 0.2
    divergent_fraction: float = 0.5
    program_correlation: float = 0.8
    effect_size: float = 5.0
    counts_per_gene: float = 0.7
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`~ptrag.errors.PtragError` naming the first invalid option."""
        ints = {
            "n_cell_types": (1, 26),
            "n_perturbations": (2, 100_000),
            "n_genes": (20, 100_000),
            "n_modules": (1, 10_000),
            "submodules_per_module": (1, 100),
            "cells_per_perturbation": (2, 100_000),
            "controls_per_cell_type": (2, 1_000_000),
            "n_batches": (1, 100),
            "embedding_dim": (4, 100_000),
            "seed": (0, 2**63 - 1),
        }
        for name, (lo, hi) in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise PtragError(f"option {name} must be an integer, got {value!r}.")
            if not lo <= value <= hi:
                raise PtragError(f"option {name} must lie in [{lo}, {hi}], got {value}.")
        floats = {
            "embedding_noise": (0.0, 1e6, True),
            "informative_threshold": (-1.0, 1.0, False),
            "inactive_fraction": (0.0, 1.0, False),
            "divergent_fraction": (0.0, 1.0, True),
            "program_correlation": (0.0, 1.0, True),
            "effect_size": (0.0, 100.0, True),
            "counts_per_gene": (1e-3, 1e6, True),
        }
        for name, (lo, hi, hi_closed) in floats.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise PtragError(f"option {name} must be a number, got {value!r}.")
            ok = lo <= value <= hi if hi_closed else lo <= value < hi
            if not math.isfinite(float(value)) or not ok:
                bracket = "]" if hi_closed else ")"
                raise PtragError(f"option {name} must lie in [{lo}, {hi}{bracket}, got {value}.")
        n_sub = self.n_modules * self.submodules_per_module
        if self.n_perturbations < 2 * n_sub:
            raise PtragError(
                f"option n_perturbations ({self.n_perturbations}) must be at least 2 x n_modules "
                f"({self.n_modules}) x submodules_per_module ({self.submodules_per_module}) = "
                f"{2 * n_sub} (two perturbations per sub-module): lower n_modules or raise "
                "n_perturbations."
            )
        if self.cells_per_perturbation < self.n_batches or self.controls_per_cell_type < self.n_batches:
            raise PtragError(
                f"option cells_per_perturbation ({self.cells_per_perturbation}) and option "
                f"controls_per_cell_type ({self.controls_per_cell_type}) must be at least "
                f"n_batches ({self.n_batches}): raise them or lower n_batches."
            )

    def to_dict(self) -> dict[str, Any]:
        """The options as a plain dict (for ``adata.uns`` and logs)."""
        return dataclasses.asdict(self)


@dataclass
class SyntheticBenchmark:
    """The output of :func:`simulate`.

    Attributes
    ----------
    adata
        Cells x genes. ``X``: float32 CSR ``log1p(normalize_total(counts))``;
        ``layers["counts"]``: float32 CSR integer counts; ``obs``: ``gene`` (perturbed gene or
        ``non-targeting``), ``cell_type``, ``gem_group``; ``var``: ``module``, ``submodule``,
        ``is_perturbed``; ``uns``: ``log1p``, ``ptrag_ground_truth``, ``ptrag_simulation``.
    gene_table
        GenePT-like embeddings: symbol -> float32 vector (unit norm) for every perturbed gene.
    ground_truth
        One row per informative pair: ``cell_type``, ``query``, ``informative`` (str), sorted
        by cell type, query (in ``perturbations`` order) and decreasing true-effect cosine. A
        (cell type, query) without rows has no informative perturbation (see
        :func:`informative_sets`).
    true_effects
        Per cell type, the true mean effect (natural-log fold change of the expected counts,
        perturbations x genes, rows in ``perturbations`` order); not written to disk.
    perturbations
        The perturbed genes in table order.
    """

    adata: ad.AnnData
    gene_table: dict[str, np.ndarray]
    ground_truth: pd.DataFrame
    true_effects: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    perturbations: list[str] = field(default_factory=list, repr=False)

    @property
    def config(self) -> SimulationConfig:
        """The options the benchmark was simulated with."""
        return SimulationConfig(**dict(self.adata.uns[SIMULATION_KEY]["config"]))


# --------------------------------------------------------------------------------------------
# simulate


def simulate(config: SimulationConfig | None = None, **overrides: Any) -> SyntheticBenchmark:
    """Simulate the synthetic cross-cell-type Perturb-seq benchmark.

    Parameters
    ----------
    config
        The options; the defaults of :class:`SimulationConfig` when ``None``.
    **overrides
        Fields of :class:`SimulationConfig` that replace those of ``config``.

    Returns
    -------
    SyntheticBenchmark
        The AnnData, the gene-embedding table and the ground truth.

    Raises
    ------
    PtragError
        If an option is unknown or invalid.
    """
    c = _resolve_config(config, overrides)
    seq = np.random.SeedSequence(c.seed)
    rng_genes, rng_prog, rng_emb, rng_cells = (np.random.default_rng(s) for s in seq.spawn(4))
    cell_types = cell_type_names(c.n_cell_types)
    # genes (rng_genes), then the latent model (rng_prog), the cells (rng_cells), the embeddings (rng_emb)
    genes = perturbed_genes(rng_genes, c.n_perturbations, c.n_modules, c.submodules_per_module)
    var, target_col = measured_genes(rng_genes, genes, c.n_genes)
    base = baseline_expression(rng_prog, c, int(var["is_perturbed"].sum()))
    state = module_states(rng_prog, c)
    program, activity = programs(rng_prog, c, state, base.w_resp)
    lfc = perturbation_effects(rng_prog, c, genes, target_col, program, activity, base.w_resp)
    counts, obs = simulate_cells(rng_cells, c, genes.names, cell_types, base, lfc)
    x, target_sum = log_normalise(counts)
    adata = ad.AnnData(X=x, obs=obs, var=var, layers={"counts": counts})
    adata.uns["log1p"] = {"base": None}
    ground_truth, true_effects = true_ground_truth(lfc, cell_types, genes.names, c.informative_threshold)
    adata.uns[GROUND_TRUTH_KEY] = ground_truth_to_uns(ground_truth)
    adata.uns[SIMULATION_KEY] = _simulation_uns(c, target_sum, cell_types, state, genes)
    gene_table = gene_embeddings(rng_emb, c, genes.module_of, genes.sub_of, genes.names)
    log.info(
        "simulated %d cells x %d genes: %d cell types, %d perturbations, %d modules",
        adata.n_obs,
        adata.n_vars,
        c.n_cell_types,
        c.n_perturbations,
        c.n_modules,
    )
    return SyntheticBenchmark(adata, gene_table, ground_truth, true_effects, genes.names)


def _resolve_config(config: SimulationConfig | None, overrides: dict[str, Any]) -> SimulationConfig:
    """``config`` (default options when ``None``) with ``overrides`` applied, validated."""
    config = config or SimulationConfig()
    known = {f.name for f in dataclasses.fields(SimulationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PtragError(f"unknown simulation option {unknown[0]!r}: choose among {', '.join(sorted(known))}.")
    config = dataclasses.replace(config, **overrides)
    config.validate()
    return config


def _simulation_uns(
    c: SimulationConfig, target_sum: float, cell_types: list[str], state: np.ndarray, genes: PerturbedGenes
) -> dict[str, Any]:
    """The ``adata.uns[SIMULATION_KEY]`` record: options, normalisation, module states, labels."""
    M, P, mwidth = c.n_modules, c.n_perturbations, genes.mwidth
    module_of, sub_letter = genes.module_of, genes.sub_letter
    return {
        "config": c.to_dict(),
        "target_sum": float(target_sum),
        "cell_types": np.asarray(cell_types, dtype=object),
        "modules": np.asarray([f"MOD{m:0{mwidth}d}" for m in range(M)], dtype=object),
        "module_state": state.astype(str).astype(object),  # cell types x modules
        "perturbations": np.asarray(genes.names, dtype=object),
        "perturbation_module": np.asarray([f"MOD{m:0{mwidth}d}" for m in module_of], dtype=object),
        "perturbation_submodule": np.asarray(
            [f"MOD{module_of[i]:0{mwidth}d}{sub_letter[i]}" for i in range(P)], dtype=object
        ),
    }
