"""A run's budget: its optimizer steps and training samples, from one function that the training
loop, the sweep's plan and the searches all use."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from qvtune.config.schema import RunConfig
from qvtune.config.schema import RunConfig


def until_step(until: Optional[float], total_steps: int) -> int:
    """The optimizer step a run trained `until` a fraction of its `total_steps` stops at."""
    if until is None:
        return total_steps
    # rounded first, as in plan_steps: 1/3 of 9 steps is 3, not 4
    return math.ceil(round(until * total_steps, 9))


def train_samples(cfg: RunConfig) -> Optional[float]:
    """The training samples of the whole run, from the task's size hint; None where it has none."""
    size = cfg.task.synthetic.train_size if cfg.task.synthetic is not None else cfg.task.train_size
    if size is None:
        return None
    if cfg.max_train_samples:
        size = min(size, cfg.max_train_samples)
    steps = cfg.max_steps
    return float(steps * cfg.batch_size * cfg.grad_accum if steps is not None else size * cfg.epochs)


def plan_steps(n_train: int, cfg: RunConfig) -> tuple[int, int]:
    """(optimizer steps in the run, optimizer steps per epoch). An epoch's micro-batches are taken
    `grad_accum` at a time and its last step takes what is left, its loss averaged over those, as HF
    Trainer's loop does (the paper's 4.50.3 divided by `grad_accum`: README, The paper's recipe): no
    step mixes two epochs' batches, and `epochs` trains on every batch of each epoch."""
    per_epoch = math.ceil(math.ceil(n_train / cfg.batch_size) / cfg.grad_accum)
    if cfg.max_steps is not None:
        return int(cfg.max_steps), per_epoch
    # rounded first: 1.1 epochs x 100 steps is 110.00000000000001 in floating point, not 111 steps
    return math.ceil(round(cfg.epochs * per_epoch, 9)), per_epoch
