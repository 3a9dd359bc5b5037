"""Shared fixtures (the helpers themselves are in tests/helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import GLUE_DIR


@pytest.fixture
def glue_dir() -> Path:
    if not (GLUE_DIR / "RTE" / "train.tsv").exists():
        pytest.skip(f"the GLUE TSV files are not at {GLUE_DIR} (set QVTUNE_GLUE_DIR to a GLUE folder)")
    return GLUE_DIR
