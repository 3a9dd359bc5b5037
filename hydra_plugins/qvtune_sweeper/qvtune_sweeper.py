"""qvtune's sweeper: Hydra's basic sweeper (`-m`, `a=1,2`, `range(...)`, `glob(...)`) plus what a grid
of hundreds of fine-tuning runs needs: `hydra.sweeper.grids` (parameter maps whose products are
joined: Table 2's rows); every job composed, validated and its results_dir checked before any is
launched; finished runs skipped, `plan=true` to list them; `hydra.sweeper.search=halving|optuna`
over the grid's learning rates; `hydra.sweeper.pack=K`; one closing line counting the runs by
outcome, and exit 1 when one was lost. qvtune.sweep does the work; this module is what needs Hydra:
the config, composing and launching.

Hydra imports it outside sys.modules while scanning plugins: no `from __future__ import annotations`
here, since dataclasses then cannot resolve their field types; qvtune is imported where it is used.
"""

import copy
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional, cast

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus
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
    # job each (qvtune.sweep.packs); 1: every run is its own job
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
        self.returns: list[Any] = []  # the launcher's returns, batch by batch: what sweep() returns
        self.launched: set[str] = set()  # run keys this sweep launched
        self.failed: set[str] = set()  # ... whose launcher job failed: raised outside its run

    @cached_property
    def gpus(self) -> bool:
        """Whether the configured launcher gives its jobs a GPU: which run keys to look up."""
        assert self.config is not None
        return launcher_gives_gpus(self.config.hydra.launcher)

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
        """Compose and validate every job's config, check its results_dir can be written, drop
        repeats of a run key (unless not `unique`), look keys up in the store."""
        from qvtune.config.validate import validate
        from qvtune.store.store import ResultsStore
        from qvtune.sweep.plan import Job, lookup

        inspected, problems, keys = [], [], set()
        stores: dict[str, Optional[str]] = {}  # results_dir -> why it cannot be written
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
            if cfg.results_dir not in stores:  # a store that is a file would fail its lookup
                stores[cfg.results_dir] = problem = ResultsStore(cfg.results_dir).unwritable()
                problems += [problem] if problem else []
            if stores[cfg.results_dir]:
                continue
            key, run = lookup(cfg, self.gpus)
            if unique and key in keys:  # two spellings of one run (lam=1 and lr_v=lr): run it once
                continue
            keys.add(key)
            inspected.append(Job(list(overrides), key, run, cfg))
        if problems:
            fail(problems)
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
        """Check the options, inspect every job, then plan, search or launch; end with the summary."""
        from qvtune.sweep import options
        from qvtune.sweep.outcomes import summarize
        from qvtune.sweep.packs import form_packs, print_packs
        from qvtune.sweep.plan import launch_summary, print_plan, to_launch

        assert self.config is not None
        problems = options.problems(self.search, self.halving, self.optuna, self.pack)
        if problems:
            fail(problems)
        jobs = self.inspect(self.expand(arguments))
        if self.search is not None:
            runs = self.run_search(jobs)
        elif self.config.plan:
            print_plan(jobs)
            if self.pack > 1:
                print_packs(form_packs(to_launch(jobs), self.pack))
            runs = None
        else:
            log.info(launch_summary(jobs))
            self.launch(to_launch(jobs), [])
            runs = jobs
        if runs is not None:  # plan=true launched nothing
            summary = summarize(runs, self.launched, self.failed, self.gpus)
            print(summary.line)
            if summary.exit_code:
                sys.exit(summary.exit_code)
        return self.returns

    def run_search(self, jobs: "list[Job]") -> "Optional[list[Job]]":
        """The search over the jobs' grid, or with plan=true its worst case (None)."""
        from qvtune.sweep.search import halving_search, optuna_search
        from qvtune.sweep.search.grid import SearchProblem, Sweeper

        assert self.config is not None
        sweeper = Sweeper(lambda overrides: self.inspect(overrides, unique=False), self.launch, self.gpus)
        try:
            if self.config.plan and self.search == "optuna":
                optuna_search.plan(jobs, self.optuna)
            elif self.config.plan:
                halving_search.plan(jobs, self.halving)
            elif self.search == "optuna":
                return optuna_search.run(jobs, self.optuna, sweeper)
            else:
                return halving_search.run(jobs, self.halving, sweeper)
            return None
        except SearchProblem as e:
            fail([str(e)])

    def launch(self, jobs: "list[Job]", extra: list[str]) -> None:
        """Launch the jobs (with `extra` overrides) through the configured launcher, as packs of up to
        `pack` runs, one launcher job each, in batches of max_batch_size; note the runs launched, and
        those whose job failed outside its run (lost)."""
        from qvtune.sweep.packs import launcher_jobs, pack_overrides

        assert self.config is not None and self.launcher is not None
        if not jobs:
            return
        packs = launcher_jobs(jobs, self.pack)
        overrides = [[*(pack_overrides(p) if len(p) > 1 else p[0].overrides), *extra] for p in packs]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        self.overrides = list(self.split_overrides_to_chunks(overrides, self.max_batch_size))
        self.batch_index = 0  # BasicSweeper's cursor into self.overrides: a search launches again
        returns: list[JobReturn] = []
        while not self.is_done():  # jobs numbered on from the sweep's earlier launches
            batch = self.launcher.launch(self.get_job_batch(), initial_job_idx=sum(map(len, self.returns)))
            self.returns.append(batch)
            returns += batch
        for pack, ret in zip(packs, returns):
            self.launched.update(j.key for j in pack)
            if ret.status == JobStatus.FAILED:  # a run's own failure is a record; the job returns normally
                self.failed.update(j.key for j in pack)
                error = ret._return_value  # the exception: launchers keep it nowhere else
                log.error(f"job {' '.join(ret.overrides or [])} failed before writing a record: {error!r}")


def fail(problems: list[str]) -> NoReturn:
    """Stop the sweep before anything is launched, one line per problem."""
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    print(f"error: {len(problems)} problem(s) in the sweep; nothing was launched", file=sys.stderr)
    sys.exit(2)


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
