"""Train / validation / test splits of (cell type, perturbation) groups.

Two sources:

* the cell-load TOML format used by STATE and by the paper (``[datasets]``, ``[training]``,
  ``[zeroshot]``, ``[fewshot."dataset.celltype"] val = [...] test = [...]``), read with
  :func:`read_split_toml` and matched to a data set with :func:`resolve_split`;
* the paper's protocol made programmatically: :func:`fewshot_split` (a seeded fraction of a
  target cell type's perturbations trains, the rest is split into validation and test, every
  other cell type trains) and :func:`unseen_perturbation_split` (held-out perturbations in
  every cell type, for a data set with one cell type).

Control cells are available to every split; they never appear in a split table. The split
actually used is written back as cell-load TOML with :meth:`Split.to_toml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd
import tomli_w

from ptrag.data.io import PerturbData, read_perturbseq
from ptrag.data.sources import DataSource
from ptrag.errors import PtragError, atomic_write_text, check_choice, read_toml

SplitName = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class SplitSpec:
    """The content of a cell-load split TOML file.

    Attributes
    ----------
    datasets
        ``[datasets]``: dataset name -> path.
    training
        ``[training]``: dataset name -> ``"train"``.
    zeroshot
        ``[zeroshot]``: ``"dataset.celltype"`` -> ``"val"`` or ``"test"`` (whole cell type held out).
    fewshot
        ``[fewshot."dataset.celltype"]``: -> ``{"val": [...], "test": [...]}``.
    """

    datasets: dict[str, str] = field(default_factory=dict)
    training: dict[str, str] = field(default_factory=dict)
    zeroshot: dict[str, str] = field(default_factory=dict)
    fewshot: dict[str, dict[str, list[str]]] = field(default_factory=dict)


def read_split_toml(path: str | Path) -> SplitSpec:
    """Parse a cell-load split file.

    Parameters
    ----------
    path
        The TOML file.

    Returns
    -------
    SplitSpec

    Raises
    ------
    PtragError
        If the file is missing, is not TOML, or its sections have the wrong shape.
    """
    path = Path(path)
    raw = read_toml(path, "split file", "Check the path given to --split.")
    unknown = set(raw) - {"datasets", "training", "zeroshot", "fewshot"}
    if unknown:
        raise PtragError(
            f"{path}: unknown section(s) {sorted(unknown)}; a cell-load split has "
            '[datasets], [training], [zeroshot] and [fewshot."dataset.celltype"].'
        )
    spec = SplitSpec(
        datasets=dict(raw.get("datasets", {})),
        training=dict(raw.get("training", {})),
        zeroshot=dict(raw.get("zeroshot", {})),
    )
    for key, value in spec.zeroshot.items():
        if value not in ("val", "test"):
            raise PtragError(f'{path}: [zeroshot] {key!r} = {value!r}; use "val" or "test".')
    for key, section in raw.get("fewshot", {}).items():
        if not isinstance(section, dict):
            raise PtragError(f"{path}: [fewshot] entry {key!r} must be a table with val = [...] and test = [...].")
        bad = set(section) - {"val", "test"}
        if bad:
            raise PtragError(f'{path}: [fewshot."{key}"] has unknown key(s) {sorted(bad)}; use val and test.')
        lists = {}
        for which in ("val", "test"):
            items = section.get(which, [])
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise PtragError(f'{path}: [fewshot."{key}"] {which} must be a list of gene names.')
            lists[which] = [x.strip() for x in items]
        overlap = set(lists["val"]) & set(lists["test"])
        if overlap:
            raise PtragError(
                f'{path}: [fewshot."{key}"] lists {len(overlap)} perturbation(s) in both val and test '
                f"(e.g. {sorted(overlap)[:3]}); each perturbation belongs to one split."
            )
        spec.fewshot[key] = lists
    return spec


@dataclass
class Split:
    """An assignment of (cell type, perturbation) groups to train / val / test.

    Attributes
    ----------
    table
        Columns ``cell_type``, ``perturbation``, ``split``; one row per non-control group.
    dataset
        Dataset name used when writing cell-load TOML.
    """

    table: pd.DataFrame
    dataset: str = "data"

    def groups(self, which: SplitName) -> pd.DataFrame:
        """The (cell type, perturbation) groups of one split."""
        check_choice("split", which, SPLITS)
        return self.table[self.table["split"] == which][["cell_type", "perturbation"]].reset_index(drop=True)

    def perturbations(self, which: SplitName, cell_type: str | None = None) -> list[str]:
        """Sorted perturbations of one split (optionally of one cell type)."""
        g = self.groups(which)
        if cell_type is not None:
            g = g[g["cell_type"] == cell_type]
        return sorted(g["perturbation"].unique())

    def counts(self) -> pd.DataFrame:
        """Number of groups per cell type and split."""
        return (
            self.table.groupby(["cell_type", "split"])
            .size()
            .unstack(fill_value=0)
            .reindex(columns=list(SPLITS), fill_value=0)
        )

    def to_spec(self) -> SplitSpec:
        """The split as a cell-load :class:`SplitSpec` (held-out lists per cell type)."""
        spec = SplitSpec(datasets={self.dataset: self.dataset}, training={self.dataset: "train"})
        for ct, sub in self.table.groupby("cell_type", sort=True):
            held = sub[sub["split"] != "train"]
            if held.empty:
                continue
            if (sub["split"] != "train").all() and sub["split"].nunique() == 1:
                spec.zeroshot[f"{self.dataset}.{ct}"] = str(sub["split"].iloc[0])
                continue
            spec.fewshot[f"{self.dataset}.{ct}"] = {
                w: sorted(sub.loc[sub["split"] == w, "perturbation"]) for w in ("val", "test")
            }
        return spec

    def to_toml(self, path: str | Path) -> None:
        """Write the split as cell-load TOML (atomically)."""
        spec = self.to_spec()
        doc = {
            "datasets": spec.datasets,
            "training": spec.training,
            "zeroshot": spec.zeroshot,
            "fewshot": spec.fewshot,
        }
        atomic_write_text(path, "# ptrag split (cell-load format)\n" + tomli_w.dumps(doc))


#: What the split functions take as ``groups``: the groups table (``PerturbData.groups()``), a
#: :class:`~ptrag.data.io.PerturbData`, or a data source (an AnnData or an ``.h5ad`` path, read
#: with ptrag's default columns; read it with :func:`~ptrag.data.io.read_perturbseq` and a
#: ``ColumnSpec`` and pass the result for other columns).
Groups = pd.DataFrame | PerturbData | DataSource


def as_groups(groups: Groups) -> pd.DataFrame:
    """The non-control groups table of ``groups`` (see :data:`Groups`)."""
    if isinstance(groups, pd.DataFrame):
        return groups
    if isinstance(groups, PerturbData):
        return groups.groups()
    return read_perturbseq(groups).groups()


def _check_groups(groups: Groups) -> pd.DataFrame:
    groups = as_groups(groups)
    missing = [c for c in ("cell_type", "perturbation") if c not in groups.columns]
    if missing:
        raise PtragError(
            f"the groups table has no column {missing[0]!r}: pass data.groups() of a PerturbData "
            "(columns cell_type, perturbation), the PerturbData itself, or an AnnData."
        )
    if groups.empty:
        raise PtragError("the data holds no perturbed cells to split (only controls?).")
    return (
        groups[["cell_type", "perturbation"]]
        .drop_duplicates()
        .sort_values(["cell_type", "perturbation"], ignore_index=True)
    )


def _finish(table: pd.DataFrame, dataset: str, where: str) -> Split:
    n = table["split"].value_counts()
    if n.get("train", 0) == 0:
        raise PtragError(f"{where}: the split leaves no training groups; hold out fewer perturbations.")
    if n.get("test", 0) == 0 and n.get("val", 0) == 0:
        raise PtragError(
            f"{where}: the split is empty (no validation or test groups); name some perturbations to hold out."
        )
    return Split(table.reset_index(drop=True), dataset)


def resolve_split(spec: SplitSpec, groups: Groups, source: str = "split") -> Split:
    """Match a cell-load split to the groups of a data set.

    Cell types are matched to the part after the dot of ``"dataset.celltype"``
    (case-insensitive). Every group not held out trains.

    Parameters
    ----------
    spec
        The parsed split.
    groups
        Non-control groups of the data (columns ``cell_type``, ``perturbation``), or the data
        (:data:`Groups`).
    source
        Name of the split file, for messages.

    Returns
    -------
    Split

    Raises
    ------
    PtragError
        When the split names a cell type or perturbation that does not occur, or leaves no
        training or no held-out groups.
    """
    groups = _check_groups(groups)
    by_lower = {ct.lower(): ct for ct in groups["cell_type"].unique()}
    table = groups.assign(split="train")

    def cell_type_of(key: str, section: str) -> str:
        ct = key.split(".", 1)[1] if "." in key else key
        if ct.lower() not in by_lower:
            raise PtragError(
                f"{source}: {section} names cell type {ct!r}, which does not occur in the data "
                f'(cell types: {", ".join(sorted(by_lower.values()))}). Fix the key "dataset.celltype" '
                "or pass --cell-type-col."
            )
        return by_lower[ct.lower()]

    for key, which in spec.zeroshot.items():
        ct = cell_type_of(key, "[zeroshot]")
        table.loc[table["cell_type"] == ct, "split"] = which
    for key, lists in spec.fewshot.items():
        ct = cell_type_of(key, f'[fewshot."{key}"]')
        present = set(table.loc[table["cell_type"] == ct, "perturbation"])
        for which in ("val", "test"):
            missing = [p for p in lists[which] if p not in present]
            if missing:
                raise PtragError(
                    f'{source}: [fewshot."{key}"] {which} names {len(missing)} perturbation(s) with no '
                    f"cells of cell type {ct!r} in the data (e.g. {', '.join(missing[:5])}). Remove them "
                    "from the split or check --pert-col / the gene symbols."
                )
            m = (table["cell_type"] == ct) & table["perturbation"].isin(lists[which])
            table.loc[m, "split"] = which
    return _finish(table, next(iter(spec.datasets), "data"), source)


_MAKERS = ("fewshot_split", "unseen_perturbation_split", "make_split", "load_split")


def __getattr__(name: str):
    """The split makers live in :mod:`ptrag.data.split_makers` (imported lazily: they build on
    this module)."""
    if name in _MAKERS:
        from ptrag.data import split_makers

        return getattr(split_makers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
