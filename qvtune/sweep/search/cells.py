"""A search's cells and groups, and how a cell is scored from its runs' records.

A cell is a job's overrides without its seed; it runs every seed of the sweep. Cells that differ
only in their learning rates (RATE_KEYS) form a group, and each group is one search. A cell's
score at a fraction of the budget is the seed-mean of its runs' headline metric there.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Optional

from qvtune.config.budget import until_step
from qvtune.config.rates import RATE_KEYS, rounded
from qvtune.status import Status
from qvtune.store.record import RunRecord

SEARCHES = ("halving", "optuna")

Cell = tuple[str, ...]  # a job's overrides without its seed, in the sweep's order
# where a run's files go: not part of what a search is, so a search launched from another folder, or
# with its store given another way, is the same search (Hydra's own overrides never reach a cell)
PATH_KEYS = ("results_dir", "cache_dir", "data_dir", "output_dir", "wandb.dir")


def override_key(override: str) -> str:
    """`+model.x=1` -> model.x; `lr=1e-4` -> lr."""
    return override.split("=", 1)[0].lstrip("+~")


def cell_of(overrides: Sequence[str]) -> Cell:
    return tuple(o for o in overrides if override_key(o) != "seed")


def group_of(cell: Cell) -> Cell:
    """The overrides of a cell that are not learning rates: the cells of one search share them."""
    return tuple(o for o in cell if override_key(o) not in RATE_KEYS)


def labels(groups: Sequence[Cell]) -> dict[Cell, str]:
    """Each group named by the overrides that set it apart from the others ("all" for one group)."""
    shared = set.intersection(*(set(g) for g in groups)) if groups else set()
    return {g: " ".join(o for o in g if o not in shared) or "all" for g in groups}


def canonical(cell: Cell) -> Cell:
    """A cell as one spelling: its parameters sorted, numbers in one form (`lr=1e-4` is
    `lr=0.0001`; rates rounded as run keys round them), and where files go (PATH_KEYS) left out."""
    spelled = []
    for override in cell:
        key = override_key(override)
        if key in PATH_KEYS or key.startswith("hydra."):
            continue
        if override.startswith("~"):  # a deletion
            spelled.append(override)
            continue
        value = override.split("=", 1)[1].strip("'\"")
        try:
            number = float(value)
            value = repr(rounded(number) if key in RATE_KEYS else number)
        except ValueError:
            pass
        spelled.append(f"{key}={value}")
    return tuple(sorted(spelled))


def grid_name(cells: Sequence[Cell], seeds: Sequence[str]) -> str:
    """A short hash of the grid (its cells in canonical form, in any order) and its seeds: the name of
    the search's answer and study, the same however the search's overrides are ordered or spelled."""
    blob = repr((sorted({canonical(c) for c in cells}), sorted(seeds)))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def rung_score(record: Optional[RunRecord], fraction: float, metric: str) -> Optional[float]:
    """A run's `metric` (the headline one, or the dev "loss") at the rung: its last dev evaluation at
    or before the rung's step. None for a run that failed, diverged by then, or has not reached the
    rung."""
    if record is None or record.planned_steps is None or record.status is Status.FAILED:
        return None
    step = until_step(fraction, record.planned_steps)
    if record.status is Status.DIVERGED and record.steps <= step:
        return None
    if record.steps < step and record.status is not Status.COMPLETED:
        return None
    before = [h for h in record.history if h["step"] <= step]
    value = before[-1]["metrics"].get(metric) if before else None
    return None if value is None or not math.isfinite(value) else float(value)


def seed_mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """The mean over a cell's seeds; None when any seed has no score."""
    if not values or any(v is None for v in values):
        return None
    return sum(float(v) for v in values if v is not None) / len(values)


def full_samples(record: Optional[RunRecord]) -> Optional[float]:
    """The training samples of the whole run, from a record that took steps (exact once completed)."""
    if record is None or not record.steps or record.planned_steps is None:
        return None
    return record.samples * record.planned_steps / record.steps
