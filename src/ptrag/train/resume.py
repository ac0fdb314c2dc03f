"""Resuming a run: which options may change, and the check of the others.

``ptrag train --resume`` continues a run with its own ``config.toml``; an option given again
that would change the model or the data is refused (naming it, old and new value), the ones of
:data:`RESUMABLE_OPTIONS` (how long and where it trains) apply.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ptrag.errors import PtragError
from ptrag.train.base_choice import AUTO_OPTIONS
from ptrag.train.config import TrainConfig, coerce_option

#: Options that may change when a run is resumed: how long and where it trains, not what it
#: trains (docs/training.md, "Resuming"). The number of processes (``devices``, ``strategy``)
#: may change because ``--batch-size`` is the global batch and each epoch's sets are the same
#: whatever the number of processes (docs/training.md, "Distributed training").
RESUMABLE_OPTIONS = (
    "max_steps",
    "val_every",
    "early_stopping",
    "calibration",
    "accelerator",
    "devices",
    "strategy",
    "num_workers",
)


def resume_config(run_cfg: TrainConfig, overrides: dict[str, Any], run_dir: str | Path = "the run") -> TrainConfig:
    """The configuration of a resumed run: the run's own, with the given options that may change.

    Parameters
    ----------
    run_cfg
        The run's ``config.toml``.
    overrides
        Options given for the resumed run (``None`` values: not given; ``data``: a column table).
    run_dir
        The run folder, for the message.

    Returns
    -------
    TrainConfig
        ``run_cfg`` with the :data:`RESUMABLE_OPTIONS` among ``overrides`` applied.

    Raises
    ------
    PtragError
        Naming every given option that differs from the run's and would change the model or the
        data (old and new value).
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    old = dataclasses.asdict(run_cfg)
    if "data" in given:
        given["data"] = {**old["data"], **given["data"]}
    clashes, keep = [], {}
    for name, value in given.items():
        if name not in old:
            raise PtragError(f"unknown option {name!r}.")
        new = value if name == "data" else coerce_option(name, value, "option")
        if new == old[name] or (name in AUTO_OPTIONS and new == "auto"):
            continue  # auto: what the run resolved it to when it started
        if name in RESUMABLE_OPTIONS:
            keep[name] = new
        else:
            clashes.append(f"--{name.replace('_', '-')}: the run has {old[name]!r}, given {new!r}")
    if clashes:
        raise PtragError(
            f"--resume: {run_dir} was trained with other options ({'; '.join(clashes)}). Resume without "
            f"them, or start a new run with another --out. Options that may change on resume: "
            f"{', '.join('--' + n.replace('_', '-') for n in RESUMABLE_OPTIONS)}."
        )
    cfg = dataclasses.replace(run_cfg, **keep)
    cfg.validate()
    return cfg
