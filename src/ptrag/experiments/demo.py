"""The main job on the embedded default: simulate, split, train the four models, predict, compare.

``ptrag demo --out DIR`` runs it; it needs no input files and finishes in minutes on two CPU
cores with the ``cpu`` preset.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ptrag.train.config import MODELS, resolve_config

log = logging.getLogger("ptrag")


def run_demo(
    out_dir: str | Path,
    max_steps: int = 200,
    seed: int = 0,
    models: Sequence[str] = MODELS,
    target_cell_type: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run the demo and return one row per model.

    Parameters
    ----------
    out_dir
        Folder for the synthetic data, the split, the runs and the predictions.
    max_steps
        Training steps per model.
    seed
        Seed of the simulation, the split and the training.
    models
        Models to train.
    target_cell_type
        Held-out cell type (default: the first).
    progress
        Show progress bars.

    Returns
    -------
    pandas.DataFrame
        Per model: parameters, validation energy, the predict-the-control baseline and the
        test metrics when the evaluation module is available.
    """
    from ptrag.data.io import read_perturbseq
    from ptrag.data.splits import fewshot_split
    from ptrag.data.synthetic import simulate, write_benchmark
    from ptrag.train.fit import train
    from ptrag.train.predict import predict, write_prediction

    out = Path(out_dir)
    bench = simulate(seed=seed)
    files = write_benchmark(bench, out / "data")
    data = read_perturbseq(files["data"])
    log.info("%r", data)
    target = target_cell_type or data.cell_types[0]
    split = fewshot_split(data.groups(), target, 0.3, seed=seed)
    split.to_toml(out / "split.toml")
    log.info("few-shot split for %s: %s", target, split.counts().loc[target].to_dict())
    rows = []
    for model in models:
        run = out / "runs" / model
        cfg = resolve_config(dict(model=model, max_steps=max_steps, val_every=max(max_steps // 4, 1), seed=seed))
        genes = [files["genes"]] if cfg.uses_gene_table else []
        if (run / "checkpoints" / "last.ckpt").is_file():
            log.info("%s: already trained in %s, reusing it", model, run)
        else:
            train(cfg, files["data"], run, out / "split.toml", genes, progress=progress)
        pred = predict(run, files["data"], "test")
        write_prediction(pred, out / "predictions" / f"{model}.h5ad")
        import json

        summary = json.loads((run / "train_summary.json").read_text())
        rows.append(
            dict(
                model=model,
                parameters=summary["n_parameters"],
                val_energy=summary["val_energy"],
                val_energy_control=summary["val_energy_control"],
            )
        )
    table = pd.DataFrame(rows)
    table.to_csv(out / "demo_summary.csv", index=False)
    return table
