"""Optuna's TPE run batch by batch (tpe.py: the study), one study per group of cells within the
ranges of its rates. Each batch of trials (every group's) is one launch of their (trial, seed)
runs, each trial then told its runs' seed-mean at the full budget; then the best trial of each
group runs on the sweep's other seeds, if trials ran fewer. The study's journal (named from the
canonical grid, beside the answer) and the store say what a re-launch has done already."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Protocol

from qvtune.sweep.plan import Job, to_launch
from qvtune.sweep.search import answer, costs, tpe
from qvtune.sweep.search.cells import Cell, override_key
from qvtune.sweep.search.grid import Grid, SearchProblem, States, Sweeper, look_up, rates, score

log = logging.getLogger(__name__)

Space = tuple[tpe.Range, tpe.Range]  # eta_QK's range, lambda's


class OptunaOptions(Protocol):
    trials: int  # trials per group
    batch: int  # trials asked at once: one launch
    seeds: Optional[int]  # how many of the sweep's seeds a trial runs (None: all)
    lr: Optional[list[float]]  # [low, high] of eta_QK; None: the group's range
    lam: Optional[list[float]]  # [low, high] of lambda; None: the group's range
    startup: Optional[int]  # random trials before TPE models the rest; None: one batch
    sampler_seed: int


def plan(jobs: list[Job], options: OptunaOptions) -> None:
    """The search's worst case, per group and in all, against the grid's; raises SearchProblem."""
    grid = Grid.of(jobs)
    trial_seeds = len(grid.seeds[: options.seeds] if options.seeds else grid.seeds)
    costs.print_optuna(grid, options.trials, options.batch, trial_seeds, spaces(grid, options))


def run(jobs: list[Job], options: OptunaOptions, sweeper: Sweeper) -> list[Job]:
    """Run the search, write and print its answer; returns its runs (every trial's and the picks')."""
    tic = time.monotonic()
    grid = Grid.of(jobs)
    ranges = spaces(grid, options)
    seeds = grid.seeds
    trial_seeds = seeds[: options.seeds] if options.seeds else seeds
    name = f"{grid.name}-optuna"
    journal = grid.folder / f"{name}.journal"
    startup = options.startup or options.batch
    studies = {g: tpe.open_study(journal, grid.labels[g], options.sampler_seed, startup) for g in grid.groups}
    states: States = {}

    def trial_jobs(group: Cell, point: tpe.Point, on: list[str]) -> list[Job]:
        # a trial's runs are their own sweep: their own W&B group, and their own heatmap in the collector
        shared = [o for o in group if override_key(o) != "sweep_name"]
        chosen = [f"lr={point.lr!r}", f"lam={point.lam!r}", "lr_v=null", f"sweep_name={name}"]
        return sweeper.inspect([[*shared, *chosen, f"seed={s}"] for s in on])

    def launch(batch: list[Job]) -> None:
        todo = to_launch(list({j.key: j for j in batch}.values()))  # two trials may round to one point
        log.info(f"search: {len(batch)} runs, launching {len(todo)}")
        states.update({j.key: j.run for j in batch})
        sweeper.launch(todo, [])
        states.update(look_up(todo, sweeper.gpus))

    while True:
        asked = {g: tpe.next_batch(s, options.trials, options.batch, *ranges[g]) for g, s in studies.items()}
        batch = {(g, p): trial_jobs(g, p, trial_seeds) for g, points in asked.items() for p in points}
        if not batch:
            break
        launch([j for js in batch.values() for j in js])
        for (g, p), js in batch.items():
            tpe.tell(studies[g], p.number, score(js, states, 1.0))
    picks = {g: tpe.best(study) for g, study in studies.items()}
    confirm = {g: trial_jobs(g, p, seeds) for g, p in picks.items() if p is not None}
    launch([j for js in confirm.values() for j in js])
    ran = [
        j for g, study in studies.items() for p, _ in tpe.told(study) for j in trial_jobs(g, p, trial_seeds)
    ]
    ran += [j for js in confirm.values() for j in js]
    result = {
        "search": "optuna",
        "name": name,
        "metric": grid.first.task.metric,
        "seeds": seeds,
        "trial_seeds": trial_seeds,
        "trials": options.trials,
        "batch": options.batch,
        "startup": options.startup,
        "sampler_seed": options.sampler_seed,
        "groups": [
            {
                "group": grid.labels[g],
                "lr_range": list(ranges[g][0]),
                "lam_range": list(ranges[g][1]),
                "pick": None if p is None else point(p, score(confirm[g], states, 1.0)),
                "trials": [point(t, v) for t, v in tpe.told(studies[g])],
            }
            for g, p in picks.items()
        ],
        **costs.spent(grid, ran, states),
        "wall_s": time.monotonic() - tic,
    }
    answer.save(result, grid)
    return ran


def spaces(grid: Grid, options: OptunaOptions) -> dict[Cell, Space]:
    """The ranges of eta_QK and lambda each group's study searches: the configured ones, else the
    range of the group's cells; raises SearchProblem for a range of one value."""
    out = {}
    for g, cells in grid.groups.items():
        values = [rates(grid.cells[c][0]) for c in cells]
        given = {"lr": options.lr, "lam": options.lam}
        ranges = []
        for key in ("lr", "lam"):
            bounds = given[key]
            if bounds is not None:
                ranges.append((float(bounds[0]), float(bounds[1])))
                continue
            low, high = min(v[key] for v in values), max(v[key] for v in values)
            if not low < high:
                raise SearchProblem(
                    f"hydra.sweeper.optuna.{key}=null: the grid has the one value {low:g} to take the range "
                    f"from; give the range, e.g. hydra.sweeper.optuna.{key}=[{low / 4:g},{low * 4:g}]"
                )
            ranges.append((low, high))
        out[g] = (ranges[0], ranges[1])
    return out


def point(p: tpe.Point, value: Optional[float]) -> dict[str, Any]:
    """A trial as the answer lists it."""
    return {"trial": p.number, "lr": p.lr, "lr_v": p.lr * p.lam, "lam": p.lam, "score": value}
