"""ptrag: retrieval-augmented prediction of cellular responses to genetic perturbations.

The package implements the four models compared in "Retrieval-Augmented Generation for
Predicting Cellular Responses to Gene Perturbation" (PT-RAG, arXiv 2603.07233) -- STATE,
STATE+GenePT, Vanilla RAG and PT-RAG -- as one set generator with a conditioning option,
plus the data layer, the evaluation and the paper's experiments.
"""

from ptrag.errors import PtragError

__version__ = "0.1.0"

__all__ = ["PtragError", "__version__"]
