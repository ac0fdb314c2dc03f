"""Where a data set comes from: the path of an ``.h5ad`` file or an in-memory AnnData.

Every entry point of the Python API that reads Perturb-seq data (reading, splitting, training,
predicting, evaluating, the experiments) takes a :data:`DataSource`; the one reader,
:func:`ptrag.data.io.read_perturbseq`, resolves it with :func:`open_source`.

* A path is read as before (checked, then ``anndata.read_h5ad``; ``backed=True`` streams it).
* An in-memory :class:`anndata.AnnData` (a view too) is used as it is, not copied: do not change
  it while ptrag works on it. ``backed=True`` is ignored with a note (the matrix already is in
  memory; pass the file's path to stream it). Messages name it ``<AnnData 1200 x 500>``
  (:class:`AnnDataLabel`) where they would name the file.
* An AnnData opened backed (``anndata.read_h5ad(path, backed="r")``) is read from its file, backed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ptrag.data.checks import check_fits_in_memory
from ptrag.errors import PtragError

log = logging.getLogger("ptrag")

#: What the data arguments of the Python API accept: an ``.h5ad`` path or an AnnData.
DataSource = str | os.PathLike | ad.AnnData


class AnnDataLabel(str):
    """The name of an in-memory AnnData in messages (``<AnnData 1200 x 500>``): it stands where a
    file path would, so it also answers ``.name``."""

    @property
    def name(self) -> str:
        """The label itself (a file path's ``.name`` is its file name)."""
        return str(self)


def anndata_label(adata: ad.AnnData) -> AnnDataLabel:
    """``<AnnData n_obs x n_vars>`` (``<AnnData view ...>`` for a view)."""
    view = " view" if adata.is_view else ""
    return AnnDataLabel(f"<AnnData{view} {adata.n_obs} x {adata.n_vars}>")


def source_label(source) -> str:
    """How messages and provenance files name a data source (a path, or an AnnData's label)."""
    if isinstance(source, ad.AnnData):
        return str(Path(source.filename)) if source.isbacked else str(anndata_label(source))
    return str(source)


def open_source(source: DataSource, backed: bool = False) -> tuple[ad.AnnData, Path | AnnDataLabel, bool]:
    """The AnnData of ``source``, the name messages give it, and whether it is read backed.

    Parameters
    ----------
    source
        An ``.h5ad`` path or an AnnData (see the module docstring).
    backed
        Stream the matrix from disk (paths and backed AnnData only; ignored, with a note, for
        an in-memory AnnData).

    Returns
    -------
    tuple
        ``(adata, path_or_label, backed)``.

    Raises
    ------
    PtragError
        For a source that is neither, a missing, non-HDF5 or unreadable file, or a file that
        does not fit in memory.
    """
    if isinstance(source, ad.AnnData):
        if source.isbacked:
            return open_source(Path(source.filename), True)
        if backed:
            log.info(
                "backed=True ignored: the AnnData is already in memory (pass the path of its .h5ad "
                "file to stream the expression from disk)."
            )
        return source, anndata_label(source), False
    if not isinstance(source, (str, os.PathLike)):
        raise PtragError(
            f"expected an anndata.AnnData or the path of an .h5ad file, got {type(source).__name__}; "
            "read the data with anndata.read_h5ad / scanpy.read_h5ad, or pass the file's path."
        )
    path = Path(source)
    check_data_file(path, backed)
    try:
        adata = ad.read_h5ad(path, backed="r") if backed else ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise PtragError(f"{path} could not be read as AnnData ({exc}); is the file complete?") from exc
    return adata, path, backed


def check_data_file(path: Path, backed: bool) -> None:
    """Refuse a missing path, a folder or a non-HDF5 file, and (in memory) a file too large for memory."""
    if not path.exists():
        raise PtragError(f"data file not found: {path}. Check the path given to --data.")
    if path.is_dir():
        raise PtragError(f"{path} is a folder; --data takes an .h5ad file.")
    if not h5py.is_hdf5(path):
        raise PtragError(
            f"{path} is not an .h5ad (HDF5) file. Convert it to AnnData first "
            "(e.g. scanpy.read_10x_h5 / anndata.read_csv, then .write_h5ad)."
        )
    if not backed:
        check_fits_in_memory(path)


def write_source(source: DataSource, path: str | Path) -> Path:
    """A path holding ``source``: a path is returned as it is; an AnnData is written to ``path``
    (atomically; replacing an older file there) and ``path`` returned (for the experiment
    protocols, whose steps each read the data by path)."""
    from ptrag.errors import atomic_path

    if not isinstance(source, ad.AnnData):
        return Path(source)
    if source.isbacked:
        return Path(source.filename)
    path = Path(path)
    with atomic_path(path) as tmp:
        (source.copy() if source.is_view else source).write_h5ad(tmp)
    log.info("wrote the in-memory AnnData (%s) to %s for the experiment's steps.", anndata_label(source), path)
    return path


def expression_source(adata, spec, path: Path | AnnDataLabel, backed: bool):
    """``(gene names, matrix, open h5py file or None)`` of the expression ``spec`` names:
    ``obsm[spec.obsm_key]``, ``layers[spec.layer]`` or ``X``; backed: an h5py dataset or
    AnnData sparse dataset of the file (opened here), else the in-memory matrix."""
    if spec.layer is not None and spec.obsm_key is not None:
        raise PtragError("pass at most one of --layer and --obsm-key.")
    h5file = None
    if spec.obsm_key is not None:
        if spec.obsm_key not in adata.obsm:
            raise PtragError(
                f"{path}: obsm key {spec.obsm_key!r} not found; available: {', '.join(adata.obsm.keys()) or 'none'}."
            )
        m = adata.obsm[spec.obsm_key]
        m = m.to_numpy() if isinstance(m, pd.DataFrame) else m
        n = m.shape[1]
        hv = adata.var.get("highly_variable")
        if n == adata.n_vars:
            names = list(map(str, adata.var_names))
        elif hv is not None and int(np.sum(hv)) == n:
            names = list(map(str, adata.var_names[np.asarray(hv, bool)]))
        else:
            names = [f"{spec.obsm_key}_{i}" for i in range(n)]
        matrix = sp.csr_matrix(m) if sp.issparse(m) else np.asarray(m)
        return names, matrix, None
    names = list(map(str, adata.var_names))
    if spec.layer is not None:
        if spec.layer not in adata.layers:
            raise PtragError(
                f"{path}: layer {spec.layer!r} not found; available: {', '.join(adata.layers.keys()) or 'none'}."
            )
        if not backed:
            return names, _as_row_matrix(adata.layers[spec.layer]), None
        h5file = h5py.File(path, "r")
        return names, _h5_matrix(h5file[f"layers/{spec.layer}"]), h5file
    if adata.X is None:
        raise PtragError(f"{path}: X is empty; pass --layer or --obsm-key to say where the expression is.")
    if not backed:
        return names, _as_row_matrix(adata.X), None
    h5file = h5py.File(path, "r")
    return names, _h5_matrix(h5file["X"]), h5file


def _as_row_matrix(m):
    if sp.issparse(m):
        return m.tocsr() if not isinstance(m, sp.csr_matrix) else m
    return np.asarray(m)


def _h5_matrix(node):
    if isinstance(node, h5py.Dataset):
        return node
    enc = node.attrs.get("encoding-type", "")
    if enc != "csr_matrix":
        raise PtragError(
            f"backed reading needs CSR or dense expression, found {enc!r}; rewrite the file with "
            "X as CSR (adata.X = scipy.sparse.csr_matrix(adata.X)) or use --in-memory."
        )
    return ad.io.sparse_dataset(node)
