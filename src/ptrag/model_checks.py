"""The model options' choices and checks, torch-free.

:meth:`ptrag.nn.config.ModelConfig.validate` and :meth:`ptrag.train.config.TrainConfig.validate`
both call :func:`check_model_options`. It lives outside :mod:`ptrag.nn` because importing any
module of that package runs its ``__init__``, which loads torch and transformers (seconds),
while a run's configuration is also resolved by commands that never build a model.
"""

from __future__ import annotations

from collections.abc import Callable
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from ptrag.errors import PtragError, check_choice

CONDITIONINGS = ("none", "vanilla_rag", "pt_rag", "pt_rag_response")
EMPTY_SELECTIONS = ("best", "null", "paper", "keep")
EVAL_SELECTIONS = ("expected", "threshold", "sample", "all")
RESPONSE_CANDIDATES = ("both", "same", "other")
_FLAGS = (
    "fused_triplets",
    "identity_init",
    "response_context",
    "response_readout",
    "response_agreement",
    "response_flat",
)


def check_model_options(cfg: Any, option: Callable[[str], str] | None = None) -> None:
    """Raise :class:`PtragError` naming the first out-of-range model option of ``cfg``.

    Parameters
    ----------
    cfg
        A :class:`ptrag.nn.config.ModelConfig`, or any object with its attributes (a
        :class:`ptrag.train.config.TrainConfig`; an absent ``fused_triplets`` is not checked).
    option
        How a message names an option (e.g. ``"hidden"`` -> ``"--hidden"`` for a command line);
        default ``model option NAME``.
    """
    label = option or (lambda name: f"model option {name}")
    ref = option or (lambda name: name)
    check_choice(ref("conditioning"), cfg.conditioning, CONDITIONINGS)
    check_choice(ref("empty_selection"), cfg.empty_selection, EMPTY_SELECTIONS)
    check_choice(ref("eval_selection"), cfg.eval_selection, EVAL_SELECTIONS)
    check_choice(ref("aggregation"), cfg.aggregation, ("sum", "mean"))
    check_choice(ref("train_selection"), cfg.train_selection, EVAL_SELECTIONS)
    check_choice(ref("response_candidates"), cfg.response_candidates, RESPONSE_CANDIDATES)
    for name in ("hidden", "n_layers", "n_heads", "ffn", "cell_encoder_layers", "topk"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PtragError(f"{label(name)} must be an integer >= 1 (got {value!r}).")
    if cfg.hidden % cfg.n_heads != 0:
        raise PtragError(
            f"{label('n_heads')} ({cfg.n_heads}) must divide {ref('hidden')} ({cfg.hidden}): "
            f"choose {ref('n_heads')} among the divisors of {ref('hidden')}."
        )
    if not isinstance(cfg.dropout, (int, float)) or not 0.0 <= float(cfg.dropout) < 1.0:
        raise PtragError(f"{label('dropout')} must be in [0, 1) (got {cfg.dropout!r}).")
    if not isinstance(cfg.tau, (int, float)) or isinstance(cfg.tau, bool) or not float(cfg.tau) > 0.0:
        raise PtragError(f"{label('tau')} (Gumbel-Softmax temperature) must be > 0 (got {cfg.tau!r}).")
    transfer = getattr(cfg, "response_transfer", "auto")
    if not (isinstance(transfer, bool) or transfer == "auto"):
        raise PtragError(f'{label("response_transfer")} must be true, false or "auto" (got {cfg.response_transfer!r}).')
    for name in _FLAGS:
        if hasattr(cfg, name) and not isinstance(getattr(cfg, name), bool):
            raise PtragError(f"{label(name)} must be true or false (got {getattr(cfg, name)!r}).")


def option_choices(t: Any) -> tuple | None:
    """The values a ``Literal`` option takes, with ``True`` and ``False`` for ``bool | Literal``
    (``None``: not a choice)."""
    if get_origin(t) is Literal:
        return get_args(t)
    if get_origin(t) in (Union, UnionType) and bool in get_args(t):
        return (True, False, *(v for a in get_args(t) if get_origin(a) is Literal for v in get_args(a)))
    return None


def spell_choices(choices: tuple) -> str:
    """Choices as a config file writes them (``true``, ``false``, names)."""
    return ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
