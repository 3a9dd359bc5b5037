"""The trackers a run logs to (`trackers=[wandb,tensorboard,mlflow,csv]`, default [wandb]): the
config and run key at the start, every group's learning rate, the loss and the update norms at each
optimizer step, the dev metrics at each evaluation, the record's summary at the end.

A tracker is a convenience, never a reason for a run to fail: one that cannot open or write (no
server, a bad URI, a full disk, its library not installed) says so in one line and is dropped,
and the run goes on with the others. Each tracker's library is imported only when a run asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qvtune.config.rates import LearningRates
from qvtune.config.schema import RunConfig, wandb_mode
from qvtune.track.common import Backend
from qvtune.track.csv_backend import CsvBackend
from qvtune.track.mlflow_backend import MlflowBackend
from qvtune.track.tensorboard_backend import TensorBoardBackend
from qvtune.track.wandb_backend import WandbBackend

log = logging.getLogger(__name__)

BACKENDS: dict[str, Callable[[RunConfig, str, LearningRates, Path], Backend]] = {
    "wandb": WandbBackend,
    "tensorboard": TensorBoardBackend,
    "mlflow": MlflowBackend,
    "csv": CsvBackend,
}


def dropped(name: str, error: Exception) -> None:
    """The one line a failing tracker gets: its first line of cause (MLflow's run long)."""
    lines = str(error).strip().splitlines()
    cause = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    if isinstance(error, ImportError):
        cause += f" (pip install 'qvtune[{name}]')"
    log.warning(f"tracker {name}: {cause}; the run goes on without it")


class Trackers:
    """The trackers of one run, driven as one: each call goes to every tracker still working."""

    def __init__(self, backends: dict[str, Backend]):
        self.backends = backends

    def log(self, values: dict[str, float], step: int) -> None:
        self._each(lambda backend: backend.log(values, step))

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        self._each(lambda backend: backend.finish(summary, exit_code))
        self.backends = {}

    def _each(self, call: Callable[[Backend], None]) -> None:
        for name, backend in list(self.backends.items()):
            try:
                call(backend)
            except Exception as e:
                del self.backends[name]
                dropped(name, e)


def open_trackers(cfg: RunConfig, key: str, rates: LearningRates, run_dir: Path) -> Trackers:
    """The run's trackers, each opened (a resumed run continues its tracker runs); those that fail
    to open are left out. `wandb.mode=disabled` (or WANDB_MODE=disabled) leaves W&B out."""
    opened: dict[str, Backend] = {}
    for name in dict.fromkeys(cfg.trackers):
        if name == "wandb" and wandb_mode(cfg) == "disabled":
            continue
        try:
            opened[name] = BACKENDS[name](cfg, key, rates, run_dir)
        except Exception as e:
            dropped(name, e)
    return Trackers(opened)
