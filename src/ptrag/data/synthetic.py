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
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.errors import PtragError, atomic_path

log = logging.getLogger("ptrag")

CONTROL_LABEL = "non-targeting"
"""Label of non-targeting control cells in the ``gene`` obs column."""
GROUND_TRUTH_KEY = "ptrag_ground_truth"
"""``adata.uns`` key of the ground truth (string arrays ``cell_type``, ``query``, ``informative``)."""
SIMULATION_KEY = "ptrag_simulation"
"""``adata.uns`` key of the simulation's parameters and module states."""

DATA_FILE = "perturbseq.h5ad"
GENES_FILE = "genept.pkl"
GROUND_TRUTH_FILE = "ground_truth.csv"

_GT_COLUMNS = ("cell_type", "query", "informative")
_CELL_BLOCK = 8192  # cells per negative-binomial draw in simulate()


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
# helpers


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def _sparse_unit(rng: np.random.Generator, n_genes: int, size: int, weights: np.ndarray | None = None) -> np.ndarray:
    """A unit-norm vector over ``n_genes`` with ``size`` non-zero Gaussian entries.

    The non-zero genes are drawn without replacement with probabilities ``weights``.
    """
    v = np.zeros(n_genes)
    idx = rng.choice(n_genes, size=min(size, n_genes), replace=False, p=weights)
    v[idx] = rng.normal(size=idx.size)
    return _unit(v)


def _mix(
    rng: np.random.Generator, base: np.ndarray, rho: float, size: int, weights: np.ndarray | None = None
) -> np.ndarray:
    """A unit vector with correlation about ``rho`` to the unit vector ``base``."""
    other = _sparse_unit(rng, base.size, size, weights)
    return _unit(rho * base + math.sqrt(max(0.0, 1.0 - rho**2)) * other)


def _cosine_matrix(x: np.ndarray) -> np.ndarray:
    u = _unit(np.asarray(x, dtype=np.float64))
    return u @ u.T


def _cell_type_names(n: int) -> list[str]:
    return [f"cell{chr(ord('A') + i)}" for i in range(n)]


def _nb_counts(rng: np.random.Generator, mean: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Negative-binomial counts (gamma-Poisson) with the given means and inverse dispersions."""
    lam = rng.gamma(shape=theta, scale=mean / theta)
    return rng.poisson(lam)


def _split_sizes(rng: np.random.Generator, total: int, n_parts: int, minimum: int) -> np.ndarray:
    """``n_parts`` positive sizes summing to ``total``, each >= ``minimum``, uneven at random."""
    extra = total - n_parts * minimum
    weights = rng.dirichlet(np.full(n_parts, 3.0))
    return minimum + rng.multinomial(extra, weights)


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
    config = config or SimulationConfig()
    known = {f.name for f in dataclasses.fields(SimulationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PtragError(f"unknown simulation option {unknown[0]!r}: choose among {', '.join(sorted(known))}.")
    config = dataclasses.replace(config, **overrides)
    config.validate()
    c = config
    seq = np.random.SeedSequence(c.seed)
    rng_genes, rng_prog, rng_emb, rng_cells = (np.random.default_rng(s) for s in seq.spawn(4))

    G, P, T, M, S = c.n_genes, c.n_perturbations, c.n_cell_types, c.n_modules, c.submodules_per_module
    cell_types = _cell_type_names(T)

    # ---- perturbed genes: modules, sub-modules, names -------------------------------------
    sub_sizes = _split_sizes(rng_genes, P, M * S, 2).reshape(M, S)
    module_of = np.repeat(np.arange(M), sub_sizes.sum(axis=1))
    sub_of = np.repeat(np.arange(M * S), sub_sizes.ravel())  # global sub-module index
    width = max(3, len(str(int(sub_sizes.sum(axis=1).max()) - 1)))
    mwidth = max(2, len(str(M - 1)))
    perts: list[str] = []
    for m in range(M):
        perts += [f"MOD{m:0{mwidth}d}_G{j:0{width}d}" for j in range(int(sub_sizes[m].sum()))]
    sub_letter = [chr(ord("a") + (k % S)) if S <= 26 else str(k % S) for k in sub_of]

    # ---- measured genes ---------------------------------------------------------------------
    n_measured_targets = min(P, G // 2)
    measured_targets = np.sort(rng_genes.choice(P, size=n_measured_targets, replace=False))
    n_background = G - n_measured_targets
    gwidth = max(4, len(str(n_background)))
    var_names = [perts[i] for i in measured_targets] + [f"GENE{i:0{gwidth}d}" for i in range(1, n_background + 1)]
    target_col = np.full(P, -1)
    target_col[measured_targets] = np.arange(n_measured_targets)
    var = pd.DataFrame(
        {
            "module": [f"MOD{module_of[i]:0{mwidth}d}" for i in measured_targets] + [""] * n_background,
            "submodule": [f"MOD{module_of[i]:0{mwidth}d}{sub_letter[i]}" for i in measured_targets]
            + [""] * n_background,
            "is_perturbed": np.r_[np.ones(n_measured_targets, bool), np.zeros(n_background, bool)],
        },
        index=pd.Index(var_names, name=None),
    )

    # ---- baseline expression, dispersion, batch effects, cell-state axis ---------------------
    base_shared = rng_prog.normal(0.0, 1.8, G)
    # perturbed genes are expressed genes (screens target expressed, mostly essential genes)
    base_shared[:n_measured_targets] = rng_prog.normal(1.5, 0.8, n_measured_targets)
    log_prop = np.empty((T, G))
    for t in range(T):
        b = base_shared + rng_prog.normal(0.0, 0.5, G)
        log_prop[t] = b - np.log(np.exp(b).sum())
    theta = np.exp(rng_prog.normal(math.log(6.0), 0.5, G))
    # responder genes of programs are drawn preferring expressed genes
    w_resp = np.exp(0.5 * base_shared)
    w_resp /= w_resp.sum()
    batch_lfc = rng_prog.normal(0.0, 0.08, (T, c.n_batches, G))
    batch_lib = np.exp(rng_prog.normal(0.0, 0.1, (T, c.n_batches)))
    state_loading = rng_prog.normal(0.0, 0.15, (T, G))

    # ---- module states and programs ----------------------------------------------------------
    state = np.empty((T, M), dtype=object)
    for m in range(M):
        while True:
            active = rng_prog.random(T) >= c.inactive_fraction
            divergent = rng_prog.random(T) < c.divergent_fraction
            if active.any():  # every module acts in at least one cell type
                break
        for t in range(T):
            if not active[t]:
                state[t, m] = "inactive"
            elif divergent[t] and S > 1:
                state[t, m] = "divergent"
            else:
                state[t, m] = "coincident"
    k_prog = max(5, round(0.08 * G))
    rho = c.program_correlation
    module_base = [_sparse_unit(rng_prog, G, k_prog, w_resp) for _ in range(M)]
    sub_base = [_sparse_unit(rng_prog, G, k_prog, w_resp) for _ in range(M * S)]
    program = np.zeros((T, M * S, G))  # per cell type, per global sub-module, unit norm or 0
    activity = np.zeros((T, M))
    for t in range(T):
        for m in range(M):
            a_tm = _mix(rng_prog, module_base[m], rho, k_prog, w_resp)
            b_tm = [_mix(rng_prog, sub_base[m * S + j], rho, k_prog, w_resp) for j in range(S)]
            activity[t, m] = rng_prog.uniform(0.6, 1.4)
            for j in range(S):
                if state[t, m] == "coincident":
                    program[t, m * S + j] = a_tm
                elif state[t, m] == "divergent":
                    program[t, m * S + j] = _unit(0.3 * a_tm + b_tm[j])
            if state[t, m] == "inactive":
                activity[t, m] = 0.0

    # ---- per-perturbation effects ------------------------------------------------------------
    strength = np.exp(rng_prog.normal(0.0, 0.3, P))[None, :] * np.exp(rng_prog.normal(0.0, 0.2, (T, P)))
    idio_base = [_sparse_unit(rng_prog, G, max(3, k_prog // 2), w_resp) for _ in range(P)]
    knockdown = rng_prog.uniform(0.6, 0.9, P)  # fraction of the target's expression removed
    lfc = np.zeros((T, P, G))  # true mean effect: log fold change of the expected counts
    for t in range(T):
        for p in range(P):
            idio = _mix(rng_prog, idio_base[p], 0.8, max(3, k_prog // 2), w_resp)
            lfc[t, p] = c.effect_size * (
                activity[t, module_of[p]] * strength[t, p] * program[t, sub_of[p]] + 0.3 * idio
            )
            if target_col[p] >= 0:
                lfc[t, p, target_col[p]] += math.log(1.0 - knockdown[p])

    # ---- cells -------------------------------------------------------------------------------
    lib_mean = math.log(c.counts_per_gene * G)
    pert_names = np.asarray([CONTROL_LABEL, *perts], dtype=object)
    blocks, obs_parts = [], []
    for t in range(T):
        n_per = np.r_[c.controls_per_cell_type, np.full(P, c.cells_per_perturbation)]
        code = np.repeat(np.arange(P + 1), n_per)  # 0 = control, p + 1 = perturbation p
        n = code.size
        batch = rng_cells.permutation(np.arange(n) % c.n_batches)
        # knock-down efficiency per cell (incomplete CRISPRi); controls get none
        eff = np.where(code > 0, rng_cells.beta(5.0, 1.5, n), 0.0)
        log_lib = rng_cells.normal(lib_mean, 0.35, n) + np.log(batch_lib[t, batch])
        z = rng_cells.normal(0.0, 1.0, n)  # latent cell-state axis
        lfc_t = np.vstack([np.zeros((1, G)), lfc[t]])
        for lo in range(0, n, _CELL_BLOCK):  # bounded memory; fixed block size keeps draws stable
            r = slice(lo, min(n, lo + _CELL_BLOCK))
            log_mu = (
                log_prop[t][None, :]
                + batch_lfc[t, batch[r]]
                + eff[r, None] * lfc_t[code[r]]
                + z[r, None] * state_loading[t][None, :]
                + log_lib[r, None]
            )
            counts = _nb_counts(rng_cells, np.exp(log_mu), theta[None, :])
            blocks.append(sp.csr_matrix(counts.astype(np.float32)))
        obs_parts.append(
            pd.DataFrame(
                {
                    "gene": pert_names[code],
                    "cell_type": cell_types[t],
                    "gem_group": [f"{cell_types[t]}_{b + 1}" for b in batch],
                }
            )
        )
    counts = sp.vstack(blocks, format="csr", dtype=np.float32)
    counts.sort_indices()
    obs = pd.concat(obs_parts, ignore_index=True)
    obs.index = pd.Index([f"cell{i:06d}" for i in range(len(obs))])
    for col, cats in (
        ("gene", [CONTROL_LABEL, *perts]),
        ("cell_type", cell_types),
        ("gem_group", [f"{ct}_{b + 1}" for ct in cell_types for b in range(c.n_batches)]),
    ):
        obs[col] = pd.Categorical(obs[col], categories=cats)

    x, target_sum = _log_normalise(counts)
    adata = ad.AnnData(X=x, obs=obs, var=var, layers={"counts": counts})
    adata.uns["log1p"] = {"base": None}

    # ---- ground truth ------------------------------------------------------------------------
    rows = []
    true_effects = {}
    for t, ct in enumerate(cell_types):
        true_effects[ct] = lfc[t].astype(np.float32)
        cos = _cosine_matrix(lfc[t])
        np.fill_diagonal(cos, -np.inf)
        for p in range(P):
            order = np.argsort(-cos[p], kind="stable")
            rows += [(ct, perts[p], perts[q]) for q in order if cos[p, q] > c.informative_threshold]
    ground_truth = pd.DataFrame(rows, columns=["cell_type", "query", "informative"], dtype=object)
    adata.uns[GROUND_TRUTH_KEY] = _ground_truth_to_uns(ground_truth)
    adata.uns[SIMULATION_KEY] = {
        "config": c.to_dict(),
        "target_sum": float(target_sum),
        "cell_types": np.asarray(cell_types, dtype=object),
        "modules": np.asarray([f"MOD{m:0{mwidth}d}" for m in range(M)], dtype=object),
        "module_state": state.astype(str).astype(object),  # cell types x modules
        "perturbations": np.asarray(perts, dtype=object),
        "perturbation_module": np.asarray([f"MOD{m:0{mwidth}d}" for m in module_of], dtype=object),
        "perturbation_submodule": np.asarray(
            [f"MOD{module_of[i]:0{mwidth}d}{sub_letter[i]}" for i in range(P)], dtype=object
        ),
    }

    # ---- gene embeddings (GenePT stand-in) ---------------------------------------------------
    gene_table = _embeddings(rng_emb, c, module_of, sub_of, perts)
    log.info(
        "simulated %d cells x %d genes: %d cell types, %d perturbations, %d modules",
        adata.n_obs,
        adata.n_vars,
        T,
        P,
        M,
    )
    return SyntheticBenchmark(adata, gene_table, ground_truth, true_effects, perts)


def _log_normalise(counts: sp.csr_matrix) -> tuple[sp.csr_matrix, float]:
    """scanpy ``normalize_total`` (median total) + ``log1p``, as float32 CSR."""
    import scanpy as sc

    tmp = ad.AnnData(X=counts.copy())
    totals = np.asarray(counts.sum(axis=1)).ravel()
    target_sum = float(np.median(totals[totals > 0]))
    sc.pp.normalize_total(tmp, target_sum=target_sum)
    sc.pp.log1p(tmp)
    x = sp.csr_matrix(tmp.X, dtype=np.float32)
    return x, target_sum


def _embeddings(
    rng: np.random.Generator,
    c: SimulationConfig,
    module_of: np.ndarray,
    sub_of: np.ndarray,
    perts: list[str],
) -> dict[str, np.ndarray]:
    """Unit-norm embeddings: module + weak sub-module + confusers + noise + a common offset."""
    D, P, M = c.embedding_dim, c.n_perturbations, c.n_modules
    scale = 1.0 / math.sqrt(D)
    module_center = rng.normal(0.0, scale, (M, D))
    sub_center = rng.normal(0.0, scale, (M * c.submodules_per_module, D))
    n_families = max(2, P // 8)
    family_center = rng.normal(0.0, scale, (n_families, D))
    family = rng.integers(0, n_families, P)
    # confuser 1: some genes are "annotated" with another module's function
    apparent_module = module_of.copy()
    mis = rng.random(P) < 0.1
    if M > 1:
        shift = rng.integers(1, M, P)
        apparent_module[mis] = (module_of[mis] + shift[mis]) % M
    common = rng.normal(0.0, scale, D)  # text embeddings share a large common direction
    noise = rng.normal(0.0, scale, (P, D))
    emb = (
        module_center[apparent_module]
        + 0.35 * sub_center[sub_of]
        + 0.6 * family_center[family]  # confuser 2: cross-module families
        + c.embedding_noise * noise
    )
    emb = _unit(_unit(emb) + 1.2 * common)
    return {g: emb[i].astype(np.float32) for i, g in enumerate(perts)}


def _ground_truth_to_uns(gt: pd.DataFrame) -> dict[str, np.ndarray]:
    return {col: np.asarray([str(v) for v in gt[col]], dtype=object) for col in _GT_COLUMNS}


def _ground_truth_frame(cell_type, query, informative) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cell_type": [str(v) for v in cell_type],
            "query": [str(v) for v in query],
            "informative": [str(v) for v in informative],
        },
        dtype=object,
    )


def informative_sets(
    ground_truth: pd.DataFrame,
    cell_types: list[str] | None = None,
    queries: list[str] | None = None,
) -> dict[tuple[str, str], tuple[str, ...]]:
    """The informative set of every (cell type, query), empty ones included.

    Parameters
    ----------
    ground_truth
        Long table with columns ``cell_type``, ``query``, ``informative``.
    cell_types, queries
        The cell types and query perturbations to cover (default: those in the table);
        pairs without rows get an empty tuple.

    Returns
    -------
    dict
        ``(cell_type, query)`` -> tuple of informative perturbations in table order.
    """
    cell_types = list(dict.fromkeys(ground_truth["cell_type"])) if cell_types is None else cell_types
    queries = list(dict.fromkeys(ground_truth["query"])) if queries is None else queries
    out: dict[tuple[str, str], list[str]] = {(ct, q): [] for ct in cell_types for q in queries}
    for ct, q, inf in ground_truth[list(_GT_COLUMNS)].itertuples(index=False):
        if (ct, q) in out:
            out[(ct, q)].append(inf)
    return {k: tuple(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# files


def write_benchmark(bench: SyntheticBenchmark, out_dir: str | Path) -> dict[str, Path]:
    """Write the benchmark's three files atomically.

    Parameters
    ----------
    bench
        The output of :func:`simulate`.
    out_dir
        Folder to write into (created if missing); existing files of the same names are
        replaced.

    Returns
    -------
    dict[str, pathlib.Path]
        ``"data"`` -> ``out_dir/perturbseq.h5ad``, ``"genes"`` -> ``out_dir/genept.pkl`` (GenePT
        pickle: dict symbol -> list of floats), ``"ground_truth"`` -> ``out_dir/ground_truth.csv``
        (columns ``cell_type``, ``query``, ``informative``: one row per informative pair).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PtragError(f"--out {out} exists and is not a folder: pass a folder path.")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "data": out / DATA_FILE,
        "genes": out / GENES_FILE,
        "ground_truth": out / GROUND_TRUTH_FILE,
    }
    with atomic_path(paths["data"]) as tmp:
        bench.adata.write_h5ad(tmp, compression="gzip")
    table = {g: [float(x) for x in np.asarray(v, dtype=np.float32)] for g, v in bench.gene_table.items()}
    with atomic_path(paths["genes"]) as tmp, open(tmp, "wb") as fh:
        pickle.dump(table, fh, protocol=4)
    with atomic_path(paths["ground_truth"]) as tmp:
        bench.ground_truth[list(_GT_COLUMNS)].to_csv(tmp, index=False, lineterminator="\n")
    return paths


def load_ground_truth(path_or_adata: str | Path | ad.AnnData) -> pd.DataFrame:
    """Read the ground truth of a synthetic benchmark.

    Parameters
    ----------
    path_or_adata
        ``ground_truth.csv``, the benchmark's ``.h5ad`` (read from ``uns["ptrag_ground_truth"]``
        without loading the matrix) or an in-memory AnnData.

    Returns
    -------
    pandas.DataFrame
        One row per informative pair: ``cell_type``, ``query``, ``informative`` (str).

    Raises
    ------
    PtragError
        If the file is missing or holds no ground truth.
    """
    if isinstance(path_or_adata, ad.AnnData):
        uns = path_or_adata.uns.get(GROUND_TRUTH_KEY)
        if uns is None:
            raise PtragError(f"the AnnData has no uns[{GROUND_TRUTH_KEY!r}]: it is not a ptrag synthetic benchmark.")
        return _ground_truth_frame(uns["cell_type"], uns["query"], uns["informative"])
    path = Path(path_or_adata)
    if not path.is_file():
        raise PtragError(f"ground-truth file {path} does not exist: pass ground_truth.csv or the .h5ad.")
    if path.suffix == ".h5ad":
        with h5py.File(path, "r") as f:
            key = f"uns/{GROUND_TRUTH_KEY}"
            if key not in f:
                raise PtragError(f"{path} has no uns[{GROUND_TRUTH_KEY!r}]: it is not a ptrag synthetic benchmark.")
            uns = ad.io.read_elem(f[key])
        return _ground_truth_frame(uns["cell_type"], uns["query"], uns["informative"])
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise PtragError(f"cannot read ground-truth CSV {path}: {exc}") from exc
    missing = [col for col in ("cell_type", "query", "informative") if col not in df.columns]
    if missing:
        raise PtragError(
            f"ground-truth CSV {path} lacks column {missing[0]!r}: expected cell_type, query, informative."
        )
    return _ground_truth_frame(df["cell_type"], df["query"], df["informative"])


# --------------------------------------------------------------------------------------------
# statistics


def embedding_retrieval_precision(
    gene_table: dict[str, np.ndarray],
    ground_truth: pd.DataFrame,
    k: int = 10,
    cell_types: list[str] | None = None,
) -> dict[str, float]:
    """Precision of top-``k`` cosine neighbours in the embedding against the ground truth.

    Every gene of ``gene_table`` is a query; its neighbours are the ``k`` other genes of the
    table with the most cosine-similar vectors, the same in every cell type.

    Parameters
    ----------
    gene_table
        Symbol -> embedding vector (the perturbations of the benchmark).
    ground_truth
        Long table with columns ``cell_type``, ``query``, ``informative``.
    k
        Number of neighbours.
    cell_types
        Cell types to score (default: those in ``ground_truth``).

    Returns
    -------
    dict[str, float]
        ``precision``: mean over (cell type, query) pairs with a non-empty informative set;
        ``precision_all``: mean over all pairs; ``random``: the expected precision of ``k``
        neighbours drawn at random (same pairs as ``precision``).
    """
    queries = list(gene_table)
    emb = np.stack([np.asarray(gene_table[q], dtype=np.float64) for q in queries])
    cos = _cosine_matrix(emb)
    np.fill_diagonal(cos, -np.inf)
    k = min(k, len(queries) - 1)
    top = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    neigh = {q: {queries[j] for j in top[i]} for i, q in enumerate(queries)}
    sets = informative_sets(ground_truth, cell_types, queries)
    prec = np.asarray([len(neigh[q] & set(inf)) / k for (_, q), inf in sets.items()])
    rand = np.asarray([len(inf) / (len(queries) - 1) for inf in sets.values()])
    nonempty = np.asarray([len(inf) > 0 for inf in sets.values()])
    return {
        "precision": float(prec[nonempty].mean()) if nonempty.any() else float("nan"),
        "precision_all": float(prec.mean()),
        "random": float(rand[nonempty].mean()) if nonempty.any() else float("nan"),
    }


def informative_overlap(
    ground_truth: pd.DataFrame,
    cell_types: list[str] | None = None,
    queries: list[str] | None = None,
) -> dict[str, Any]:
    """How much the informative sets of a query differ between cell types.

    Parameters
    ----------
    ground_truth
        Long table with columns ``cell_type``, ``query``, ``informative``.
    cell_types, queries
        Cell types and queries to cover (default: those in the table; pass all perturbations
        so that queries with no informative set in any cell type count too).

    Returns
    -------
    dict
        ``jaccard``: DataFrame cell type x cell type of the mean Jaccard index of the informative
        sets over queries whose two sets are not both empty; ``mean_jaccard``: mean of its
        off-diagonal entries; ``frac_queries_differ``: fraction of queries whose informative
        set is not the same in every cell type; ``mean_size``: mean informative-set size per
        cell type; ``frac_empty``: fraction of (cell type, query) pairs with an empty set.
    """
    sets = {k: set(v) for k, v in informative_sets(ground_truth, cell_types, queries).items()}
    cts = list(dict.fromkeys(ct for ct, _ in sets))
    qs = list(dict.fromkeys(q for _, q in sets))
    jac = pd.DataFrame(np.eye(len(cts)), index=cts, columns=cts)
    for i, a in enumerate(cts):
        for b in cts[i + 1 :]:
            vals = [len(sets[a, q] & sets[b, q]) / len(sets[a, q] | sets[b, q]) for q in qs if sets[a, q] or sets[b, q]]
            jac.loc[a, b] = jac.loc[b, a] = float(np.mean(vals)) if vals else float("nan")
    off = jac.to_numpy()[~np.eye(len(cts), dtype=bool)]
    differ = [len({frozenset(sets[ct, q]) for ct in cts}) > 1 for q in qs]
    return {
        "jaccard": jac,
        "mean_jaccard": float(np.nanmean(off)) if off.size and not np.isnan(off).all() else float("nan"),
        "frac_queries_differ": float(np.mean(differ)) if differ else float("nan"),
        "mean_size": {ct: float(np.mean([len(sets[ct, q]) for q in qs])) for ct in cts},
        "frac_empty": float(np.mean([len(v) == 0 for v in sets.values()])),
    }


def observed_deltas(adata: ad.AnnData, control: str = CONTROL_LABEL) -> dict[str, pd.DataFrame]:
    """Observed mean effect per (cell type, perturbation): mean perturbed minus mean control ``X``.

    Parameters
    ----------
    adata
        A benchmark AnnData (obs ``gene`` and ``cell_type``; ``X`` log-normalised).
    control
        Control label.

    Returns
    -------
    dict[str, pandas.DataFrame]
        Cell type -> perturbations x genes frame of mean differences.
    """
    out = {}
    x = adata.X
    for ct in pd.unique(adata.obs["cell_type"].astype(str)):
        mask = (adata.obs["cell_type"].astype(str) == ct).to_numpy()
        genes = adata.obs["gene"].astype(str).to_numpy()[mask]
        labels, inv = np.unique(genes, return_inverse=True)
        ind = sp.csr_matrix((np.ones(inv.size), (inv, np.arange(inv.size))), shape=(labels.size, inv.size))
        counts = np.asarray(ind.sum(axis=1)).ravel()
        sums = ind @ x[mask]
        means = np.asarray(sums.todense() if sp.issparse(sums) else sums) / counts[:, None]
        frame = pd.DataFrame(means, index=labels, columns=adata.var_names)
        ctrl = frame.loc[control]
        out[str(ct)] = frame.drop(index=control) - ctrl
    return out


def summarize(bench: SyntheticBenchmark, k: int = 10) -> dict[str, Any]:
    """Headline numbers of a benchmark (printed by ``ptrag simulate``).

    Parameters
    ----------
    bench
        The output of :func:`simulate`.
    k
        Neighbours for the embedding retrieval precision.

    Returns
    -------
    dict
        ``n_cells``, ``n_genes``, ``n_perturbations``, ``perturbations_per_cell_type``,
        ``min_cells_per_group``, ``controls_per_cell_type``, ``sparsity`` (fraction of zero
        counts), the entries of :func:`informative_overlap` and of
        :func:`embedding_retrieval_precision` (prefixed ``retrieval_``).
    """
    adata = bench.adata
    obs = adata.obs
    pert = obs[obs["gene"] != CONTROL_LABEL]
    groups = pert.groupby(["cell_type", "gene"], observed=True).size()
    counts = adata.layers["counts"]
    nnz = counts.nnz if sp.issparse(counts) else int(np.count_nonzero(counts))
    out: dict[str, Any] = {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_perturbations": len(bench.gene_table),
        "perturbations_per_cell_type": pert.groupby("cell_type", observed=True)["gene"].nunique().to_dict(),
        "min_cells_per_group": int(groups.min()),
        "controls_per_cell_type": obs[obs["gene"] == CONTROL_LABEL]
        .groupby("cell_type", observed=True)
        .size()
        .to_dict(),
        "sparsity": 1.0 - nnz / (adata.n_obs * adata.n_vars),
    }
    cell_types = [str(ct) for ct in adata.uns[SIMULATION_KEY]["cell_types"]]
    out.update(informative_overlap(bench.ground_truth, cell_types, bench.perturbations))
    retrieval = embedding_retrieval_precision(bench.gene_table, bench.ground_truth, k, cell_types)
    for key, val in retrieval.items():
        out[f"retrieval_{key}"] = val
    return out


# --------------------------------------------------------------------------------------------
# large streaming file

_LARGE_BLOCK = 4096  # cells per random block; values do not depend on chunk_cells


def write_large_h5ad(
    path: str | Path,
    n_cells: int,
    n_genes: int,
    seed: int = 0,
    chunk_cells: int = 50_000,
    n_cell_types: int = 4,
    n_perturbations: int = 200,
) -> Path:
    """Write a large Perturb-seq-like CSR ``.h5ad`` chunk by chunk, never holding the whole matrix.

    ``obs`` (``gene``, ``cell_type``, ``gem_group``; cells interleaved at random, about 5% of
    them ``non-targeting``) and ``var`` are written with :func:`anndata.io.write_elem`; ``X`` is a
    ``csr_matrix`` group whose ``data`` / ``indices`` / ``indptr`` are resizable HDF5 datasets
    appended to per chunk. Values are ``log1p`` of counts normalised to 10,000 per cell
    (negative-binomial counts, about 85% zeros), float32. The values depend only on ``seed``
    and the sizes, not on ``chunk_cells``.

    Parameters
    ----------
    path
        Output ``.h5ad`` (written atomically).
    n_cells, n_genes
        Matrix shape.
    seed
        Random seed.
    chunk_cells
        Cells appended to the file per write. Peak memory is a dense generation block of 4096
        cells (a few arrays of ``4096 * n_genes`` float64) plus the non-zeros of one pending
        chunk (about ``chunk_cells * n_genes * 0.15 * 8`` bytes); ``obs`` is held in memory.
    n_cell_types, n_perturbations
        Number of cell types and of perturbed genes.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    for name, value, lo in (
        ("n_cells", n_cells, 1),
        ("n_genes", n_genes, 1),
        ("chunk_cells", chunk_cells, 1),
        ("n_cell_types", n_cell_types, 1),
        ("n_perturbations", n_perturbations, 1),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise PtragError(f"option {name} must be an integer >= {lo}, got {value!r}.")
    if n_cell_types > 26:
        raise PtragError(f"option n_cell_types must be at most 26, got {n_cell_types}.")
    path = Path(path)
    seq = np.random.SeedSequence([seed, 0x1A46E])
    rng_meta = np.random.default_rng(seq.spawn(1)[0])

    cell_types = _cell_type_names(n_cell_types)
    pwidth = max(4, len(str(n_perturbations)))
    perts = [f"PERT{i:0{pwidth}d}" for i in range(1, n_perturbations + 1)]
    gwidth = max(5, len(str(n_genes)))
    var_names = [f"GENE{i:0{gwidth}d}" for i in range(1, n_genes + 1)]
    # gene parameters
    log_prop = rng_meta.normal(0.0, 1.6, (n_cell_types, n_genes))
    log_prop -= np.log(np.exp(log_prop).sum(axis=1, keepdims=True))
    theta = np.exp(rng_meta.normal(math.log(1.5), 0.5, n_genes))
    k = max(1, n_genes // 20)
    effect_idx = np.stack([rng_meta.choice(n_genes, k, replace=False) for _ in range(n_perturbations)])
    effect_val = rng_meta.normal(0.0, 0.7, (n_cell_types, n_perturbations, k))
    lib_mean = math.log(0.25 * n_genes)
    # obs: interleaved cells
    ct_code = rng_meta.integers(0, n_cell_types, n_cells)
    is_ctrl = rng_meta.random(n_cells) < 0.05
    pert_code = np.where(is_ctrl, 0, rng_meta.integers(1, n_perturbations + 1, n_cells))
    batch = rng_meta.integers(0, 2, n_cells)
    gem_cats = [f"{ct}_{b + 1}" for ct in cell_types for b in range(2)]
    obs = pd.DataFrame(
        {
            "gene": pd.Categorical.from_codes(pert_code, categories=[CONTROL_LABEL, *perts]),
            "cell_type": pd.Categorical.from_codes(ct_code, categories=cell_types),
            "gem_group": pd.Categorical.from_codes(ct_code * 2 + batch, categories=gem_cats),
        },
        index=pd.Index([f"cell{i:08d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index(var_names))

    def block(b: int) -> sp.csr_matrix:
        lo, hi = b * _LARGE_BLOCK, min(n_cells, (b + 1) * _LARGE_BLOCK)
        rng = np.random.default_rng([seed, 0x1A46E, b + 1])
        ct, pc = ct_code[lo:hi], pert_code[lo:hi]
        log_mu = log_prop[ct] + rng.normal(lib_mean, 0.35, hi - lo)[:, None]
        rows = np.nonzero(pc > 0)[0]
        if rows.size:
            p = pc[rows] - 1
            np.add.at(log_mu, (rows[:, None], effect_idx[p]), effect_val[ct[rows], p])
        counts = _nb_counts(rng, np.exp(log_mu), theta[None, :]).astype(np.float32)
        totals = counts.sum(axis=1, keepdims=True)
        values = np.log1p(counts * (1e4 / np.maximum(totals, 1.0)))
        return sp.csr_matrix(values.astype(np.float32))

    n_blocks = -(-n_cells // _LARGE_BLOCK)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        ad.io.write_elem(f, "obs", obs)
        ad.io.write_elem(f, "var", var)
        for key in ("layers", "obsm", "obsp", "varm", "varp"):
            ad.io.write_elem(f, key, {})
        ad.io.write_elem(f, "uns", {"log1p": {"base": None}})
        g = f.create_group("X")
        g.attrs["encoding-type"] = "csr_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
        chunk = max(1, min(1 << 20, chunk_cells * max(1, n_genes // 8)))
        data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(chunk,))
        indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(chunk,))
        indptr = g.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
        indptr[0] = 0
        nnz = 0
        pending: list[sp.csr_matrix] = []
        pending_rows = 0
        row = 0

        def flush() -> None:
            nonlocal nnz, row, pending, pending_rows
            if not pending:
                return
            total = nnz + sum(m.nnz for m in pending)
            data.resize((total,))
            indices.resize((total,))
            for m in pending:
                data[nnz : nnz + m.nnz] = m.data
                indices[nnz : nnz + m.nnz] = m.indices.astype(np.int32)
                indptr[row + 1 : row + m.shape[0] + 1] = m.indptr[1:].astype(np.int64) + nnz
                nnz += m.nnz
                row += m.shape[0]
            pending, pending_rows = [], 0

        for b in range(n_blocks):
            # blocks of 4096 cells; written whenever chunk_cells cells are pending
            m = block(b)
            start = 0
            while start < m.shape[0]:
                take = min(m.shape[0] - start, chunk_cells - pending_rows)
                pending.append(m[start : start + take])
                pending_rows += take
                start += take
                if pending_rows >= chunk_cells:
                    flush()
        flush()
        log.info("wrote %d cells x %d genes (%d non-zeros) to %s", n_cells, n_genes, nnz, path)
    return path
