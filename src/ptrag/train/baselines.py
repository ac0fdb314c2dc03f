"""The field's simple baselines: shifts of the matched control cells by a mean change.

Deep perturbation models often fail to beat simple predictors (Ahlmann-Eltze, Huber & Anders,
Nat. Methods 2025; arc-state's ``PerturbMean`` and ``ContextMean``). Each baseline here gives,
for a (cell type, perturbation), one *shift* vector over the run's genes; the baseline's
prediction of a cell set is ``relu(matched control cells + shift)``, so the baselines share the
model's sets and output layout (:func:`ptrag.train.predict.predict` with ``baseline=``).

Every shift is computed from the *mean changes* of the run's training groups only: for a
group ``g = (c, p)``, ``delta_g`` = mean over its cells of log-expression minus the mean of
cell type ``c``'s control cells, over the run's genes. No validation or test group is read.
Definitions (docs/metrics.md, section "Baselines"), for a target ``(ct, p)``:

* ``control``: zero.
* ``context_mean``: mean of ``delta_(ct, q)`` over the training groups of ``ct``; the mean over
  all training groups when ``ct`` has none.
* ``perturb_mean``: mean of ``delta_(c, p)`` over the other cell types ``c != ct`` where ``p``
  trains; ``context_mean`` when it trains in no other cell type.
* ``additive``: ``context_mean(ct) + perturb_mean(ct, p) - mean of delta_g over all training
  groups of the other cell types``; ``context_mean(ct)`` when ``p`` trains nowhere else.
* ``linear``: Ahlmann-Eltze et al.'s linear model, fitted in closed form (:func:`linear_fit`).

The maths are the pure functions below; :func:`group_mean_changes` is the one that reads data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ptrag.data.io import PerturbData
from ptrag.errors import PtragError, check_choice

#: Baseline names, in the order of the evaluation.
BASELINES = ("control", "perturb_mean", "context_mean", "additive", "linear")

#: Gene-embedding dimension K of the linear baseline (fewer when there are fewer groups).
LINEAR_K = 10

#: Ridge penalty lambda of the linear baseline.
LINEAR_LAMBDA = 0.1

#: Cells read at once when averaging a group.
_CHUNK = 4096


@dataclass(frozen=True)
class MeanChanges:
    """Mean changes from control of a set of groups (the training groups of a run).

    Attributes
    ----------
    cell_type, perturbation
        ``[n]`` arrays naming each group.
    delta
        ``[n, G]`` float64: mean log-expression of the group's cells minus the mean of its
        cell type's control cells.
    """

    cell_type: np.ndarray
    perturbation: np.ndarray
    delta: np.ndarray


def _mean_expression(data: PerturbData, rows: np.ndarray, gene_idx: np.ndarray) -> np.ndarray:
    """Mean log-expression (float64) of ``rows`` over the genes ``gene_idx``, read in chunks."""
    total = np.zeros(len(gene_idx), dtype=np.float64)
    for start in range(0, len(rows), _CHUNK):
        total += data.expression(rows[start : start + _CHUNK], gene_idx).sum(0, dtype=np.float64)
    return total / len(rows)


def _group_rows(obs: pd.DataFrame, groups: pd.DataFrame) -> list[np.ndarray]:
    """Rows of each group's (non-control, kept) cells, in file order."""
    m = ~obs["is_control"].to_numpy() & obs["keep"].to_numpy()
    ct, pert = obs["cell_type"].to_numpy()[m], obs["perturbation"].to_numpy()[m]
    index = {k: v.to_numpy() for k, v in pd.Series(np.flatnonzero(m)).groupby([ct, pert])}
    out = []
    for c, p in groups[["cell_type", "perturbation"]].itertuples(index=False):
        rows = index.get((c, p))
        if rows is None or len(rows) == 0:
            raise PtragError(f"no cells for perturbation {p!r} in cell type {c!r}.")
        out.append(rows)
    return out


def control_means(data: PerturbData, cell_types: Sequence[str], genes: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean log-expression (float64) of each cell type's control cells over ``genes``.

    Raises
    ------
    PtragError
        If a cell type has no control cells.
    """
    gidx = data.gene_index(list(genes))
    out: dict[str, np.ndarray] = {}
    for ct in cell_types:
        rows = data.rows_of(ct, data.spec.control)
        if len(rows) == 0:
            raise PtragError(f"cell type {ct!r} has no control cells; every cell type needs controls.")
        out[ct] = _mean_expression(data, rows, gidx)
    return out


def group_mean_changes(
    data: PerturbData, groups: pd.DataFrame, genes: Sequence[str], controls: dict[str, np.ndarray] | None = None
) -> MeanChanges:
    """Mean change from control of each group, over ``genes``.

    Parameters
    ----------
    data
        The data set (read with the run's column spec).
    groups
        Groups (columns ``cell_type``, ``perturbation``), e.g. the run's training groups.
    genes
        Gene names, in order (the run's ``genes.txt``).
    controls
        Control means of the groups' cell types (:func:`control_means`), when already computed.

    Returns
    -------
    MeanChanges
        One row per group, in the order of ``groups``.

    Raises
    ------
    PtragError
        If ``groups`` is empty, a group has no cells or a cell type has no control cells.
    """
    if groups.empty:
        raise PtragError("the baselines need at least one training group; the split has none.")
    gidx = data.gene_index(list(genes))
    ctrl = control_means(data, groups["cell_type"].unique(), genes) if controls is None else controls
    delta = np.stack(
        [
            _mean_expression(data, rows, gidx) - ctrl[ct]
            for rows, ct in zip(_group_rows(data.obs, groups), groups["cell_type"], strict=True)
        ]
    )
    return MeanChanges(groups["cell_type"].to_numpy(dtype=object), groups["perturbation"].to_numpy(dtype=object), delta)


class GroupChanges:
    """Mean changes of one run's groups, each group and each cell type's controls read once.

    A run asks for training groups' changes up to three times before training (the ``auto``
    residual-base evidence, the ``context_mean`` base, ``pt_rag_response``'s database), each for
    its own subset; this computes every group the first time it is asked for and serves it
    from memory afterwards. Rows equal :func:`group_mean_changes`'s exactly.

    Parameters
    ----------
    data
        The data set.
    genes
        Gene names, in order (the run's ``genes.txt``).
    """

    def __init__(self, data: PerturbData, genes: Sequence[str]) -> None:
        self.data = data
        self.genes = list(genes)
        self._controls: dict[str, np.ndarray] = {}
        self._delta: dict[tuple[str, str], np.ndarray] = {}

    def controls(self, cell_types: Sequence[str]) -> dict[str, np.ndarray]:
        """:func:`control_means` of ``cell_types``, each computed once."""
        missing = [c for c in dict.fromkeys(cell_types) if c not in self._controls]
        if missing:
            self._controls.update(control_means(self.data, missing, self.genes))
        return {c: self._controls[c] for c in cell_types}

    def of(self, groups: pd.DataFrame) -> MeanChanges:
        """:func:`group_mean_changes` of ``groups``, computing only the groups not asked for before."""
        keys = list(zip(groups["cell_type"], groups["perturbation"], strict=True))
        fresh_rows = np.array([k not in self._delta for k in keys], dtype=bool)
        new = groups.loc[fresh_rows].drop_duplicates(["cell_type", "perturbation"])
        if groups.empty or len(new):  # empty: group_mean_changes' own message
            new = new.reset_index(drop=True)
            fresh = group_mean_changes(self.data, new, self.genes, self.controls(new["cell_type"].unique()))
            self._delta.update(zip(zip(fresh.cell_type, fresh.perturbation, strict=True), fresh.delta, strict=True))
        return MeanChanges(
            groups["cell_type"].to_numpy(dtype=object),
            groups["perturbation"].to_numpy(dtype=object),
            np.stack([self._delta[k] for k in keys]),
        )


def context_mean(changes: MeanChanges, cell_type: str) -> np.ndarray:
    """Mean of the training groups' changes in ``cell_type`` (all groups' when it has none).

    Parameters
    ----------
    changes
        Mean changes of the training groups.
    cell_type
        The target cell type.

    Returns
    -------
    numpy.ndarray
        ``[G]`` float64.
    """
    m = changes.cell_type == cell_type
    return changes.delta[m].mean(0) if m.any() else changes.delta.mean(0)


def perturbation_elsewhere(changes: MeanChanges, cell_type: str, perturbation: str) -> np.ndarray | None:
    """Mean change of ``perturbation`` over the other cell types where it trains.

    Parameters
    ----------
    changes
        Mean changes of the training groups.
    cell_type
        The target cell type (excluded).
    perturbation
        The perturbation.

    Returns
    -------
    numpy.ndarray or None
        ``[G]`` float64, or ``None`` when it trains in no other cell type.
    """
    m = (changes.cell_type != cell_type) & (changes.perturbation == perturbation)
    return changes.delta[m].mean(0) if m.any() else None


def perturb_mean(changes: MeanChanges, cell_type: str, perturbation: str) -> np.ndarray:
    """The ``perturb_mean`` shift: :func:`perturbation_elsewhere`, else :func:`context_mean`."""
    v = perturbation_elsewhere(changes, cell_type, perturbation)
    return context_mean(changes, cell_type) if v is None else v


def additive(changes: MeanChanges, cell_type: str, perturbation: str) -> np.ndarray:
    """The ``additive`` shift: the target's context mean plus the perturbation's deviation
    elsewhere (its mean change in the other cell types minus the mean change of all training
    groups of the other cell types); the context mean when it trains nowhere else."""
    base = context_mean(changes, cell_type)
    v = perturbation_elsewhere(changes, cell_type, perturbation)
    if v is None:
        return base
    return base + (v - changes.delta[changes.cell_type != cell_type].mean(0))


@dataclass(frozen=True)
class LinearFit:
    """The linear baseline of one target cell type: shift = ``b + E @ W @ (E.T @ x_p)``.

    Attributes
    ----------
    b
        ``[G]`` the context mean of the cell type.
    E
        ``[G, K]`` gene embedding (top-K left singular vectors of all training changes).
    W
        ``[K, K]`` ridge weights.
    """

    b: np.ndarray
    E: np.ndarray
    W: np.ndarray


def gene_embedding(changes: MeanChanges, k: int = LINEAR_K) -> np.ndarray:
    """The top-``k`` left singular vectors of the ``[G, n]`` matrix of all training changes
    (``min(k, G, n)`` of them)."""
    m = changes.delta.T
    u, _, _ = np.linalg.svd(m, full_matrices=False)
    return u[:, : min(k, *m.shape)]


def perturbation_embedding(changes: MeanChanges, E: np.ndarray, cell_type: str, perturbation: str) -> np.ndarray:
    """``E.T @`` the perturbation's mean change in the other cell types (zeros when none)."""
    v = perturbation_elsewhere(changes, cell_type, perturbation)
    return np.zeros(E.shape[1]) if v is None else E.T @ v


def linear_fit(changes: MeanChanges, cell_type: str, k: int = LINEAR_K, lam: float = LINEAR_LAMBDA) -> LinearFit:
    """Fit the linear baseline for ``cell_type`` in closed form.

    With ``Y`` (``[G, n_ct]``) the changes of the training perturbations of ``cell_type``,
    ``b`` its context mean, ``E`` the gene embedding and ``P`` (``[n_ct, K]``) the embeddings of
    those perturbations from the other cell types (:func:`perturbation_embedding`),
    ``W = (E'E + lam I)^-1 E' (Y - b) P (P'P + lam I)^-1`` (Ahlmann-Eltze et al.'s ridge
    closed form). A cell type with no training perturbation gets ``W = 0`` (shift ``b``).

    Parameters
    ----------
    changes
        Mean changes of the training groups.
    cell_type
        The target cell type.
    k
        Embedding dimension (at most the number of groups and of genes).
    lam
        Ridge penalty.

    Returns
    -------
    LinearFit
    """
    b = context_mean(changes, cell_type)
    E = gene_embedding(changes, k)
    m = changes.cell_type == cell_type
    y = changes.delta[m].T - b[:, None]
    P = np.array([perturbation_embedding(changes, E, cell_type, p) for p in changes.perturbation[m]]).reshape(
        -1, E.shape[1]
    )
    eye = np.eye(E.shape[1])
    left = np.linalg.solve(E.T @ E + lam * eye, E.T @ y @ P)
    W = np.linalg.solve(P.T @ P + lam * eye, left.T).T  # left @ (P'P + lam I)^-1, the matrix being symmetric
    return LinearFit(b, E, W)


def linear_shift(fit: LinearFit, changes: MeanChanges, cell_type: str, perturbation: str) -> np.ndarray:
    """The ``linear`` shift of ``perturbation`` in ``cell_type`` from its :class:`LinearFit`."""
    return fit.b + fit.E @ (fit.W @ perturbation_embedding(changes, fit.E, cell_type, perturbation))


def baseline_shifts(
    name: str, changes: MeanChanges | None, targets: Sequence[tuple[str, str]], n_genes: int | None = None
) -> np.ndarray:
    """The shifts of one baseline for ``targets``.

    Parameters
    ----------
    name
        One of :data:`BASELINES`.
    changes
        Mean changes of the training groups; may be ``None`` for ``control``.
    targets
        ``(cell type, perturbation)`` pairs.
    n_genes
        Number of genes G, needed only for ``control`` without ``changes``.

    Returns
    -------
    numpy.ndarray
        ``[len(targets), G]`` float64.
    """
    check_choice("--baseline", name, BASELINES)
    if changes is None and name != "control":
        raise PtragError(f"the {name} baseline needs the mean changes of the training groups.")
    width = changes.delta.shape[1] if changes is not None else n_genes
    if width is None:
        raise PtragError("baseline_shifts: give the mean changes or n_genes.")
    if name == "control":
        return np.zeros((len(targets), width))
    fits: dict[str, LinearFit] = {}
    out = []
    for ct, p in targets:
        if name == "context_mean":
            out.append(context_mean(changes, ct))
        elif name == "perturb_mean":
            out.append(perturb_mean(changes, ct, p))
        elif name == "additive":
            out.append(additive(changes, ct, p))
        else:
            if ct not in fits:
                fits[ct] = linear_fit(changes, ct)
            out.append(linear_shift(fits[ct], changes, ct, p))
    return np.stack(out) if out else np.zeros((0, width))
