"""Perturbation codes: gene-table vectors aligned to perturbation names, one-hot codes, combinations.

:func:`perturbation_vectors` looks perturbed genes up in a gene table (never a silent zero
vector), :func:`one_hot` gives STATE's codes, :func:`split_combination` and
:func:`drop_combinations` handle ``"A+B"`` labels, and :func:`coverage` says which
perturbation groups each table covers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from ptrag.data.gene_table import GeneTable, normalize_symbol
from ptrag.errors import PtragError, check_choice

log = logging.getLogger("ptrag")

#: Labels GEARS-style data sets use for the control inside a combination ("A+ctrl").
_GEARS_CONTROL = "ctrl"


def perturbation_vectors(
    perturbations: Sequence[str],
    table: GeneTable,
    missing: Literal["error", "drop"] = "error",
    cell_counts: Mapping[str, int] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Vectors of perturbed genes, never a silent zero vector.

    Parameters
    ----------
    perturbations
        Perturbed gene symbols (control excluded by the caller).
    table
        The gene table (aliases in ``table.aliases`` are applied).
    missing
        ``"error"``: raise if any perturbation has no vector (absent, or an all-zero row such
        as GenePT's ``ctrl``). ``"drop"``: leave those out with a warning.
    cell_counts
        Cells per perturbation, used to say how many cells go with dropped genes.

    Returns
    -------
    vectors : numpy.ndarray
        ``float32`` ``[n_kept, dim]``, in input order.
    kept : list of str
        The kept perturbations (original spelling of the input).
    """
    check_choice("--missing-genes", missing, ("error", "drop"))
    perturbations = [str(p) for p in perturbations]
    rows = table.rows(perturbations)
    miss = [p for p, r in zip(perturbations, rows, strict=True) if r < 0]
    if miss:
        _report_missing(list(dict.fromkeys(miss)), table, missing, cell_counts)
    keep = rows >= 0
    kept = [p for p, k in zip(perturbations, keep, strict=True) if k]
    return table.vectors[rows[keep]].copy(), kept


def _report_missing(
    uniq: list[str],
    table: GeneTable,
    missing: Literal["error", "drop"],
    cell_counts: Mapping[str, int] | None,
) -> None:
    """Raise (``missing="error"``) or warn (``"drop"``) about perturbations without a vector.

    Parameters
    ----------
    uniq
        The distinct perturbations without a vector, in order of first appearance.
    table
        The gene table they were looked up in.
    missing
        ``"error"`` or ``"drop"``, as in :func:`perturbation_vectors`.
    cell_counts
        Cells per perturbation, shown with the dropped genes when given.
    """
    idx = table.index()
    labels = [f"{p} (all-zero row)" if normalize_symbol(p) in idx else p for p in uniq[:10]]
    shown = ", ".join(labels) + (f", ... ({len(uniq)} in all)" if len(uniq) > 10 else "")
    src = table.source or "the gene table"
    if missing == "error":
        raise PtragError(
            f"{len(uniq)} perturbed genes have no vector in {src}: {shown}. Pass "
            "--missing-genes drop to leave them out, an alias map (--gene-aliases "
            "alias,symbol CSV) if they are spelled differently, or another table with "
            "--genes (e.g. one built by `ptrag genes embed-text` / `embed-graph`)."
        )
    cells = ""
    if cell_counts is not None:
        n_cells = sum(int(cell_counts.get(p, 0)) for p in uniq)
        cells = f" with {n_cells} cells"
        labels = [f"{lab} ({int(cell_counts.get(p, 0))} cells)" for lab, p in zip(labels, uniq, strict=False)]
        shown = ", ".join(labels) + (f", ... ({len(uniq)} in all)" if len(uniq) > 10 else "")
    log.warning(
        "dropping %d perturbations%s that have no vector in %s: %s. To keep them, give an "
        "alias map or another table with --genes.",
        len(uniq),
        cells,
        src,
        shown,
    )


def one_hot(perturbations: Sequence[str], categories: Sequence[str] | None = None) -> np.ndarray:
    """One-hot codes (STATE's perturbation representation).

    Parameters
    ----------
    perturbations
        Perturbation labels, one per output row.
    categories
        The column order; by default the distinct ``perturbations`` in order of first
        appearance (so distinct inputs give the identity matrix).

    Returns
    -------
    numpy.ndarray
        ``float32`` ``[len(perturbations), len(categories)]``.
    """
    perturbations = [str(p) for p in perturbations]
    cats = list(dict.fromkeys(perturbations)) if categories is None else [str(c) for c in categories]
    pos = {c: i for i, c in enumerate(cats)}
    unknown = [p for p in perturbations if p not in pos]
    if unknown:
        raise PtragError(
            f"{len(set(unknown))} perturbations are not among the one-hot categories "
            f"(e.g. {', '.join(sorted(set(unknown))[:5])}); one-hot codes exist only for "
            "perturbations seen in training."
        )
    out = np.zeros((len(perturbations), len(cats)), dtype=np.float32)
    out[np.arange(len(perturbations)), [pos[p] for p in perturbations]] = 1.0
    return out


def split_combination(label: str, control: str) -> list[str]:
    """The genes of a perturbation label.

    Parameters
    ----------
    label
        ``"A"``, ``"A+B"``, GEARS-style ``"A+ctrl"``, or the control label.
    control
        The data set's control label; it (and GEARS's ``ctrl``) is dropped from combinations.

    Returns
    -------
    list of str
        ``"A+B"`` -> ``["A", "B"]``; ``"A+ctrl"`` -> ``["A"]``; control -> ``[]``.
    """
    label = str(label).strip()
    if label == control:
        return []
    return [p.strip() for p in label.split("+") if p.strip() and p.strip() not in (control, _GEARS_CONTROL)]


def drop_combinations(obs_perturbations: pd.Series, control: str) -> tuple[np.ndarray, int, int]:
    """Find the cells that carry combination perturbations (two or more genes).

    Parameters
    ----------
    obs_perturbations
        The perturbation label of each cell.
    control
        The control label.

    Returns
    -------
    mask : numpy.ndarray
        ``bool`` per cell, ``True`` for a combination (to be excluded by the caller).
    n_cells : int
        Number of such cells.
    n_perts : int
        Number of distinct combination labels.
    """
    labels = pd.Series(obs_perturbations).astype(str)
    uniq = pd.unique(labels)
    combo = {u: len(split_combination(u, control)) > 1 for u in uniq}
    mask = labels.map(combo).to_numpy(dtype=bool)
    return mask, int(mask.sum()), int(sum(combo.values()))


def coverage(groups: pd.DataFrame, tables: Mapping[str, GeneTable], control: str) -> pd.DataFrame:
    """Which perturbation groups have a vector in each table.

    Parameters
    ----------
    groups
        One row per (cell type, perturbation) group, columns ``cell_type``, ``perturbation``,
        ``n_cells``.
    tables
        Label -> table.
    control
        The control label (dropped from combination labels).

    Returns
    -------
    pandas.DataFrame
        ``groups`` plus ``combination`` (bool) and one bool column per table label (a
        combination counts as covered when every one of its genes is), then ``any_table``.
    """
    out = groups[["cell_type", "perturbation", "n_cells"]].copy().reset_index(drop=True)
    parts = {p: split_combination(p, control) for p in pd.unique(out["perturbation"])}
    out["combination"] = out["perturbation"].map(lambda p: len(parts[p]) > 1).astype(bool)
    genes = sorted({g for ps in parts.values() for g in ps})
    for label, table in tables.items():
        has = dict(zip(genes, table.rows(genes) >= 0, strict=True))
        ok = {p: bool(ps) and all(has[g] for g in ps) for p, ps in parts.items()}
        out[label] = out["perturbation"].map(ok).astype(bool)
    labels = list(tables)
    out["any_table"] = out[labels].any(axis=1) if labels else False
    return out
