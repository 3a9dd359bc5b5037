"""Helpers the tests share: compose configs as the CLI does, run the CLI in a subprocess, read the
records a run wrote, find the GLUE files. Fixtures live in tests/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.version import VersionBase

from qvtune.config.schema import config_dir, register_configs
from qvtune.store.record import RESULT_FILE, Curves, RunRecord

ROOT = Path(__file__).resolve().parents[2]
GLUE_DIR = Path(os.environ.get("QVTUNE_GLUE_DIR", ROOT.parent / "shared" / "data" / "glue"))
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}

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


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, module: str = "qvtune.run"
) -> subprocess.CompletedProcess:
    """`python -m module args` in `cwd`, offline (no hub, no W&B), its output captured."""
    env = {**os.environ, **OFFLINE_ENV}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(results: Path) -> list[dict[str, Any]]:
    """Every record below `results` (sorted by path) as JSON-like dicts, read through RunRecord: the
    summary's fields with the curves (train_loss, update_norms, lr_trace) beside them."""
    out = []
    for path in sorted(results.rglob(RESULT_FILE)):
        record = RunRecord.read(path, curves=True)
        out.append({**record.to_dict(), **asdict(record.curves or Curves())})
    return out


def train_on_synthetic(net: Any, groups: list[Any], cfg: Any, precision: str, checkpoint: Path) -> Any:
    """qvtune.train.loop.train in this process on cfg's synthetic task, on the CPU, for a lone model
    (PEFT or full): the training loop without the entry point, for tests that compare what training
    does under two settings. Returns its TrainState."""
    from qvtune.model.methods import UpdateNorms
    from qvtune.model.runs import LoneRun
    from qvtune.train.loop import Member

    member = Member(groups, UpdateNorms.of(net), checkpoint, lambda values, step: None)
    return train_members(LoneRun(net), [member], cfg, precision)[0]


def train_members(model: Any, members: list[Any], cfg: Any, precision: str = "fp32") -> list[Any]:
    """qvtune.train.loop.train of one model's members (a LoneRun's one, a pack's K) on cfg's
    synthetic task, in this process on the CPU; returns their TrainStates in the members' order."""
    import torch

    from qvtune.data.encode import encode
    from qvtune.data.tasks import synthetic_task
    from qvtune.model.load import load_tokenizer
    from qvtune.train.loop import train

    tok = load_tokenizer(cfg.model)
    task = synthetic_task(cfg.task.synthetic)
    data = encode(tok, task.train, cfg.max_len)
    evals = {"validation": encode(tok, task.evals["validation"], cfg.max_len)}
    outcomes = train(
        model,
        members,
        data,
        evals,
        cfg.task,
        cfg,
        pad_id=tok.pad_token_id,
        device=torch.device("cpu"),
        precision=precision,
    )
    return [o.state for o in sorted(outcomes, key=lambda o: o.index)]
