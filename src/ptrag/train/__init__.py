"""ptrag.train: training a run folder, prediction and the baselines.

Re-exported here (imported on first use): :func:`~ptrag.train.fit.train`,
:func:`~ptrag.train.config.resolve_config`, :class:`~ptrag.train.config.TrainConfig`,
:class:`~ptrag.data.prediction.Prediction` and :func:`~ptrag.data.prediction.write_prediction`.
Prediction itself is :func:`ptrag.train.predict.predict` (``ptrag.train.predict`` is its module;
``ptrag.predict`` is the function).
"""

#: Public name -> module, imported on first access.
_API = {
    "train": "ptrag.train.fit",
    "resolve_config": "ptrag.train.config",
    "TrainConfig": "ptrag.train.config",
    "Prediction": "ptrag.data.prediction",
    "write_prediction": "ptrag.data.prediction",
}

__all__ = list(_API)


def __getattr__(name: str):
    """The names of :data:`_API`, imported on first use."""
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value
