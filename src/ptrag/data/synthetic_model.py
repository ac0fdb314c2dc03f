"""The latent model of the synthetic benchmark: genes, programs, true effects and embeddings.

Each helper draws from the generator it is given, in a fixed order; :func:`ptrag.data.synthetic.simulate`
calls them in sequence, so the draws (and the simulated data) are those of one long function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ptrag.data.synthetic_draws import mix, sparse_unit, split_sizes, unit

if TYPE_CHECKING:
    from ptrag.data.synthetic import SimulationConfig


@dataclass
class PerturbedGenes:
    """The perturbed genes in table order, with their modules and sub-modules.

    Attributes
    ----------
    names
        Gene symbols (``MOD<m>_G<j>``).
    module_of
        Module index of each gene.
    sub_of
        Global sub-module index of each gene (``module * submodules_per_module + j``).
    sub_letter
        Sub-module letter of each gene within its module (``a``, ``b``, ...).
    mwidth
        Digits of the module number in module labels.
    """

    names: list[str]
    module_of: np.ndarray
    sub_of: np.ndarray
    sub_letter: list[str]
    mwidth: int


@dataclass
class Baseline:
    """Per-cell-type baseline expression and nuisance effects.

    Attributes
    ----------
    log_prop
        Cell types x genes log expression proportions (each row log-sums to 0).
    theta
        Per-gene negative-binomial inverse dispersion.
    w_resp
        Probabilities with which program responder genes are drawn (favouring expressed genes).
    batch_lfc
        Cell types x batches x genes log fold change of each batch.
    batch_lib
        Cell types x batches library-size factor of each batch.
    state_loading
        Cell types x genes loading of the latent cell-state axis.
    """

    log_prop: np.ndarray
    theta: np.ndarray
    w_resp: np.ndarray
    batch_lfc: np.ndarray
    batch_lib: np.ndarray
    state_loading: np.ndarray


def perturbed_genes(rng: np.random.Generator, n_perturbations: int, n_modules: int, n_sub: int) -> PerturbedGenes:
    """Split the perturbed genes into modules and sub-modules and name them.

    Parameters
    ----------
    rng
        The generator of the gene draws.
    n_perturbations, n_modules, n_sub
        Numbers of perturbed genes, of modules and of sub-modules per module.

    Returns
    -------
    PerturbedGenes
        Names, module and sub-module of every perturbed gene.
    """
    P, M, S = n_perturbations, n_modules, n_sub
    sub_sizes = split_sizes(rng, P, M * S, 2).reshape(M, S)
    module_of = np.repeat(np.arange(M), sub_sizes.sum(axis=1))
    sub_of = np.repeat(np.arange(M * S), sub_sizes.ravel())  # global sub-module index
    width = max(3, len(str(int(sub_sizes.sum(axis=1).max()) - 1)))
    mwidth = max(2, len(str(M - 1)))
    perts: list[str] = []
    for m in range(M):
        perts += [f"MOD{m:0{mwidth}d}_G{j:0{width}d}" for j in range(int(sub_sizes[m].sum()))]
    sub_letter = [chr(ord("a") + (k % S)) if S <= 26 else str(k % S) for k in sub_of]
    return PerturbedGenes(perts, module_of, sub_of, sub_letter, mwidth)


def measured_genes(rng: np.random.Generator, genes: PerturbedGenes, n_genes: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Choose the measured genes: some perturbed genes, then background genes.

    Parameters
    ----------
    rng
        The generator of the gene draws (after :func:`perturbed_genes`).
    genes
        The perturbed genes.
    n_genes
        Number of measured genes.

    Returns
    -------
    var : pandas.DataFrame
        The ``var`` table (``module``, ``submodule``, ``is_perturbed``); measured perturbed genes
        come first.
    target_col : numpy.ndarray
        Per perturbed gene, its column in ``var``, or -1 if it is not measured.
    """
    P, G, mwidth = len(genes.names), n_genes, genes.mwidth
    module_of, sub_letter = genes.module_of, genes.sub_letter
    n_measured_targets = min(P, G // 2)
    measured_targets = np.sort(rng.choice(P, size=n_measured_targets, replace=False))
    n_background = G - n_measured_targets
    gwidth = max(4, len(str(n_background)))
    var_names = [genes.names[i] for i in measured_targets] + [f"GENE{i:0{gwidth}d}" for i in range(1, n_background + 1)]
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
    return var, target_col


def baseline_expression(rng: np.random.Generator, c: SimulationConfig, n_measured_targets: int) -> Baseline:
    """Draw baseline expression, dispersions, batch effects and the cell-state axis.

    Parameters
    ----------
    rng
        The generator of the program draws (first use).
    c
        The simulation options.
    n_measured_targets
        Number of measured perturbed genes (the first columns of ``var``).

    Returns
    -------
    Baseline
        The drawn parameters.
    """
    G, T = c.n_genes, c.n_cell_types
    base_shared = rng.normal(0.0, 1.8, G)
    # perturbed genes are expressed genes (screens target expressed, mostly essential genes)
    base_shared[:n_measured_targets] = rng.normal(1.5, 0.8, n_measured_targets)
    log_prop = np.empty((T, G))
    for t in range(T):
        b = base_shared + rng.normal(0.0, 0.5, G)
        log_prop[t] = b - np.log(np.exp(b).sum())
    theta = np.exp(rng.normal(math.log(6.0), 0.5, G))
    # responder genes of programs are drawn preferring expressed genes
    w_resp = np.exp(0.5 * base_shared)
    w_resp /= w_resp.sum()
    batch_lfc = rng.normal(0.0, 0.08, (T, c.n_batches, G))
    batch_lib = np.exp(rng.normal(0.0, 0.1, (T, c.n_batches)))
    state_loading = rng.normal(0.0, 0.15, (T, G))
    return Baseline(log_prop, theta, w_resp, batch_lfc, batch_lib, state_loading)


def module_states(rng: np.random.Generator, c: SimulationConfig) -> np.ndarray:
    """Draw each module's state per cell type: ``coincident``, ``divergent`` or ``inactive``.

    Every module is active in at least one cell type.

    Returns
    -------
    numpy.ndarray
        Cell types x modules object array of state names.
    """
    T, M, S = c.n_cell_types, c.n_modules, c.submodules_per_module
    state = np.empty((T, M), dtype=object)
    for m in range(M):
        while True:
            active = rng.random(T) >= c.inactive_fraction
            divergent = rng.random(T) < c.divergent_fraction
            if active.any():  # every module acts in at least one cell type
                break
        for t in range(T):
            if not active[t]:
                state[t, m] = "inactive"
            elif divergent[t] and S > 1:
                state[t, m] = "divergent"
            else:
                state[t, m] = "coincident"
    return state


def program_size(n_genes: int) -> int:
    """Number of responder genes of a transcriptional program."""
    return max(5, round(0.08 * n_genes))


def programs(
    rng: np.random.Generator, c: SimulationConfig, state: np.ndarray, w_resp: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the transcriptional program of every (cell type, sub-module) and module activities.

    Parameters
    ----------
    rng
        The generator of the program draws (after :func:`module_states`).
    c
        The simulation options.
    state
        Cell types x modules states from :func:`module_states`.
    w_resp
        Responder-gene probabilities.

    Returns
    -------
    program : numpy.ndarray
        Cell types x global sub-modules x genes, unit-norm rows (zero where inactive).
    activity : numpy.ndarray
        Cell types x modules activity (0 where inactive).
    """
    G, T, M, S = c.n_genes, c.n_cell_types, c.n_modules, c.submodules_per_module
    k_prog = program_size(G)
    rho = c.program_correlation
    module_base = [sparse_unit(rng, G, k_prog, w_resp) for _ in range(M)]
    sub_base = [sparse_unit(rng, G, k_prog, w_resp) for _ in range(M * S)]
    program = np.zeros((T, M * S, G))  # per cell type, per global sub-module, unit norm or 0
    activity = np.zeros((T, M))
    for t in range(T):
        for m in range(M):
            a_tm = mix(rng, module_base[m], rho, k_prog, w_resp)
            b_tm = [mix(rng, sub_base[m * S + j], rho, k_prog, w_resp) for j in range(S)]
            activity[t, m] = rng.uniform(0.6, 1.4)
            for j in range(S):
                if state[t, m] == "coincident":
                    program[t, m * S + j] = a_tm
                elif state[t, m] == "divergent":
                    program[t, m * S + j] = unit(0.3 * a_tm + b_tm[j])
            if state[t, m] == "inactive":
                activity[t, m] = 0.0
    return program, activity


def perturbation_effects(
    rng: np.random.Generator,
    c: SimulationConfig,
    genes: PerturbedGenes,
    target_col: np.ndarray,
    program: np.ndarray,
    activity: np.ndarray,
    w_resp: np.ndarray,
) -> np.ndarray:
    """Draw the true mean effect of every perturbation in every cell type.

    A knock-down acts through its sub-module's program (scaled by module activity and a
    per-perturbation strength), plus an idiosyncratic part, and lowers its own target if measured.

    Returns
    -------
    numpy.ndarray
        Cell types x perturbations x genes log fold change of the expected counts.
    """
    G, P, T = c.n_genes, c.n_perturbations, c.n_cell_types
    k_idio = max(3, program_size(G) // 2)
    strength = np.exp(rng.normal(0.0, 0.3, P))[None, :] * np.exp(rng.normal(0.0, 0.2, (T, P)))
    idio_base = [sparse_unit(rng, G, k_idio, w_resp) for _ in range(P)]
    knockdown = rng.uniform(0.6, 0.9, P)  # fraction of the target's expression removed
    lfc = np.zeros((T, P, G))  # true mean effect: log fold change of the expected counts
    for t in range(T):
        for p in range(P):
            idio = mix(rng, idio_base[p], 0.8, k_idio, w_resp)
            lfc[t, p] = c.effect_size * (
                activity[t, genes.module_of[p]] * strength[t, p] * program[t, genes.sub_of[p]] + 0.3 * idio
            )
            if target_col[p] >= 0:
                lfc[t, p, target_col[p]] += math.log(1.0 - knockdown[p])
    return lfc


def gene_embeddings(
    rng: np.random.Generator,
    c: SimulationConfig,
    module_of: np.ndarray,
    sub_of: np.ndarray,
    perts: list[str],
) -> dict[str, np.ndarray]:
    """The GenePT stand-in: unit-norm embeddings of the perturbed genes.

    Module + weak sub-module + confusers (mis-annotated genes, cross-module families) + noise +
    a common offset.

    Returns
    -------
    dict[str, numpy.ndarray]
        Symbol -> float32 unit vector of length ``c.embedding_dim``.
    """
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
    emb = unit(unit(emb) + 1.2 * common)
    return {g: emb[i].astype(np.float32) for i, g in enumerate(perts)}
