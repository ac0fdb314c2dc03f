"""Where a Perturb-seq file's metadata are (:class:`ColumnSpec`), how its ``obs`` columns are
found (defaults, common alternatives, the control label) and normalised to ptrag's
``perturbation / cell_type / batch / is_control / keep`` table."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ptrag.data.checks import check_labels
from ptrag.errors import PtragError

log = logging.getLogger("ptrag")

#: Alternatives that users' files often carry instead of the defaults.
_ALTERNATIVES = {
    "pert_col": ("target_gene", "perturbation", "gene_symbol", "condition", "guide_target", "gene"),
    "cell_type_col": ("cell_line", "celltype", "cell_type", "cell_type_name"),
    "batch_col": ("batch", "gem_group", "gemgroup", "plate"),
    "control": ("non-targeting", "control", "ctrl", "non_targeting", "NT", "nontargeting"),
}


@dataclass(frozen=True)
class ColumnSpec:
    """Where the metadata and the expression of a Perturb-seq file are.

    Parameters
    ----------
    pert_col
        obs column with the perturbed gene of each cell.
    cell_type_col
        obs column with the cell type; ``None`` for a data set with one cell type.
    batch_col
        obs column with the batch (gem group); ``None`` for none.
    control
        Label of control cells in ``pert_col``.
    layer
        Read expression from ``adata.layers[layer]`` instead of ``X``.
    obsm_key
        Read expression from ``adata.obsm[obsm_key]`` instead of ``X``.
    """

    pert_col: str = "gene"
    cell_type_col: str | None = "cell_type"
    batch_col: str | None = "gem_group"
    control: str = "non-targeting"
    layer: str | None = None
    obsm_key: str | None = None

    def to_dict(self) -> dict:
        """The spec as a TOML-friendly dict (``None`` written as ``""``)."""
        return {k: ("" if v is None else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ColumnSpec:
        """Inverse of :meth:`to_dict`."""
        fields = {f: d.get(f, getattr(cls(), f)) for f in cls.__dataclass_fields__}
        for k in ("cell_type_col", "batch_col", "layer", "obsm_key"):
            if fields[k] == "":
                fields[k] = None
        return cls(**fields)


#: Column defaults that are silently dropped when absent (optional metadata).
DEFAULT_SPEC = ColumnSpec()


def resolve_columns(obs: pd.DataFrame, spec: ColumnSpec, defaults: set[str], path: Path) -> ColumnSpec:
    cols = list(obs.columns)

    def suggest(kind: str, current: str | None) -> list[str]:
        return [c for c in _ALTERNATIVES[kind] if c in cols and c != current]

    if spec.pert_col not in cols:
        alt = suggest("pert_col", spec.pert_col)
        hint = (
            f" This file has {alt[0]!r}: pass --pert-col {alt[0]}."
            if alt
            else f" Its obs columns are: {', '.join(cols)}."
        )
        raise PtragError(f"{path}: obs column {spec.pert_col!r} (perturbation) not found.{hint}")
    changes = {}
    if spec.cell_type_col is not None and spec.cell_type_col not in cols:
        alt = suggest("cell_type_col", spec.cell_type_col)
        if "cell_type_col" in defaults and not alt:
            log.info("%s has no %r column: treating it as one cell type.", path.name, spec.cell_type_col)
            changes["cell_type_col"] = None
        else:
            hint = (
                f" This file has {alt[0]!r}: pass --cell-type-col {alt[0]}."
                if alt
                else f" Pass --cell-type-col '' for a single cell type; obs columns are: {', '.join(cols)}."
            )
            raise PtragError(f"{path}: obs column {spec.cell_type_col!r} (cell type) not found.{hint}")
    if spec.batch_col is not None and spec.batch_col not in cols:
        if "batch_col" in defaults:
            changes["batch_col"] = None
        else:
            raise PtragError(
                f"{path}: obs column {spec.batch_col!r} (batch) not found; pass --batch-col '' for none "
                f"or one of: {', '.join(cols)}."
            )
    check_labels(obs, ColumnSpec(**{**asdict(spec), **changes}), path)
    labels = obs[spec.pert_col].astype(str).str.strip()  # labels are compared stripped
    if not (labels == spec.control).any():
        alt = [c for c in labels.unique() if c.lower() == spec.control.strip().lower()]
        alt += [c for c in _ALTERNATIVES["control"] if (labels == c).any() and c != spec.control]
        common = labels.value_counts().index[:5].tolist()
        hint = (
            f" This file labels controls {alt[0]!r}: pass --control {alt[0]}."
            if alt
            else f" Most common labels: {', '.join(common)}."
        )
        raise PtragError(
            f"{path}: control label {spec.control!r} does not occur in obs column {spec.pert_col!r}.{hint}"
        )
    if changes:
        spec = ColumnSpec(**{**asdict(spec), **changes})
    return spec


def normalised_obs(obs: pd.DataFrame, spec: ColumnSpec, path: Path) -> pd.DataFrame:
    pert = obs[spec.pert_col].astype(str).str.strip().to_numpy()
    if spec.cell_type_col is not None:
        ct = obs[spec.cell_type_col].astype(str).to_numpy()
    else:
        ct = np.full(len(obs), "all", dtype=object)
    is_control = pert == spec.control
    combo = np.array(["+" in p for p in pert]) & ~is_control
    # GEARS style "A+ctrl": a single perturbation written as a combination with the control.
    single = pert.copy()
    for i in np.flatnonzero(combo):
        parts = [p for p in pert[i].split("+") if p and p not in (spec.control, "ctrl")]
        if len(parts) == 1:
            single[i] = parts[0]
            combo[i] = False
        elif not parts:
            is_control[i] = True
            combo[i] = False
    if combo.any():
        n_pert = len(set(pert[combo]))
        log.warning(
            "%s: excluded %d cells of %d combination perturbations (e.g. %s): ptrag predicts "
            "single-gene perturbations.",
            path.name,
            int(combo.sum()),
            n_pert,
            pert[combo][0],
        )
    out = pd.DataFrame(
        {
            "perturbation": np.where(is_control, spec.control, single),
            "cell_type": ct,
            "batch": obs[spec.batch_col].astype(str).to_numpy() if spec.batch_col else None,
            "is_control": is_control,
            "keep": ~combo,
        },
        index=obs.index.astype(str),
    )
    return out
