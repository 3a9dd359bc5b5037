"""Weights & Biases logging for one run: offline by default (no account; `wandb sync` later), the
run id is the run key so a restarted or requeued run continues its W&B run instead of starting
another, and runs of a sweep share a group named after the sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, cast

from omegaconf import OmegaConf

from qvtune.config.rates import LearningRates
from qvtune.config.schema import RunConfig, has_rank, parse_targets, wandb_mode


def run_name(cfg: RunConfig, rates: LearningRates) -> str:
    rank = f"-r{cfg.rank}" if has_rank(cfg.method.name) else ""
    return (
        f"{cfg.model.name}-{cfg.task.name}-{cfg.method.name}-{parse_targets(cfg.targets)}{rank}"
        f"-lr{rates.qk:g}-lam{rates.lam:g}-s{cfg.seed}"
    )


class Tracker:
    def __init__(self, cfg: RunConfig, key: str, rates: LearningRates, run_dir: Path):
        self.run: Optional[Any] = None
        mode = wandb_mode(cfg)
        if mode == "disabled":
            return
        import wandb

        self.run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            group=cfg.wandb.group or cfg.sweep_name,
            name=run_name(cfg, rates),
            id=key,
            resume="allow",
            reinit="create_new",  # the members of a pack each have their own run, at the same time
            mode=mode,
            dir=str(Path(cfg.wandb.dir or run_dir).expanduser()),
            # a DictConfig converts to a dict; OmegaConf's return type covers every config node
            config=cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)),
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        if self.run is not None:
            self.run.summary.update(summary)
            self.run.finish(exit_code=exit_code)
