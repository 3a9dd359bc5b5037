"""Successive halving over a group of cells: rung k trains the surviving cells to the fraction
min_fraction * eta^k of the full budget (the last rung: all of it), scores each cell by the
seed-mean of the headline metric at that rung, and keeps the best ceil(n / eta) (equal scores: the
lower seed-mean dev loss first). A rung is a prefix of the full run (`until`), so a promoted run
goes on from its checkpoint and the search's compute is that of each cell's last rung.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from qvtune.sweep.search.cells import Cell


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
