"""TensorBoard event files in <run_dir>/tensorboard/ (`tensorboard --logdir results/` shows every
run, named by its run key): one scalar tag per logged name (train/loss, update_norm/q, lr/qk,
eval/accuracy, ...), the config and the summary as text.

The writer opens at the first step a session logs, with that step as its purge step: a run that
resumes from an earlier checkpoint than the step it had reached logs those steps again, and
TensorBoard drops the earlier session's events from that step on, so no step is shown twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import OmegaConf

from qvtune.config.rates import LearningRates
from qvtune.config.schema import RunConfig
from qvtune.track.common import resolved_config

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

FLUSH_SECS = 10  # a killed run (SIGKILL, a lost node) never closes its writer: it loses at most this much


def _text(body: str) -> str:
    """Markdown that TensorBoard's text plugin shows verbatim: an indented code block."""
    return "\n".join(f"    {line}" for line in body.splitlines())


class TensorBoardBackend:
    def __init__(self, cfg: RunConfig, key: str, rates: LearningRates, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # raises here when tensorboard is missing

        self.open_writer = SummaryWriter
        self.folder = run_dir / "tensorboard"
        self.config = _text(OmegaConf.to_yaml(OmegaConf.create(resolved_config(cfg, key))))
        self.writer: Optional[SummaryWriter] = None
        self.step = 0

    def _writer(self, purge_step: Optional[int]) -> SummaryWriter:
        if self.writer is None:
            self.writer = self.open_writer(str(self.folder), purge_step=purge_step, flush_secs=FLUSH_SECS)
            # at this launch's first step: a resumed launch that purges it writes its own
            self.writer.add_text("config", self.config, purge_step or 0)
        return self.writer

    def log(self, values: dict[str, float], step: int) -> None:
        writer = self._writer(purge_step=step)
        for name, value in values.items():
            writer.add_scalar(name, value, step)
        self.step = step

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        writer = self._writer(purge_step=None)
        writer.add_text("summary", _text(json.dumps(summary, indent=2, sort_keys=True)), self.step)
        writer.close()
