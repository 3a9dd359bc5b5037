"""Weights & Biases: offline by default (no account; `wandb sync` later). The run id is the run key,
so a restarted or requeued run continues its W&B run instead of starting another; the runs of a
sweep share a group named after the sweep, and each row carries the optimizer step as `step`, the
x axis of every chart.

A resumed run replays the steps between its checkpoint and where it stopped (with the same values:
resume is exact). Those rows are not logged again: the backend keeps the highest step it has logged
in the run's folder (LOGGED_STEP) and skips rows at or below it. W&B online would drop them itself
(with a warning per row), but an offline run cannot know what an earlier session logged, and
`wandb sync` would send both copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qvtune.config.rates import LearningRates
from qvtune.config.schema import RunConfig, parse_targets, wandb_mode
from qvtune.track.common import resolved_config, run_name

LOGGED_STEP = "wandb-logged-step"  # in the run's folder: the highest step any session logged to W&B


def logged_step(path: Path) -> int:
    """The highest step logged by an earlier session (-1: none, or a file cut short by a crash)."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return -1


class WandbBackend:
    def __init__(self, cfg: RunConfig, key: str, rates: LearningRates, run_dir: Path):
        import wandb

        self.run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            group=cfg.wandb.group or cfg.sweep_name,
            job_type=cfg.task.name,
            tags=[cfg.model.name, cfg.method.name, parse_targets(cfg.targets)],
            name=run_name(cfg, rates),
            id=key,
            resume="allow",
            reinit="create_new",  # the members of a pack each have their own run, at the same time
            mode=wandb_mode(cfg),
            dir=str(Path(cfg.wandb.dir or run_dir).expanduser()),
            config=resolved_config(cfg, key),
            settings=wandb.Settings(silent=True, console="off"),
        )
        self.logged_path = run_dir / LOGGED_STEP
        self.earlier = self.logged = logged_step(self.logged_path)
        self.run.define_metric("step", hidden=True)
        self.run.define_metric("*", step_metric="step")
        self.run.define_metric("train/loss", step_metric="step", summary="min")
        # the headline metric's summary is its best value, the one the paper's tables report
        self.run.define_metric(f"eval/{cfg.task.metric}", step_metric="step", summary="max")

    def log(self, values: dict[str, float], step: int) -> None:
        if step <= self.earlier:
            return  # a replayed step, logged by the session before
        self.run.log({**values, "step": step}, step=step)  # W&B's own step is the optimizer step too
        if step > self.logged:  # several rows share a step: the training row, then the evaluation's
            self.logged = step
            self.logged_path.write_text(str(step))

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        self.run.summary.update(summary)
        self.run.finish(exit_code=exit_code)
