"""Making splits: the few-shot cross-cell-type split, the unseen-perturbation split, and the
choice between a split file and a made split (re-exported by :mod:`ptrag.data.splits`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ptrag.data.splits import Groups, Split, _check_groups, _finish, read_split_toml, resolve_split
from ptrag.errors import PtragError, check_choice


def _held_out_counts(n: int, train_fraction: float, val_share: float) -> tuple[int, int, int]:
    n_train = round(float(train_fraction * n))
    n_train = min(max(n_train, 1), n - 1)
    rest = n - n_train
    n_val = round(float(val_share * rest)) if rest > 1 else 0
    n_val = min(max(n_val, 1 if rest > 1 else 0), rest - 1)
    return n_train, n_val, rest - n_val


def fewshot_split(
    groups: Groups,
    target_cell_type: str,
    train_fraction: float = 0.3,
    val_share: float = 1 / 7,
    seed: int = 0,
) -> Split:
    """The paper's few-shot cross-cell-type split.

    A seeded ``train_fraction`` of the target cell type's perturbations trains; of the rest,
    ``val_share`` goes to validation and the remainder to test (the paper's files hold out
    104 validation and 624 test perturbations, a share of 1/7); every other cell type trains.

    Parameters
    ----------
    groups
        Non-control groups (columns ``cell_type``, ``perturbation``: ``data.groups()``), or the
        data itself: a PerturbData, an AnnData or an ``.h5ad`` path (:data:`~ptrag.data.splits.Groups`).
    target_cell_type
        The cell type to generalise to.
    train_fraction
        Fraction of the target's perturbations that train (0 < f < 1).
    val_share
        Share of the held-out perturbations used for validation (0 <= s < 1).
    seed
        Seed of the assignment.

    Returns
    -------
    Split
    """
    groups = _check_groups(groups)
    if not 0 < train_fraction < 1:
        raise PtragError(f"--fewshot must be between 0 and 1 (got {train_fraction}).")
    if not 0 <= val_share < 1:
        raise PtragError(f"the validation share must be in [0, 1) (got {val_share}).")
    cts = sorted(groups["cell_type"].unique())
    if target_cell_type not in cts:
        raise PtragError(
            f"target cell type {target_cell_type!r} does not occur in the data; choose one of: {', '.join(cts)}."
        )
    target = groups[groups["cell_type"] == target_cell_type]["perturbation"].to_numpy()
    if len(target) < 3:
        raise PtragError(
            f"cell type {target_cell_type!r} has only {len(target)} perturbation(s); a few-shot split needs at least 3."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(target))
    n_train, n_val, _ = _held_out_counts(len(target), train_fraction, val_share)
    which = np.empty(len(target), dtype=object)
    which[order[:n_train]] = "train"
    which[order[n_train : n_train + n_val]] = "val"
    which[order[n_train + n_val :]] = "test"
    table = groups.assign(split="train")
    assign = dict(zip(target, which, strict=True))
    m = table["cell_type"] == target_cell_type
    table.loc[m, "split"] = table.loc[m, "perturbation"].map(assign)
    return _finish(table, "data", f"few-shot split of {target_cell_type!r}")


def unseen_perturbation_split(
    groups: Groups,
    held_out_fraction: float = 0.3,
    val_share: float = 1 / 7,
    seed: int = 0,
) -> Split:
    """Hold out a seeded fraction of perturbations in every cell type (unseen-perturbation task).

    A held-out perturbation is held out in every cell type it occurs in, so that the model
    never sees it in training.

    Parameters
    ----------
    groups
        Non-control groups, or the data (as for :func:`fewshot_split`).
    held_out_fraction
        Fraction of perturbations held out (validation + test).
    val_share
        Share of the held-out perturbations used for validation.
    seed
        Seed of the assignment.

    Returns
    -------
    Split
    """
    groups = _check_groups(groups)
    if not 0 < held_out_fraction < 1:
        raise PtragError(f"the held-out fraction must be between 0 and 1 (got {held_out_fraction}).")
    perts = np.array(sorted(groups["perturbation"].unique()))
    if len(perts) < 3:
        raise PtragError(
            f"the data has only {len(perts)} perturbation(s); an unseen-perturbation split needs at least 3."
        )
    order = np.random.default_rng(seed).permutation(len(perts))
    n_train, n_val, _ = _held_out_counts(len(perts), 1 - held_out_fraction, val_share)
    which = np.empty(len(perts), dtype=object)
    which[order[:n_train]] = "train"
    which[order[n_train : n_train + n_val]] = "val"
    which[order[n_train + n_val :]] = "test"
    table = groups.assign(split=groups["perturbation"].map(dict(zip(perts, which, strict=True))))
    return _finish(table, "data", "unseen-perturbation split")


def make_split(
    groups: Groups,
    task: Literal["fewshot", "unseen-perturbation"] = "fewshot",
    target_cell_type: str | None = None,
    fraction: float = 0.3,
    seed: int = 0,
) -> Split:
    """Make the split of a task when the user gives no split file.

    Parameters
    ----------
    groups
        Non-control groups, or the data (as for :func:`fewshot_split`).
    task
        ``fewshot`` (needs several cell types and a target) or ``unseen-perturbation``.
    target_cell_type
        Target of the few-shot task.
    fraction
        Few-shot: fraction of the target's perturbations that train. Unseen-perturbation:
        fraction of perturbations held out.
    seed
        Seed.

    Returns
    -------
    Split
    """
    check_choice("--task", task, ("fewshot", "unseen-perturbation"))
    groups = _check_groups(groups)
    n_ct = groups["cell_type"].nunique()
    if task == "fewshot" and n_ct > 1:
        if target_cell_type is None:
            raise PtragError(
                "the few-shot task needs --target-cell-type (one of: "
                f"{', '.join(sorted(groups['cell_type'].unique()))}), or give --split."
            )
        return fewshot_split(groups, target_cell_type, fraction, seed=seed)
    return unseen_perturbation_split(groups, fraction, seed=seed)


def load_split(
    groups: Groups,
    split_path: str | Path | None = None,
    **kwargs,
) -> Split:
    """Read ``split_path`` and match it to ``groups``, or make the split with :func:`make_split`."""
    if split_path is not None:
        return resolve_split(read_split_toml(split_path), groups, source=str(split_path))
    return make_split(groups, **kwargs)
