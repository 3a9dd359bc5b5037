"""Shared helpers: compose configs as the CLI does, run the CLI in a subprocess, find the GLUE files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.version import VersionBase

from qvtune.config import config_dir, register_configs

ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("QVTUNE_GLUE_DIR", ROOT.parent / "shared" / "data" / "glue"))
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}

register_configs()


def make_config(*overrides: str) -> Any:
    """The composed config the CLI would see for these overrides.

    Hydra keeps the version base in a process-wide singleton; it is put back afterwards so that
    Hydra's own launcher test suites, later in the same session, see their default.
    """
    base = VersionBase.instance().getbase()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="run", overrides=list(overrides))
    finally:
        VersionBase.instance().version_base = base


def run_cli(*args: str, cwd: Path, timeout: float = 600, module: str = "qvtune.run") -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE_ENV}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def records(results: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("result.json"))]


@pytest.fixture
def glue_dir() -> Path:
    if not (GLUE_DIR / "RTE" / "train.tsv").exists():
        pytest.skip(f"the GLUE TSV files are not at {GLUE_DIR} (set QVTUNE_GLUE_DIR to a GLUE folder)")
    return GLUE_DIR
