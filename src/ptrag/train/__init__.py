"""ptrag.train: training a run folder, prediction and the baselines.

Re-exported here (imported on first use): :func:`~ptrag.train.fit.train`,
:func:`~ptrag.train.config.resolve_config`, :class:`~ptrag.train.config.TrainConfig`,
:class:`~ptrag.data.prediction.Prediction` and :func:`~ptrag.data.prediction.write_prediction`.
Prediction itself is :func:`ptrag.train.predict.predict` (``ptrag.train.predict`` is its module;
``ptrag.predict`` is the function).
"""

from ptrag.lazy import lazy_getattr

#: Public name -> module, imported on first access.
_API = {
    "train": "ptrag.train.fit",
    "resolve_config": "ptrag.train.config",
    "TrainConfig": "ptrag.train.config",
    "Prediction": "ptrag.data.prediction",
    "write_prediction": "ptrag.data.prediction",
}

__all__ = list(_API)


__getattr__ = lazy_getattr(globals(), _API)
