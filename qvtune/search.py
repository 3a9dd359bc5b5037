"""Successive halving over a sweep's learning-rate grid: the arithmetic, kept apart from Hydra.

A cell is a job's overrides without its seed; it runs every seed of the sweep. Cells that differ
only in their learning rates (RATE_KEYS) form a group, and each group is one search: rung k trains
its surviving cells to the fraction min_fraction * eta^k of the full budget (the last rung: all of
it), scores each cell by the seed-mean of the headline metric at that rung, and keeps the best
ceil(n / eta) (equal scores: the lower seed-mean dev loss first). A rung is a prefix of the full
run (`until`), so a promoted run goes on from its checkpoint and the search's compute is that of
each cell's last rung. The sweeper plugin
(hydra_plugins/qvtune_sweeper) launches the rungs and calls this; nothing heavy is imported.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from qvtune.config import until_step
from qvtune.record import RunRecord, Status

SEARCHES = ("halving", "optuna")
RATE_KEYS = ("lr", "lr_v", "lam", "head_lr")  # what a search chooses between, within a group
Cell = tuple[str, ...]  # a job's overrides without its seed, in the sweep's order


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


def grid_name(cells: Sequence[Cell], seeds: Sequence[str]) -> str:
    """A short stable hash of the grid and its seeds, to name the search's answer file."""
    blob = repr((sorted(cells), sorted(seeds)))
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def validate(eta: float, min_fraction: float) -> list[str]:
    """Every problem with the halving options, one line each."""
    errors = []
    if not (math.isfinite(eta) and eta > 1):
        errors.append(f"hydra.sweeper.halving.eta={eta}: expected a reduction factor > 1")
    if not (math.isfinite(min_fraction) and 0 < min_fraction <= 1):
        errors.append(f"hydra.sweeper.halving.min_fraction={min_fraction}: expected a fraction in (0, 1]")
    return errors


def rungs(eta: float, min_fraction: float) -> list[float]:
    """The rungs' budget fractions: min_fraction * eta^k below 1, then 1. A fraction within 1 % of 1
    is 1 (min_fraction=0.111 with eta=3 gives 0.111, 0.333, 1)."""
    fractions = []
    fraction = min_fraction
    while fraction < 0.99:
        fractions.append(fraction)
        fraction *= eta
    return [*fractions, 1.0]


def ranked(
    cells: Sequence[Cell],
    scores: Mapping[Cell, Optional[float]],
    losses: Optional[Mapping[Cell, Optional[float]]] = None,
) -> list[Cell]:
    """The cells with a score, best first; equal scores by the lower dev loss (at a small budget every
    cell may still predict the majority class, and accuracy ties exactly), then the earlier cell in
    the sweep. A cell without a score (a seed diverged, failed or did not reach the rung) is left out."""
    order = {cell: i for i, cell in enumerate(cells)}
    known = {c: s for c, s in scores.items() if c in order and s is not None}

    def loss(c: Cell) -> float:
        value = (losses or {}).get(c)
        return math.inf if value is None else value

    return sorted(known, key=lambda c: (-known[c], loss(c), order[c]))


def promote(
    cells: Sequence[Cell],
    scores: Mapping[Cell, Optional[float]],
    eta: float,
    losses: Optional[Mapping[Cell, Optional[float]]] = None,
) -> list[Cell]:
    """The best ceil(n / eta) of a rung's n cells by score (see `ranked`)."""
    return ranked(cells, scores, losses)[: math.ceil(len(cells) / eta)]


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


@dataclass(frozen=True)
class RungCost:
    fraction: float
    cells: int  # cells that run this rung, at most


def worst_case(n_cells: int, eta: float, fractions: Sequence[float]) -> list[RungCost]:
    """How many of a group's cells reach each rung when every cell is scored: ceil(n / eta) each time."""
    out, n = [], n_cells
    for fraction in fractions:
        out.append(RungCost(fraction, n))
        n = math.ceil(n / eta)
    return out


def cost_fraction(costs: Sequence[RungCost], n_cells: int) -> float:
    """The search's training samples as a fraction of the grid's (every cell at the full budget): a
    cell's runs cost its last rung's fraction, since each rung goes on from the one before."""
    spent, before = 0.0, 0.0
    for c in costs:
        spent += c.cells * (c.fraction - before)
        before = c.fraction
    return spent / n_cells if n_cells else 0.0
