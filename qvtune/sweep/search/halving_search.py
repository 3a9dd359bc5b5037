"""Successive halving run rung by rung (halving.py: the arithmetic). Each rung is one launch of every
surviving (cell, seed) run with `until` at the rung's fraction that has not reached it; those runs
are then looked up in the store once (the others' records have not changed), and the cells scored
from the records. A re-launch finds in the store which rungs its runs reached and launches the rest."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from qvtune.sweep.plan import Job, print_plan
from qvtune.sweep.search import answer, costs, halving
from qvtune.sweep.search.cells import Cell
from qvtune.sweep.search.grid import Grid, States, Sweeper, look_up, rates, score

log = logging.getLogger(__name__)


class HalvingOptions(Protocol):
    eta: float  # the reduction factor: a rung keeps the best ceil(n / eta) cells
    min_fraction: float  # the first rung's fraction of the full budget


@dataclass(frozen=True)
class Rung:
    """One rung of a group: its cells' scores and dev losses, and the cells it promoted."""

    fraction: float
    scores: dict[Cell, Optional[float]]
    losses: dict[Cell, Optional[float]]
    promoted: list[Cell]


def plan(jobs: list[Job], options: HalvingOptions) -> None:
    """Every run of the grid with its state (plan.print_plan), then the search's worst case, group
    by group and in all, against the grid's; raises SearchProblem."""
    grid = Grid.of(jobs)
    print_plan(jobs)
    costs.print_halving(grid, halving.rungs(options.eta, options.min_fraction), options.eta)


def run(jobs: list[Job], options: HalvingOptions, sweeper: Sweeper) -> list[Job]:
    """Run the search, write and print its answer; returns its runs (the whole grid's)."""
    tic = time.monotonic()
    grid = Grid.of(jobs)
    fractions = halving.rungs(options.eta, options.min_fraction)
    states: States = {j.key: j.run for j in jobs}  # as inspected; then as each rung left them
    alive = {g: list(cells) for g, cells in grid.groups.items()}
    history: dict[Cell, list[Rung]] = {g: [] for g in grid.groups}
    for k, fraction in enumerate(fractions):
        last = k == len(fractions) - 1
        until = None if last else fraction
        batch = [j for cells in alive.values() for c in cells for j in grid.cells[c]]
        todo = [j for j in batch if not states[j.key].reached(until)]
        log.info(
            f"search rung {k + 1}/{len(fractions)} ({fraction:.3g} of the budget): "
            f"{len(batch)} runs, {len(batch) - len(todo)} done already, launching {len(todo)}"
        )
        sweeper.launch(todo, ["until=null" if until is None else f"until={until!r}"])
        states.update(look_up(todo, sweeper.gpus))  # the others are as the store said before
        for g, survivors in alive.items():
            scores = {c: score(grid.cells[c], states, fraction) for c in survivors}
            losses = {c: score(grid.cells[c], states, fraction, "loss") for c in survivors}
            promoted = survivors if last else halving.promote(survivors, scores, options.eta, losses)
            history[g].append(Rung(fraction, scores, losses, promoted))
            alive[g] = promoted
    result = {
        "search": "halving",
        "name": grid.name,
        "metric": grid.first.task.metric,
        "eta": options.eta,
        "min_fraction": options.min_fraction,
        "rungs": fractions,
        "seeds": grid.seeds,
        "groups": [group_answer(grid, g, rungs) for g, rungs in history.items()],
        **costs.spent(grid, grid.jobs, states),
        "wall_s": time.monotonic() - tic,
    }
    answer.save(result, grid)
    return grid.jobs


def group_answer(grid: Grid, group: Cell, history: list[Rung]) -> dict[str, Any]:
    """A group's pick (the best cell at the last rung) and every rung's cells with their scores."""
    final = history[-1]
    best = halving.ranked(list(final.scores), final.scores, final.losses)
    pick = None
    if best:
        pick = {"cell": list(best[0]), **rates(grid.cells[best[0]][0]), "score": final.scores[best[0]]}
    return {
        "group": grid.labels[group],
        "pick": pick,
        "rungs": [
            {
                "fraction": rung.fraction,
                "cells": [
                    {
                        "cell": list(c),
                        **rates(grid.cells[c][0]),
                        "score": s,
                        "loss": rung.losses[c],
                        "promoted": c in rung.promoted,
                    }
                    for c, s in rung.scores.items()
                ],
            }
            for rung in history
        ],
    }
