"""ptrag: retrieval-augmented prediction of cellular responses to genetic perturbations.

The package implements the four models compared in "Retrieval-Augmented Generation for
Predicting Cellular Responses to Gene Perturbation" (PT-RAG, arXiv 2603.07233) -- STATE,
STATE+GenePT, Vanilla RAG and PT-RAG -- as one set generator with a conditioning option,
plus the data layer, the evaluation and the paper's experiments.

The Python API, at the top level (imported on first use, so ``import ptrag`` stays light).
Every function that reads data takes an in-memory :class:`anndata.AnnData` as well as the path
of an ``.h5ad`` file (:data:`DataSource`):

* :func:`read_perturbseq`, :class:`ColumnSpec`, :class:`PerturbData` -- read and check a data set;
* :func:`fewshot_split`, :func:`unseen_perturbation_split`, :func:`load_split` -- splits;
* :func:`resolve_config`, :class:`TrainConfig`, :func:`fit` -- train a model into a run folder
  (:func:`ptrag.train.fit.train`; ``ptrag.train`` is the sub-package);
* :func:`predict`, :func:`predict_baselines` -- a :class:`Prediction` whose ``.adata`` is the
  predicted cells as an AnnData; :func:`write_prediction`;
* :func:`evaluate` -- metrics of predictions (files, AnnData or :class:`Prediction`);
* :func:`cross_celltype`, :func:`sweep` -- the paper's experiments; :func:`simulate` -- the
  synthetic benchmark.
"""

from ptrag.errors import PtragError
from ptrag.lazy import lazy_getattr

__version__ = "0.1.0"

#: Public name -> (module, attribute), imported on first access.
_API = {
    "DataSource": ("ptrag.data.sources", "DataSource"),
    "ColumnSpec": ("ptrag.data.io", "ColumnSpec"),
    "PerturbData": ("ptrag.data.io", "PerturbData"),
    "read_perturbseq": ("ptrag.data.io", "read_perturbseq"),
    "fewshot_split": ("ptrag.data.split_makers", "fewshot_split"),
    "unseen_perturbation_split": ("ptrag.data.split_makers", "unseen_perturbation_split"),
    "load_split": ("ptrag.data.split_makers", "load_split"),
    "simulate": ("ptrag.data.synthetic", "simulate"),
    "TrainConfig": ("ptrag.train.config", "TrainConfig"),
    "resolve_config": ("ptrag.train.config", "resolve_config"),
    "fit": ("ptrag.train.fit", "train"),
    "Prediction": ("ptrag.data.prediction", "Prediction"),
    "write_prediction": ("ptrag.data.prediction", "write_prediction"),
    "predict": ("ptrag.train.predict", "predict"),
    "predict_baselines": ("ptrag.train.predict", "predict_baselines"),
    "evaluate": ("ptrag.eval.evaluate", "evaluate"),
    "cross_celltype": ("ptrag.experiments.cross_celltype", "cross_celltype"),
    "sweep": ("ptrag.experiments.sweep", "sweep"),
}

__all__ = ["PtragError", "__version__", *_API]


__getattr__ = lazy_getattr(globals(), _API)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
