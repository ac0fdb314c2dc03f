"""What :func:`ptrag.train.predict.predict` returns, and how it is written to disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import pandas as pd

from ptrag.errors import PtragError, atomic_path, atomic_write_csv


@dataclass
class Prediction:
    """Output of :func:`ptrag.train.predict.predict`.

    Attributes
    ----------
    adata
        The predicted cells as an AnnData (the run's genes as ``var_names``; ``obs``:
        ``perturbation``, ``cell_type``, ``is_control``, ``split``; the observed controls of
        each predicted cell type included; ``uns["ptrag"]``: model, control label, run folder).
        Use it like any AnnData (scanpy, cell-eval), or pass the :class:`Prediction` or its
        ``adata`` to :func:`ptrag.eval.evaluate.evaluate`.
    retrieval
        The RAG models' retrieval log (``None`` for the other models and the baselines).
    """

    adata: ad.AnnData
    retrieval: pd.DataFrame | None

    def write(self, out: str | Path) -> dict[str, Path]:
        """:func:`write_prediction` of this prediction."""
        return write_prediction(self, out)


def write_prediction(pred: Prediction, out: str | Path) -> dict[str, Path]:
    """Write ``out`` (h5ad) and, for RAG models, ``<out stem>.retrieval.csv`` atomically."""
    out = Path(out)
    if out.suffix != ".h5ad":
        raise PtragError(f"--out {out}: prediction files are AnnData; give a path ending in .h5ad.")
    paths = {"predictions": out}
    with atomic_path(out) as tmp:
        pred.adata.write_h5ad(tmp)
    if pred.retrieval is not None:
        rpath = out.with_suffix(".retrieval.csv")
        atomic_write_csv(rpath, pred.retrieval)
        paths["retrieval"] = rpath
    return paths
