"""qvtune's sweeper: Hydra's basic sweeper (so `-m`, `a=1,2`, `range(...)` and `glob(...)` work as
usual) plus what a grid of hundreds of fine-tuning runs needs:

- `hydra.sweeper.grids`: a list of parameter maps whose cartesian products are joined, for
  experiments that are not one product (Table 2's rows); command-line sweeps multiply every grid.
- every job's config is composed and validated before any job is launched, so one typo stops the
  sweep before hundreds of jobs are queued;
- runs whose key is already completed (or diverged) in the results store are not launched again,
  and `plan=true` lists every run with its state and a cost estimate instead of launching
  (qvtune.plan: the store lookup, the plan and the estimate);
- `hydra.sweeper.search=halving`: successive halving over the grid's learning rates, one batch of
  jobs per rung through the configured launcher (qvtune.search: the arithmetic).
- `hydra.sweeper.search=optuna`: Optuna's TPE over log eta_QK and log lambda, each batch of trials
  one launch (qvtune.optuna_search: the study).
- `hydra.sweeper.pack=K`: runs that differ only in learning rates or targets train as packs of up to
  K, one launcher job each (qvtune.plan forms them, qvtune.pack trains them).

Hydra imports this module outside sys.modules while scanning plugins: no `from __future__ import
annotations` here, since dataclasses then cannot resolve their field types.
"""

import copy
import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from qvtune.config.schema import RunConfig
    from qvtune.sweep.plan import Job

log = logging.getLogger(__name__)


@dataclass
class HalvingConf:
    eta: float = 3.0  # the reduction factor: a rung keeps the best ceil(n / eta) cells
    min_fraction: float = 1 / 9  # the first rung's fraction of the full budget; rungs grow by eta


@dataclass
class OptunaConf:
    trials: int = 12  # trials per group of cells, each one (eta_QK, lambda) point at the full budget
    batch: int = 4  # trials asked at once: one launch
    # how many of the sweep's seeds a trial runs (null: all); the best trial then runs the rest
    seeds: Optional[int] = None
    lr: Optional[list[float]] = None  # [low, high] of eta_QK, searched on a log scale; null: the grid's range
    lam: Optional[list[float]] = None  # [low, high] of lambda, on a log scale; null: the grid's range
    startup: Optional[int] = None  # trials drawn at random before TPE models the rest; null: one batch
    sampler_seed: int = 0


@dataclass
class QvtuneSweeperConf:
    _target_: str = "hydra_plugins.qvtune_sweeper.qvtune_sweeper.QvtuneSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[dict[str, str]] = None
    grids: Optional[list[dict[str, Any]]] = None
    # null: run the whole grid; halving: successive halving over it; optuna: TPE within its ranges
    search: Optional[str] = None
    halving: HalvingConf = field(default_factory=HalvingConf)
    optuna: OptunaConf = field(default_factory=OptunaConf)
    # train up to this many runs that differ only in learning rates or targets as one pack, one
    # job each (qvtune.pack); 1: every run is its own job
    pack: int = 1


ConfigStore.instance().store(group="hydra/sweeper", name="qvtune", node=QvtuneSweeperConf, provider="qvtune")


class QvtuneSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: Optional[int],
        params: Optional[dict[str, str]] = None,
        grids: Optional[list[dict[str, str]]] = None,
        search: Optional[str] = None,
        halving: Optional[Mapping[str, Any]] = None,
        optuna: Optional[Mapping[str, Any]] = None,
        pack: int = 1,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = [dict(g) for g in grids or []]
        self.search = search
        self.halving = HalvingConf(**(halving or {}))
        self.optuna = OptunaConf(**(optuna or {}))
        self.pack = pack
        self._composed: dict[tuple[str, ...], DictConfig] = {}

    def expand(self, arguments: list[str]) -> list[list[str]]:
        """Every job's overrides: the union over grids of (params x grid x command line)."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs: list[list[str]] = []
        seen: set[tuple[str, ...]] = set()
        for grid in self.grids or [{}]:
            params = [f"{k}={v}" for k, v in {**self.params, **grid}.items()]
            for job in self.split_arguments(parser.parse_overrides(params + list(arguments)), None)[0]:
                if tuple(job) not in seen:
                    seen.add(tuple(job))
                    jobs.append(job)
        return jobs

    def inspect(self, jobs: list[list[str]], unique: bool = True) -> "list[Job]":
        """Compose and validate every job's config, drop repeats of a run key (unless not `unique`),
        look keys up in the store."""
        from qvtune.config.validate import validate
        from qvtune.sweep.plan import Job, lookup

        assert self.hydra_context is not None and self.config is not None
        gpus = launcher_gives_gpus(self.config.hydra.launcher)
        inspected, problems, keys = [], [], set()
        for i, overrides in enumerate(jobs):
            try:
                cfg = cast("RunConfig", self.compose(overrides))  # a DictConfig of the schema, typed as it
            except HydraException as e:
                problems.append(f"job {i} ({' '.join(overrides)}): {e}")
                continue
            errors = validate(cfg)
            if errors:
                problems += [f"job {i} ({' '.join(overrides)}): {e}" for e in errors]
                continue
            key, run = lookup(cfg, gpus)
            if unique and key in keys:  # two spellings of one run (lam=1 and lr_v=lr): run it once
                continue
            keys.add(key)
            inspected.append(Job(list(overrides), key, run, cfg))
        if problems:
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            print(f"error: {len(problems)} problem(s) in the sweep; nothing was launched", file=sys.stderr)
            sys.exit(2)
        return inspected

    def compose(self, overrides: list[str]) -> DictConfig:
        """A job's config as Hydra composes it, faster: Hydra composes the defaults tree once per
        distinct choice of config groups and then applies the value overrides; so does this, with
        the composed trees cached, since composing takes a good fraction of a second per job."""
        assert self.hydra_context is not None and self.config is not None
        # HydraContext types its loader as the ConfigLoader interface; Hydra's is ConfigLoaderImpl
        loader = cast(ConfigLoaderImpl, self.hydra_context.config_loader)
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        groups = [o for o in parsed if loader.repository.group_exists(o.key_or_group)]
        values = [o for o in parsed if o not in groups]
        # input_line is Optional in Hydra's types, but the parser sets it on every override it parses
        choice = tuple(cast(str, o.input_line) for o in groups)
        if choice not in self._composed:
            self._composed[choice] = loader.load_sweep_config(self.config, list(choice))
        cfg = copy.deepcopy(self._composed[choice])
        apply_value_overrides(values, cfg)
        return cfg

    def sweep(self, arguments: list[str]) -> Any:
        from qvtune.sweep.packs import form_packs, print_packs
        from qvtune.sweep.plan import launch_summary, print_plan, to_launch

        assert self.config is not None and self.launcher is not None
        check_search(self.search, self.halving, self.optuna)
        if self.pack < 1:
            fail([f"hydra.sweeper.pack={self.pack}: expected the most runs per pack, an integer >= 1"])
        jobs = self.inspect(self.expand(arguments))
        if self.search is not None:
            if any(override_key(o) == "until" for j in jobs for o in j.overrides):
                fail(["until: set by the search for each rung; leave it out of a search's overrides"])
            if self.search == "optuna":
                return self.optuna_search(jobs)
            return self.halving_search(jobs)
        if self.config.plan:
            print_plan(jobs)
            if self.pack > 1:
                print_packs(form_packs(to_launch(jobs), self.pack))
            return []
        todo = to_launch(jobs)
        log.info(launch_summary(jobs))
        return self.launch_jobs(todo, 0, [])[0]

    def launch_jobs(self, jobs: "list[Job]", index: int, extra: list[str]) -> tuple[list[Any], int]:
        """Launch the jobs (with `extra` overrides) as packs of up to `pack` runs, one launcher job
        each; returns the launcher's returns and the number of launcher jobs."""
        from qvtune.sweep.packs import form_packs, pack_overrides

        if not jobs:
            return [], 0
        packs = form_packs(jobs, self.pack) if self.pack > 1 else [[j] for j in jobs]
        full = sum(j.config.method.name == "full" for j in jobs)
        if self.pack > 1 and full:
            log.info(
                f"{full} method=full runs stay unpacked: each member would hold its own copy of the matrices"
            )
        if self.pack > 1:
            log.info(f"{len(jobs)} runs in {len(packs)} jobs ({sum(len(p) > 1 for p in packs)} packs)")
        overrides = [[*(pack_overrides(p) if len(p) > 1 else p[0].overrides), *extra] for p in packs]
        return self.launch_all(overrides, index), len(overrides)

    def launch_all(self, overrides: list[list[str]], index: int) -> list[Any]:
        """Launch jobs through the configured launcher in batches of max_batch_size; job numbers
        start at `index`."""
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.overrides = list(self.split_overrides_to_chunks(overrides, self.max_batch_size))
        self.batch_index = 0  # BasicSweeper's cursor into self.overrides: a search launches again
        returns = []
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=index)
            report_failures(results)
            returns.append(results)
            index += len(batch)
        return returns

    def halving_search(self, jobs: "list[Job]") -> list[Any]:
        """Successive halving: each rung one batch of every surviving (cell, seed) run with `until`
        set to the rung's fraction; the store says which rungs a re-launch has done already."""
        from qvtune.sweep.plan import lookup, print_plan
        from qvtune.sweep.search import cells as search_cells
        from qvtune.sweep.search import halving as halving_rules

        assert self.config is not None
        tic = time.monotonic()
        cells, groups = cells_and_groups(jobs)
        fractions = halving_rules.rungs(self.halving.eta, self.halving.min_fraction)
        if self.config.plan:
            print_plan(jobs)
            print_search_cost(cells, groups, fractions, self.halving.eta)
            return []
        gpus = launcher_gives_gpus(self.config.hydra.launcher)

        alive = {g: list(cs) for g, cs in groups.items()}
        rungs: dict[search_cells.Cell, list[dict[str, Any]]] = {g: [] for g in groups}
        returns, index = [], 0
        for k, fraction in enumerate(fractions):
            last = k == len(fractions) - 1
            until = None if last else fraction
            batch = [j for g in alive for c in alive[g] for j in cells[c]]
            todo = [j for j in batch if not lookup(j.config, gpus)[1].reached(until)]
            log.info(
                f"search rung {k + 1}/{len(fractions)} ({fraction:.3g} of the budget): "
                f"{len(batch)} runs, {len(batch) - len(todo)} done already, launching {len(todo)}"
            )
            until_override = "until=null" if until is None else f"until={until!r}"
            launched, count = self.launch_jobs(todo, index, [until_override])
            returns += launched
            index += count
            for g, survivors in alive.items():
                scores = {c: seed_mean_at(cells[c], fraction, gpus) for c in survivors}
                losses = {c: seed_mean_at(cells[c], fraction, gpus, "loss") for c in survivors}
                promoted = (
                    survivors if last else halving_rules.promote(survivors, scores, self.halving.eta, losses)
                )
                rungs[g].append(
                    {"fraction": fraction, "scores": scores, "losses": losses, "promoted": promoted}
                )
                alive[g] = promoted
        wall_s = time.monotonic() - tic
        answer = search_answer(str(self.search), self.halving, fractions, cells, rungs, gpus, wall_s)
        write_answer(answer, cells)
        return returns

    def optuna_search(self, jobs: "list[Job]") -> list[Any]:
        """Optuna's TPE per group of cells: each batch of trials (every group's) one launch of their
        (trial, seed) runs; then the best trial of each group on the sweep's other seeds, if trials
        ran fewer. The study's journal and the store say what a re-launch has done already."""
        from qvtune.sweep.plan import to_launch
        from qvtune.sweep.search import cells as search_cells
        from qvtune.sweep.search import tpe

        assert self.config is not None
        conf = self.optuna
        tic = time.monotonic()
        cells, groups = cells_and_groups(jobs)
        seeds = seeds_of(cells[next(iter(cells))])
        trial_seeds = seeds[: conf.seeds] if conf.seeds else seeds
        names = search_cells.labels(list(groups))
        spaces = {g: optuna_space(conf, [_rates(cells[c][0]) for c in cs]) for g, cs in groups.items()}
        chosen = ("lr", "lr_v", "lam", "sweep_name")
        base = {g: [o for o in cs[0] if override_key(o) not in chosen] for g, cs in groups.items()}
        if self.config.plan:
            print_optuna_cost(conf, cells, groups, spaces, names, len(seeds), len(trial_seeds))
            return []
        gpus = launcher_gives_gpus(self.config.hydra.launcher)
        first = next(iter(cells.values()))[0].config
        name = f"{answer_name(first, cells, seeds)}-optuna"
        journal = Path(first.results_dir).expanduser().absolute() / "searches" / f"{name}.journal"
        studies = {
            g: tpe.open_study(journal, names[g], conf.sampler_seed, conf.startup or conf.batch)
            for g in groups
        }

        def trial_jobs(g: Any, point: "tpe.Point", on: list[str]) -> "list[Job]":
            # the trials are their own sweep: their own W&B group, and their own heatmap in the collector
            lr = [f"lr={point.lr!r}", f"lam={point.lam!r}", "lr_v=null", f"sweep_name={name}"]
            return self.inspect([[*base[g], *lr, f"seed={s}"] for s in on], unique=False)

        def launch(batch: "list[Job]", index: int) -> tuple[list[Any], int]:
            todo = to_launch(list({j.key: j for j in batch}.values()))  # two trials may round to one point
            log.info(f"search: {len(batch)} runs, launching {len(todo)}")
            return self.launch_jobs(todo, index, [])

        returns: list[Any] = []
        index = 0
        while True:
            todo = {
                g: tpe.next_batch(study, conf.trials, conf.batch, *spaces[g]) for g, study in studies.items()
            }
            batch = {(g, p): trial_jobs(g, p, trial_seeds) for g, points in todo.items() for p in points}
            if not batch:
                break
            launched, count = launch([j for js in batch.values() for j in js], index)
            returns, index = returns + launched, index + count
            for (g, p), js in batch.items():
                tpe.tell(studies[g], p.number, seed_mean_at(js, 1.0, gpus))
        picks = {g: tpe.best(study) for g, study in studies.items()}
        confirm = {g: trial_jobs(g, p, seeds) for g, p in picks.items() if p is not None}
        launched, _ = launch([j for js in confirm.values() for j in js], index)
        returns += launched
        ran = [j for g in groups for p, _ in tpe.told(studies[g]) for j in trial_jobs(g, p, trial_seeds)]
        answer = {
            "search": "optuna",
            "name": name,
            "metric": first.task.metric,
            "seeds": seeds,
            "trial_seeds": trial_seeds,
            "trials": conf.trials,
            "batch": conf.batch,
            "startup": conf.startup,
            "sampler_seed": conf.sampler_seed,
            "groups": [
                {
                    "group": names[g],
                    "lr_range": list(spaces[g][0]),
                    "lam_range": list(spaces[g][1]),
                    "pick": None
                    if picks[g] is None
                    else optuna_point(picks[g], seed_mean_at(confirm[g], 1.0, gpus)),
                    "trials": [optuna_point(p, v) for p, v in tpe.told(studies[g])],
                }
                for g in groups
            ],
            **search_compute(cells, ran + [j for js in confirm.values() for j in js], gpus),
            "wall_s": time.monotonic() - tic,
        }
        write_answer(answer, cells)
        return returns


def override_key(override: str) -> str:
    from qvtune.sweep.search.cells import override_key as key

    return key(override)


def fail(problems: list[str]) -> None:
    """Stop the sweep before anything is launched, one line per problem."""
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    print(f"error: {len(problems)} problem(s) in the sweep; nothing was launched", file=sys.stderr)
    sys.exit(2)


def check_search(name: Optional[str], halving: HalvingConf, optuna: OptunaConf) -> None:
    from qvtune.sweep.search.cells import SEARCHES
    from qvtune.sweep.search.halving import validate

    problems = (
        []
        if name is None or name in SEARCHES
        else [
            f"hydra.sweeper.search={name}: expected one of {', '.join(SEARCHES)}, or null for the whole grid"
        ]
    )
    problems += validate(halving.eta, halving.min_fraction) if name == "halving" else []
    if name == "optuna":
        from qvtune.sweep.search.tpe import validate as validate_optuna

        problems += validate_optuna(
            optuna.trials, optuna.batch, optuna.seeds, optuna.startup, {"lr": optuna.lr, "lam": optuna.lam}
        )
    if problems:
        fail(problems)


def cells_and_groups(jobs: "list[Job]") -> "tuple[dict[Any, list[Job]], dict[Any, list[Any]]]":
    """A search's cells (a job's overrides but its seed -> the jobs of its seeds) and its groups (the
    overrides that are not learning rates -> the cells that share them)."""
    from qvtune.sweep.search import cells as search_cells

    cells: dict[search_cells.Cell, list[Job]] = {}
    for j in jobs:
        cells.setdefault(search_cells.cell_of(j.overrides), []).append(j)
    groups: dict[search_cells.Cell, list[search_cells.Cell]] = {}
    for cell in cells:
        groups.setdefault(search_cells.group_of(cell), []).append(cell)
    return cells, groups


def seed_mean_at(
    jobs: "list[Job]", fraction: float, gpus: bool, name: Optional[str] = None
) -> Optional[float]:
    """The seed-mean over the runs of a cell (or a trial) of `name` (None: the headline metric) at a
    fraction of the budget, from their records; None while any run has no score there."""
    from qvtune.sweep.plan import lookup
    from qvtune.sweep.search.cells import rung_score, seed_mean

    return seed_mean(
        [rung_score(lookup(j.config, gpus)[1].record, fraction, name or j.config.task.metric) for j in jobs]
    )


def seeds_of(jobs: "list[Job]") -> list[str]:
    """The seeds of a cell's jobs, in the sweep's order."""
    return [str(j.config.seed) for j in jobs]


def answer_name(first: "RunConfig", cells: dict[Any, Any], seeds: list[str]) -> str:
    """The search's answer file's name: the sweep's name and a hash of its grid and seeds."""
    from qvtune.sweep.search.cells import grid_name

    grid_id = grid_name(list(cells), sorted(seeds))
    return f"{first.sweep_name}-{grid_id}" if first.sweep_name else grid_id


def optuna_space(conf: OptunaConf, rates: list[dict[str, float]]) -> tuple[tuple[float, float], ...]:
    """The ranges of eta_QK and lambda a group's study searches: the configured ones, else the range
    of the group's cells."""
    space = []
    for name in ("lr", "lam"):
        given = getattr(conf, name)
        if given is not None:
            space.append((float(given[0]), float(given[1])))
            continue
        low, high = min(r[name] for r in rates), max(r[name] for r in rates)
        if not low < high:
            fail(
                [
                    f"hydra.sweeper.optuna.{name}=null: the grid has the one value {low:g} to take the range "
                    f"from; give the range, e.g. hydra.sweeper.optuna.{name}=[{low / 4:g},{low * 4:g}]"
                ]
            )
        space.append((low, high))
    return tuple(space)


def print_optuna_cost(
    conf: OptunaConf,
    cells: dict[Any, "list[Job]"],
    groups: dict[Any, list[Any]],
    spaces: dict[Any, tuple[tuple[float, float], ...]],
    names: dict[Any, str],
    n_seeds: int,
    n_trial_seeds: int,
) -> None:
    """The search's worst case (every trial on its seeds at the full budget, and its pick on the
    rest) against the grid's."""
    from qvtune.sweep.plan import estimate_seconds

    spent, grid, seconds, timed = 0.0, 0.0, 0.0, True
    for g, group_cells in groups.items():
        cfg = cells[group_cells[0]][0].config
        runs = conf.trials * n_trial_seeds + n_seeds - n_trial_seeds
        samples = planned_samples(cfg) or 0.0
        est = estimate_seconds(cfg)
        timed = timed and est is not None
        seconds += (est or 0.0) * runs
        spent += samples * runs
        grid += samples * len(group_cells) * n_seeds
        (lr, lam) = spaces[g]
        rest = f", then the pick on {n_seeds - n_trial_seeds} more" if n_seeds > n_trial_seeds else ""
        print(
            f"search {names[g]}: {conf.trials} trials x {n_trial_seeds} seeds in batches of "
            f"{conf.batch}{rest}; "
            f"eta_QK in [{lr[0]:g}, {lr[1]:g}], lambda in [{lam[0]:g}, {lam[1]:g}] (log scale)"
        )
    share = spent / grid if grid else math.nan
    time_part = f"; estimated {seconds / 3600:.2f} h of compute" if timed else ""
    print(f"search worst case: {spent:.0f} training samples, {share:.1%} of the grid's {grid:.0f}{time_part}")


def _rates(job: "Job") -> dict[str, float]:
    from qvtune.config.rates import learning_rates

    r = learning_rates(job.config)
    return {"lr": r.qk, "lr_v": r.v, "lam": r.lam}


def print_search_cost(
    cells: dict[Any, "list[Job]"], groups: dict[Any, list[Any]], fractions: list[float], eta: float
) -> None:
    """The search's worst case (every rung's runs at their budgets) against the grid's."""
    from qvtune.sweep.plan import estimate_seconds
    from qvtune.sweep.search import cells as search_cells
    from qvtune.sweep.search import halving as halving_rules

    total: dict[str, float] = {"samples": 0.0, "grid": 0.0, "seconds": 0.0}
    timed = True
    names = search_cells.labels(list(groups))
    for g, group_cells in groups.items():
        costs = halving_rules.worst_case(len(group_cells), eta, fractions)
        jobs = cells[group_cells[0]]
        samples = planned_samples(jobs[0].config) or 0.0
        before = 0.0
        for c in costs:
            est = estimate_seconds(jobs[0].config, c.fraction - before)
            timed = timed and est is not None
            total["seconds"] += (est or 0.0) * c.cells * len(jobs)
            before = c.fraction
        frac = halving_rules.cost_fraction(costs, len(group_cells))
        total["samples"] += frac * samples * len(group_cells) * len(jobs)
        total["grid"] += samples * len(group_cells) * len(jobs)
        rungs = ", ".join(f"{c.cells} cells x {len(jobs)} seeds to {c.fraction:.3g}" for c in costs)
        print(f"search {names[g]}: {rungs}")
    share = total["samples"] / total["grid"] if total["grid"] else math.nan
    time_part = f"; estimated {total['seconds'] / 3600:.2f} h of compute" if timed else ""
    print(
        f"search worst case: {total['samples']:.0f} training samples, {share:.1%} of the grid's "
        f"{total['grid']:.0f}{time_part}"
    )


def search_answer(
    name: str,
    halving: HalvingConf,
    fractions: list[float],
    cells: dict[Any, "list[Job]"],
    rungs: dict[Any, list[dict[str, Any]]],
    gpus: bool,
    wall_s: float,
) -> dict[str, Any]:
    """The search's result as JSON: per group its pick and every rung's cells and scores, the
    training samples spent against the full grid's, and this launch's wall time."""
    from qvtune.sweep.search import cells as search_cells
    from qvtune.sweep.search import halving as halving_rules

    out_groups = []
    names = search_cells.labels(list(rungs))
    for g, history in rungs.items():
        final = history[-1]["scores"]
        best = halving_rules.ranked(list(final), final, history[-1]["losses"])
        pick = None
        if best:
            pick = {"cell": list(best[0]), **_rates(cells[best[0]][0]), "score": final[best[0]]}
        out_groups.append(
            {
                "group": names[g],
                "pick": pick,
                "rungs": [
                    {
                        "fraction": h["fraction"],
                        "cells": [
                            {
                                "cell": list(c),
                                **_rates(cells[c][0]),
                                "score": s,
                                "loss": h["losses"][c],
                                "promoted": c in h["promoted"],
                            }
                            for c, s in h["scores"].items()
                        ],
                    }
                    for h in history
                ],
            }
        )
    first = next(iter(cells.values()))[0].config
    seeds = seeds_of(next(iter(cells.values())))
    return {
        "search": name,
        "name": answer_name(first, cells, seeds),
        "metric": first.task.metric,
        "eta": halving.eta,
        "min_fraction": halving.min_fraction,
        "rungs": fractions,
        "seeds": seeds,
        "groups": out_groups,
        **search_compute(cells, [j for jobs in cells.values() for j in jobs], gpus),
        "wall_s": wall_s,
    }


def search_compute(cells: dict[Any, "list[Job]"], ran: "list[Job]", gpus: bool) -> dict[str, Any]:
    """The training samples of the search's runs (`ran`, each key once) against the grid's: every
    cell's runs at the full budget."""
    from qvtune.sweep.plan import lookup
    from qvtune.sweep.search import cells as search_cells

    records = {j.key: lookup(j.config, gpus)[1].record for j in ran}
    spent = float(sum(r.samples for r in records.values() if r is not None))
    grid = 0.0
    for jobs in cells.values():
        for j in jobs:
            grid += (
                search_cells.full_samples(lookup(j.config, gpus)[1].record)
                or planned_samples(j.config)
                or 0.0
            )
    return {"samples": spent, "grid_samples": grid, "samples_share": spent / grid if grid else None}


def optuna_point(point: Any, score: Optional[float]) -> dict[str, Any]:
    return {
        "trial": point.number,
        "lr": point.lr,
        "lr_v": point.lr * point.lam,
        "lam": point.lam,
        "score": score,
    }


def _score(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_answer(answer: dict[str, Any], cells: dict[Any, "list[Job]"]) -> None:
    """Print the search's answer and write it to results_dir/searches/<name>.json."""
    from qvtune.common.files import atomic_write

    first = next(iter(cells.values()))[0].config
    path = Path(first.results_dir).expanduser().absolute() / "searches" / f"{answer['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(answer, indent=1, sort_keys=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    metric = answer["metric"]
    for g in answer["groups"]:
        print(f"search {g['group']}:")
        for t in g.get("trials", []):
            print(f"  trial {t['trial']}: eta_QK={t['lr']:g} lambda={t['lam']:g}: {_score(t['score'])}")
        for k, r in enumerate(g.get("rungs", [])):
            shown = "  ".join(
                f"{c['lr']:g}/{c['lr_v']:g}: {_score(c['score'])}{'*' if c['promoted'] else ''}"
                for c in r["cells"]
            )
            print(f"  rung {k + 1} ({r['fraction']:.3g}): {shown}")
        p = g["pick"]
        if p is None:
            print("  no pick: no cell has a score at the full budget")
        else:
            print(
                f"  pick: eta_QK={p['lr']:g} eta_V={p['lr_v']:g} lambda={p['lam']:g}: "
                f"{metric} {_score(p['score'])} (seed-mean)"
            )
    share = answer["samples_share"]
    print(
        f"search spent {answer['samples']:.0f} training samples"
        + (f", {share:.1%} of the grid's {answer['grid_samples']:.0f}" if share is not None else "")
        + f", in {answer['wall_s']:.0f} s -> {path}"
    )


def report_failures(results: Any) -> None:
    """A job that raised outside its run (a run's own failure is a record, and returns normally):
    say which and why, since the launchers only keep the exception in the job's return."""
    from hydra.core.utils import JobStatus

    for ret in results:
        if ret.status == JobStatus.FAILED:
            log.error(
                f"job {' '.join(ret.overrides or [])} failed before writing a record: {ret._return_value!r}"
            )


def launcher_gives_gpus(launcher: DictConfig) -> bool:
    """Whether the configured launcher runs jobs on a GPU: Slurm with gpus_per_node (or a gres), the
    gpus launcher with devices, or this machine's own GPUs for Hydra's basic launcher."""
    from hydra_plugins.qvtune_launcher.gpus_launcher import visible_gpus

    target = str(launcher.get("_target_", ""))
    if "submitit" in target and "Local" not in target:
        gres = str((launcher.get("additional_parameters") or {}).get("gres", ""))
        return bool(launcher.get("gpus_per_node") or launcher.get("gpus_per_task") or "gpu" in gres)
    if "qvtune_launcher" in target and launcher.get("devices") is not None:
        return len(launcher.devices) > 0
    return bool(visible_gpus())


def apply_value_overrides(overrides: list[Override], cfg: DictConfig) -> None:
    """Apply value overrides (`lr=1e-4`, `+model.arch.x=1`, `~key`) to a composed config, in place.

    Hydra composes a job as its defaults tree (chosen by the config-group overrides) with the value
    overrides applied on top; Hydra does the second step in this private method, which has no public
    equivalent. Calling it here, on trees composed once per choice of groups, gives the configs
    Hydra's launchers compose for every job (tests/test_compose.py checks every sweep file), at a
    fraction of the cost. Hydra is pinned below 1.4 in pyproject.toml; a change of this method's
    signature or meaning breaks that test, not a sweep.
    """
    ConfigLoaderImpl._apply_overrides_to_config(overrides, cfg)


def planned_samples(cfg: "RunConfig") -> Optional[float]:
    from qvtune.config.budget import planned_budget

    planned = planned_budget(cfg)
    return None if planned is None else float(planned.samples)
