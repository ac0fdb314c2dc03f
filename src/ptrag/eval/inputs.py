"""The inputs of ``ptrag evaluate``: a run folder (genes, PCA space, data columns) and prediction
files (``ptrag predict``'s format), each read and checked against the other."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.pca import PCASpace
from ptrag.data.prediction import Prediction
from ptrag.data.sources import AnnDataLabel, source_label
from ptrag.errors import PtragError, check_choice, read_toml

#: A prediction as :func:`read_predictions` takes it: a file, an AnnData or a ``Prediction``.
PredictionSource = str | os.PathLike | ad.AnnData | Prediction

# --------------------------------------------------------------------------- the run


@dataclass
class RunInfo:
    """What evaluation needs from a run folder.

    Attributes
    ----------
    run_dir
        The folder.
    genes
        The run's genes, in order (``genes.txt``).
    data
        The ``[data]`` table of ``config.toml`` (empty when absent).
    model
        The ``model`` key of ``config.toml`` (``None`` when absent).
    """

    run_dir: Path
    genes: list[str]
    data: dict
    model: str | None

    def pca(self) -> PCASpace:
        """The run's PCA space (``pca.npz``), checked against the run's genes."""
        space = PCASpace.load(self.run_dir / "pca.npz")
        if space.n_genes != len(self.genes) or (space.gene_names and space.gene_names != self.genes):
            raise PtragError(
                f"{self.run_dir / 'pca.npz'} was fit on other genes than {self.run_dir / 'genes.txt'} "
                f"({space.n_genes} vs {len(self.genes)} genes); the run folder is inconsistent: "
                "re-create pca.npz with the run's genes."
            )
        return space


def load_run(run_dir: str | Path) -> RunInfo:
    """Read ``genes.txt`` and ``config.toml`` of a run folder.

    Parameters
    ----------
    run_dir
        The run folder (``--run``).

    Returns
    -------
    RunInfo
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PtragError(f"run folder not found: {run_dir}. Pass the folder written by training to --run.")
    gfile = run_dir / "genes.txt"
    if not gfile.is_file():
        raise PtragError(
            f"{gfile} not found: --run must be a run folder written by training (it lists the run's genes)."
        )
    genes = [g.strip() for g in gfile.read_text().splitlines() if g.strip()]
    if not genes:
        raise PtragError(f"{gfile} lists no genes.")
    if len(set(genes)) != len(genes):
        dup = pd.Index(genes)[pd.Index(genes).duplicated()][0]
        raise PtragError(f"{gfile} lists gene {dup!r} more than once.")
    data, model = {}, None
    cfile = run_dir / "config.toml"
    if cfile.is_file():
        cfg = read_toml(cfile, "run configuration")
        data = dict(cfg.get("data", {}) or {})
        model = cfg.get("model") if isinstance(cfg.get("model"), str) else None
    return RunInfo(run_dir, genes, data, model)


# ---------------------------------------------------------------------- predictions


@dataclass
class Predictions:
    """One prediction file, restricted to the run's genes.

    Attributes
    ----------
    path
        The file (for an in-memory prediction, its label, e.g. ``<AnnData 120 x 20>``).
    model
        Model name (``uns["ptrag"]["model"]``, else the file name, else ``prediction``).
    X
        Expression matrix (dense or CSR), columns = the run's genes in order.
    perturbation, cell_type
        Per-cell labels (str arrays).
    is_control
        Per-cell control flag.
    control
        The control label.
    """

    path: Path | AnnDataLabel
    model: str
    X: object
    perturbation: np.ndarray
    cell_type: np.ndarray
    is_control: np.ndarray
    control: str

    def groups(self) -> pd.DataFrame:
        """Non-control groups: ``cell_type, perturbation, rows`` (row indices, file order)."""
        df = pd.DataFrame({"cell_type": self.cell_type, "perturbation": self.perturbation})
        df = df[~self.is_control]
        out = [
            {"cell_type": ct, "perturbation": p, "rows": idx.to_numpy()}
            for (ct, p), idx in df.groupby(["cell_type", "perturbation"], sort=True).groups.items()
        ]
        return pd.DataFrame(out, columns=["cell_type", "perturbation", "rows"])

    def control_rows(self, cell_type: str) -> np.ndarray:
        """Rows of the control cells of a cell type."""
        return np.flatnonzero(self.is_control & (self.cell_type == cell_type))

    def cells(self, rows: np.ndarray) -> np.ndarray:
        """Dense float32 expression of ``rows``."""
        x = self.X[rows]
        return (x.toarray() if sp.issparse(x) else np.asarray(x)).astype(np.float32, copy=False)


def read_predictions(
    path: PredictionSource, genes: Sequence[str], default_control: str = "non-targeting"
) -> Predictions:
    """Read a prediction (a file written by ``ptrag predict``, or in memory) and check it against the run.

    Parameters
    ----------
    path
        The ``.h5ad`` prediction file, an AnnData of the same layout, or the
        :class:`~ptrag.train.predict.Prediction` that ``predict`` returns.
    genes
        The run's genes; the file must hold all of them (they are taken in this order).
    default_control
        Control label when the file does not state one in ``uns["ptrag"]["control"]``.

    Returns
    -------
    Predictions
    """
    adata, path = _prediction_anndata(path)
    meta = adata.uns.get("ptrag", {}) or {}
    meta = dict(meta) if hasattr(meta, "keys") else {}
    pert_col = str(meta.get("pert_col", "perturbation"))
    ct_col = str(meta.get("cell_type_col", "cell_type"))
    control = str(meta.get("control", default_control))
    model = str(meta.get("model") or (path.stem if isinstance(path, Path) else "prediction"))
    for col, what in ((pert_col, "perturbation"), (ct_col, "cell type")):
        if col not in adata.obs.columns:
            raise PtragError(
                f"{path}: obs column {col!r} ({what}) not found; a prediction file needs obs columns "
                f"perturbation, cell_type and is_control (found: {', '.join(map(str, adata.obs.columns))})."
            )
    X = _run_genes_matrix(adata, path, genes)
    pert = adata.obs[pert_col].astype(str).to_numpy()
    ct = adata.obs[ct_col].astype(str).to_numpy()
    if "is_control" in adata.obs.columns:
        is_control = adata.obs["is_control"].astype(bool).to_numpy()
    else:
        is_control = pert == control
    if (~is_control).sum() == 0:
        raise PtragError(f"{path} holds no predicted (non-control) cells.")
    return Predictions(path, model, X, pert, ct, is_control, control)


def prediction_label(source: PredictionSource) -> str:
    """How messages and ``evaluation.json`` name a prediction (its path, or an AnnData's label)."""
    return source_label(source.adata if isinstance(source, Prediction) else source)


def _prediction_anndata(source: PredictionSource) -> tuple[ad.AnnData, Path | AnnDataLabel]:
    """The AnnData of a prediction and its name in messages; a :class:`PtragError` for anything
    that is neither a path, an AnnData nor a ``Prediction``."""
    source = source.adata if isinstance(source, Prediction) else source
    if isinstance(source, ad.AnnData):
        return source, AnnDataLabel(source_label(source))
    if not isinstance(source, (str, os.PathLike)):
        raise PtragError(
            f"a prediction must be an .h5ad path, an AnnData or a ptrag Prediction, got {type(source).__name__}."
        )
    return _read_anndata(Path(source)), Path(source)


def _read_anndata(path: Path) -> ad.AnnData:
    """Read an ``.h5ad`` prediction file; a :class:`PtragError` when it is missing or unreadable."""
    import h5py

    if not path.is_file():
        raise PtragError(f"prediction file not found: {path}. Check --pred.")
    if not h5py.is_hdf5(path):
        raise PtragError(f"{path} is not an .h5ad file; --pred takes the output of ptrag predict.")
    try:
        return ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise PtragError(f"{path} could not be read as AnnData ({exc}); is the file complete?") from exc


def _run_genes_matrix(adata: ad.AnnData, path: Path, genes: Sequence[str]) -> np.ndarray | sp.csr_matrix:
    """The file's expression matrix with the run's genes as columns, in order (dense, or CSR when
    sparse); checks that every gene is there once and that all values are finite."""
    names = pd.Index(adata.var_names.astype(str))
    missing = [g for g in genes if g not in names]
    if missing:
        raise PtragError(
            f"{path}: {len(missing)} of the run's {len(genes)} genes are absent from the predictions "
            f"(e.g. {', '.join(missing[:5])}); were they made with this --run?"
        )
    if names.has_duplicates:
        raise PtragError(f"{path}: duplicated gene names in var_names (e.g. {names[names.duplicated()][0]!r}).")
    X = adata.X
    if X is None:
        raise PtragError(f"{path}: X is empty.")
    idx = names.get_indexer(list(genes))
    if not np.array_equal(idx, np.arange(len(names))):
        X = X[:, idx]
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        vals = X.data
    else:
        X = np.asarray(X)
        vals = X
    if not np.all(np.isfinite(vals)):
        raise PtragError(f"{path}: predictions contain NaN or Inf values.")
    return X


def read_inputs(
    pred_paths: Sequence[PredictionSource], run_dir: str | Path, mode: str, spec, names: Sequence[str] | None
) -> tuple[RunInfo, PCASpace | None, object, list[Predictions]]:
    """Read and check the run folder and the prediction files of :func:`ptrag.eval.evaluate.evaluate`.

    Returns ``(run, pca, spec, preds)``: the run, its PCA space (``None`` in gge mode), the data
    columns (``spec``, else the run's ``[data]`` table, else ptrag's defaults) and the
    predictions, renamed by ``names``.
    """
    from ptrag.data.io import ColumnSpec

    check_choice("--mode", mode, ("ptrag", "gge"))
    if not pred_paths:
        raise PtragError("give at least one prediction file with --pred.")
    run = load_run(run_dir)
    pca = run.pca() if mode == "ptrag" else None
    if spec is None:
        # columns at ptrag's defaults stay optional, as in training (read_perturbseq's own rule
        # when spec_is_default is None)
        spec = ColumnSpec.from_dict(run.data) if run.data else ColumnSpec()
    if names and len(names) != len(pred_paths):
        raise PtragError(f"give one --name per --pred ({len(names)} names for {len(pred_paths)} files).")
    preds = [read_predictions(p, run.genes, spec.control) for p in pred_paths]
    for p, name in zip(preds, names or [], strict=False):
        p.model = str(name)
    return run, pca, spec, preds
