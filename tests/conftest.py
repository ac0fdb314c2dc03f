"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder ../shared/data beside the repository; skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lies beside the repository in CI)")
    return SHARED_DATA


@pytest.fixture
def ptrag_log(caplog):
    """``caplog`` listening on the ``ptrag`` logger itself, at INFO: the CLI turns that logger's
    propagation off, so after any CLI test the root logger (caplog's default) hears nothing."""
    import logging

    logger = logging.getLogger("ptrag")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ptrag"):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)
