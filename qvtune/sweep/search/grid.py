"""A search's grid as the sweeper hands it over, and what a search needs of the sweeper.

The sweeper (qvtune's Hydra plugin) composes, validates and looks up the grid's jobs; a search
takes them as cells and groups (cells.py), looks its runs up in the store once per rung or batch,
and asks the sweeper, through `Sweeper`, to compose more jobs (a trial's) and to launch them.
Nothing here imports Hydra: whatever composes and launches jobs can drive a search.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from qvtune.config.rates import learning_rates
from qvtune.store.store import RunState
from qvtune.sweep.plan import Job, lookup
from qvtune.sweep.search.cells import (
    Cell,
    cell_of,
    grid_name,
    group_of,
    labels,
    override_key,
    rung_score,
    seed_mean,
)

if TYPE_CHECKING:
    from qvtune.config.schema import RunConfig

States = dict[str, RunState]  # run key (as the job was inspected) -> what the store knows of it


class SearchProblem(Exception):
    """A search that cannot start as configured; the message is one line that says what to give."""


@dataclass(frozen=True)
class Sweeper:
    """What a search needs of the sweeper that runs it."""

    # jobs' overrides -> their composed, validated jobs with the store's state (repeats of a run kept)
    inspect: Callable[[list[list[str]]], list[Job]]
    # run the jobs through the launcher, each with the extra overrides (a rung's `until`); returns
    # when they are done, whatever became of them (the store says)
    launch: Callable[[list[Job], list[str]], None]
    gpus: bool  # whether the launcher gives jobs a GPU: which keys a run may have (plan.lookup)


@dataclass(frozen=True)
class Grid:
    """The sweep's jobs as a search sees them: cell -> its jobs (one per seed), group -> its cells."""

    cells: dict[Cell, list[Job]]
    groups: dict[Cell, list[Cell]]

    @classmethod
    def of(cls, jobs: Sequence[Job]) -> Grid:
        """The jobs' grid; raises SearchProblem where a job sets `until`, which is the search's to set."""
        if any(override_key(o) == "until" for j in jobs for o in j.overrides):
            raise SearchProblem(
                "until: set by the search for each rung; leave it out of a search's overrides"
            )
        cells: dict[Cell, list[Job]] = {}
        for j in jobs:
            cells.setdefault(cell_of(j.overrides), []).append(j)
        groups: dict[Cell, list[Cell]] = {}
        for cell in cells:
            groups.setdefault(group_of(cell), []).append(cell)
        return cls(cells, groups)

    @property
    def jobs(self) -> list[Job]:
        return [j for jobs in self.cells.values() for j in jobs]

    @property
    def first(self) -> RunConfig:
        """The config of the grid's first job: what its cells share (metric, results_dir, sweep_name)."""
        return next(iter(self.cells.values()))[0].config

    @property
    def seeds(self) -> list[str]:
        """The seeds every cell runs, in the sweep's order."""
        return [str(j.config.seed) for j in next(iter(self.cells.values()))]

    @property
    def labels(self) -> dict[Cell, str]:
        return labels(list(self.groups))

    @property
    def name(self) -> str:
        """The search's name: the sweep's name and a hash of its canonical grid and its seeds, so a
        re-launch (its overrides in any order, its store given from any folder) finds its study."""
        grid_id = grid_name(list(self.cells), self.seeds)
        return f"{self.first.sweep_name}-{grid_id}" if self.first.sweep_name else grid_id

    @property
    def folder(self) -> Path:
        """Where the search's answer (and Optuna's journal) go: the store's searches/ folder."""
        return Path(os.path.abspath(Path(self.first.results_dir).expanduser())) / "searches"


def look_up(jobs: Sequence[Job], gpus: bool) -> States:
    """Each job's state in the store, one lookup per run: a rung's or a batch's, once it ran."""
    return {j.key: lookup(j.config, gpus)[1] for j in jobs}


def score(
    jobs: Sequence[Job], states: States, fraction: float, name: Optional[str] = None
) -> Optional[float]:
    """The seed-mean over a cell's (or a trial's) runs of `name` (None: the headline metric) at a
    fraction of the budget; None while any run has no score there."""
    return seed_mean([rung_score(states[j.key].record, fraction, name or j.config.task.metric) for j in jobs])


def rates(job: Job) -> dict[str, float]:
    """A job's eta_QK, eta_V and lambda, as an answer lists them."""
    r = learning_rates(job.config)
    return {"lr": r.qk, "lr_v": r.v, "lam": r.lam}
