"""Model code in torch (the backbone is a ``transformers`` Llama stack; no file I/O, no Lightning).

One set generator, :class:`PerturbationModel`, gives the paper's four systems through
``ModelConfig.conditioning``: STATE (``"none"``, one-hot perturbation vectors), STATE+GenePT
(``"none"``, gene-embedding vectors), Vanilla RAG (``"vanilla_rag"``) and PT-RAG (``"pt_rag"``);
and a fifth beyond the paper, PT-RAG over observed responses (``"pt_rag_response"``,
:mod:`ptrag.nn.responses`).
"""

from ptrag.nn.backbone import NoRotary, SetTransformer, llama_set_config
from ptrag.nn.encoders import CellEncoder, PertEncoder
from ptrag.nn.generator import (
    CONDITIONINGS,
    PRESETS,
    Decoder,
    ModelConfig,
    ModelOutput,
    PerturbationModel,
    count_parameters,
)
from ptrag.nn.retrieval import PerturbationIndex, TripletSelector, build_query_index, l2_normalise, retrieve

__all__ = [
    "CONDITIONINGS",
    "PRESETS",
    "CellEncoder",
    "Decoder",
    "ModelConfig",
    "ModelOutput",
    "NoRotary",
    "PertEncoder",
    "PerturbationIndex",
    "PerturbationModel",
    "SetTransformer",
    "TripletSelector",
    "build_query_index",
    "count_parameters",
    "l2_normalise",
    "llama_set_config",
    "retrieve",
]
