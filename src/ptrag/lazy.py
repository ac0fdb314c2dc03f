"""Lazy public names of a package: ``__getattr__ = lazy_getattr(globals(), _API)``.

A package's public face (``from ptrag.data import read_perturbseq``) re-exports names from its
modules without importing them (torch, anndata) until one is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(namespace: dict[str, Any], api: Mapping[str, str | tuple[str, str]]) -> Callable[[str], Any]:
    """The module-level ``__getattr__`` that imports each name of ``api`` on first use.

    Parameters
    ----------
    namespace
        The package's ``globals()`` (the imported value is cached there).
    api
        Public name -> module, or -> ``(module, attribute)`` when the name differs.
    """

    def __getattr__(name: str) -> Any:
        if name not in api:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        target = api[name]
        module, attr = (target, name) if isinstance(target, str) else target
        value = getattr(importlib.import_module(module), attr)
        namespace[name] = value
        return value

    return __getattr__
