"""Compression fixtures: the real compressor loaded once per test session."""

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "bench" / "data"


@pytest.fixture(scope="session")
def fast_compressor():
    """The process-wide fast backend, loaded once (later get_compressor calls reuse it)."""
    from compression.engines import get_compressor

    backend = get_compressor(engine="fast")
    backend.ensure_loaded()
    return backend


@pytest.fixture(scope="session")
def long_text() -> str:
    return (DATA / "incident_report.md").read_text()
