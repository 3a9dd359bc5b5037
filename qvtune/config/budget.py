"""A run's budget: its optimizer steps and training samples, from one function (`budget`) that the
training loop, the sweep's plan and the searches all use."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from qvtune.config.schema import RunConfig


@dataclass(frozen=True)
class Budget:
    steps: int  # optimizer steps of the whole run, whatever `until` stops it at
    per_epoch: int  # optimizer steps per epoch
    # training samples over those steps: exact for whole epochs; a partial epoch's steps are counted
    # as full batches (its one short batch may fall anywhere in the shuffled order)
    samples: int


def budget(n_train: int, cfg: RunConfig) -> Budget:
    """The run's steps and samples on `n_train` training examples. An epoch's batches are taken
    `grad_accum` at a time and its last step takes what is left, its loss averaged over those, as HF
    Trainer's loop does (the paper's 4.50.3 divided by `grad_accum`: docs/recipe.md): no step mixes
    two epochs' batches, and `epochs` trains on every batch of each epoch."""
    per_epoch = math.ceil(math.ceil(n_train / cfg.batch_size) / cfg.grad_accum)
    if cfg.max_steps is not None:
        steps = int(cfg.max_steps)
    else:
        # rounded first: 1.1 epochs x 100 steps is 110.00000000000001 in floating point, not 111 steps
        steps = math.ceil(round(cfg.epochs * per_epoch, 9))
    whole, rest = divmod(steps, per_epoch) if per_epoch else (0, 0)
    samples = whole * n_train + min(n_train, rest * cfg.grad_accum * cfg.batch_size)
    return Budget(steps, per_epoch, samples)


def planned_budget(cfg: RunConfig) -> Optional[Budget]:
    """The run's budget before it starts, from the task's size hint (`task.train_size`, or the
    synthetic task's size): for `plan=true` and a search's costs. None where the task has no hint."""
    size = cfg.task.synthetic.train_size if cfg.task.synthetic is not None else cfg.task.train_size
    if size is None:
        return None
    if cfg.max_train_samples:
        size = min(size, cfg.max_train_samples)
    return budget(size, cfg)


def until_step(until: Optional[float], total_steps: int) -> int:
    """The optimizer step a run trained `until` a fraction of its `total_steps` stops at."""
    if until is None:
        return total_steps
    # rounded first, as in `budget`: 1/3 of 9 steps is 3, not 4
    return math.ceil(round(until * total_steps, 9))
