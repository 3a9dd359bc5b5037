"""What a search costs in training samples, against the grid's (every cell's runs at the full
budget): at worst, printed before it runs (plan=true), and what it spent, in its answer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

from qvtune.config.budget import planned_budget
from qvtune.store.store import RunState
from qvtune.sweep.plan import Job, estimate_seconds
from qvtune.sweep.search import halving
from qvtune.sweep.search.cells import Cell, full_samples
from qvtune.sweep.search.grid import Grid, States

if TYPE_CHECKING:
    from qvtune.config.schema import RunConfig


def planned_samples(cfg: RunConfig) -> float:
    """The run's training samples from the task's size hint; 0 where the task has none."""
    planned = planned_budget(cfg)
    return 0.0 if planned is None else float(planned.samples)


def print_halving(grid: Grid, fractions: Sequence[float], eta: float) -> None:
    """Every group's rungs at worst (ceil(n / eta) cells promoted each time) and the total."""
    spent, total, seconds, timed = 0.0, 0.0, 0.0, True
    for g, cells in grid.groups.items():
        costs = halving.worst_case(len(cells), eta, fractions)
        jobs = grid.cells[cells[0]]
        samples = planned_samples(jobs[0].config)
        before = 0.0
        for c in costs:
            est = estimate_seconds(jobs[0].config, c.fraction - before)
            timed = timed and est is not None
            seconds += (est or 0.0) * c.cells * len(jobs)
            before = c.fraction
        spent += halving.cost_fraction(costs, len(cells)) * samples * len(cells) * len(jobs)
        total += samples * len(cells) * len(jobs)
        rungs = ", ".join(f"{c.cells} cells x {len(jobs)} seeds to {c.fraction:.3g}" for c in costs)
        print(f"search {grid.labels[g]}: {rungs}")
    print(worst_case_line(spent, total, seconds if timed else None))


def print_optuna(
    grid: Grid,
    trials: int,
    batch: int,
    trial_seeds: int,
    spaces: Mapping[Cell, Sequence[tuple[float, float]]],
) -> None:
    """Every group's study at worst (every trial on its seeds at the full budget, and its pick on the
    sweep's other seeds) and the total."""
    n_seeds = len(grid.seeds)
    spent, total, seconds, timed = 0.0, 0.0, 0.0, True
    for g, cells in grid.groups.items():
        cfg = grid.cells[cells[0]][0].config
        runs = trials * trial_seeds + n_seeds - trial_seeds
        est = estimate_seconds(cfg)
        timed = timed and est is not None
        seconds += (est or 0.0) * runs
        spent += planned_samples(cfg) * runs
        total += planned_samples(cfg) * len(cells) * n_seeds
        (lr, lam) = spaces[g]
        rest = f", then the pick on {n_seeds - trial_seeds} more" if n_seeds > trial_seeds else ""
        print(
            f"search {grid.labels[g]}: {trials} trials x {trial_seeds} seeds in batches of {batch}{rest}; "
            f"eta_QK in [{lr[0]:g}, {lr[1]:g}], lambda in [{lam[0]:g}, {lam[1]:g}] (log scale)"
        )
    print(worst_case_line(spent, total, seconds if timed else None))


def worst_case_line(spent: float, total: float, seconds: Optional[float]) -> str:
    share = spent / total if total else math.nan
    time_part = f"; estimated {seconds / 3600:.2f} h of compute" if seconds is not None else ""
    return (
        f"search worst case: {spent:.0f} training samples, {share:.1%} of the grid's {total:.0f}{time_part}"
    )


def spent(grid: Grid, ran: Sequence[Job], states: States) -> dict[str, Any]:
    """The training samples of the search's runs (`ran`, each run once) against the grid's, from the
    states the search last looked up (a grid job it never looked up: as it was inspected). A grid
    run's full samples are its record's, extrapolated from the steps it took (exact once completed;
    cells.full_samples), or else planned from the task's size hint."""

    def state(j: Job) -> RunState:
        return states.get(j.key, j.run)

    done = {j.key: state(j).record for j in ran}
    used = float(sum(r.samples for r in done.values() if r is not None))
    total = sum(full_samples(state(j).record) or planned_samples(j.config) for j in grid.jobs)
    return {"samples": used, "grid_samples": total, "samples_share": used / total if total else None}
