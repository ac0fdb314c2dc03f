"""ptrag.data: reading, checking and splitting Perturb-seq data, gene tables, the synthetic benchmark.

The reading entry points take an ``.h5ad`` path or an in-memory AnnData
(:data:`~ptrag.data.sources.DataSource`); re-exported here (imported on first use):
:func:`~ptrag.data.io.read_perturbseq`, :class:`~ptrag.data.io.ColumnSpec`,
:class:`~ptrag.data.io.PerturbData`, the split makers of :mod:`ptrag.data.split_makers`,
:func:`~ptrag.data.prepare_write.write_prepared` (``ptrag prepare``: a run-ready copy that
backed reads use).
"""

from ptrag.lazy import lazy_getattr

#: Public name -> module, imported on first access.
_API = {
    "DataSource": "ptrag.data.sources",
    "ColumnSpec": "ptrag.data.io",
    "PerturbData": "ptrag.data.io",
    "read_perturbseq": "ptrag.data.io",
    "fewshot_split": "ptrag.data.split_makers",
    "unseen_perturbation_split": "ptrag.data.split_makers",
    "make_split": "ptrag.data.split_makers",
    "load_split": "ptrag.data.split_makers",
    "write_prepared": "ptrag.data.prepare_write",
}

__all__ = list(_API)


__getattr__ = lazy_getattr(globals(), _API)
