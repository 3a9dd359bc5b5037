"""qvtune's sweeper: Hydra's basic sweeper (so `-m`, `a=1,2`, `range(...)` and `glob(...)` work as
usual) plus three things a grid of hundreds of fine-tuning runs needs:

- `hydra.sweeper.grids`: a list of parameter maps whose cartesian products are joined, for
  experiments that are not one product (Table 2's rows); command-line sweeps multiply every grid.
- every job's config is composed and validated before any job is launched, so one typo stops the
  sweep before hundreds of jobs are queued;
- runs whose key is already completed (or diverged) in the results store are not launched again,
  and `plan=true` lists every run with its state and a cost estimate instead of launching.

Hydra imports this module outside sys.modules while scanning plugins: no `from __future__ import
annotations` here, since dataclasses then cannot resolve their field types.
"""
import copy
import logging
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class QvtuneSweeperConf:
    _target_: str = "hydra_plugins.qvtune_sweeper.qvtune_sweeper.QvtuneSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    grids: Optional[List[Dict[str, Any]]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="qvtune", node=QvtuneSweeperConf, provider="qvtune")


@dataclass
class Job:
    overrides: list[str]
    key: str
    state: str
    config: DictConfig


class QvtuneSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[dict[str, str]] = None,
                 grids: Optional[list[dict[str, str]]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grids = [dict(g) for g in grids or []]
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

    def inspect(self, jobs: list[list[str]]) -> list[Job]:
        """Compose and validate every job's config, drop repeats of a run key, look keys up in the store."""
        from qvtune.config import run_key, validate
        from qvtune.record import ResultsStore

        assert self.hydra_context is not None and self.config is not None
        inspected, problems, keys = [], [], set()
        for i, overrides in enumerate(jobs):
            try:
                cfg = self.compose(overrides)
            except HydraException as e:
                problems.append(f"job {i} ({' '.join(overrides)}): {e}")
                continue
            errors = validate(cfg)
            if errors:
                problems += [f"job {i} ({' '.join(overrides)}): {e}" for e in errors]
                continue
            store = ResultsStore(Path(cfg.results_dir).expanduser().absolute())
            key = run_key(cfg)
            if key in keys:  # two spellings of one run (lam=1 and lr_v=lr): run it once
                continue
            keys.add(key)
            inspected.append(Job(list(overrides), key, store.state(key).state, cfg))
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
        loader = self.hydra_context.config_loader
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        groups = [o for o in parsed if loader.repository.group_exists(o.key_or_group)]
        values = [o for o in parsed if o not in groups]
        choice = tuple(o.input_line for o in groups)
        if choice not in self._composed:
            self._composed[choice] = loader.load_sweep_config(self.config, list(choice))
        cfg = copy.deepcopy(self._composed[choice])
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        jobs = self.inspect(self.expand(arguments))
        if self.config.plan:
            print_plan(jobs)
            return []
        todo = [j for j in jobs if j.state in ("pending", "failed", "interrupted")]
        counts = {s: sum(j.state == s for j in jobs) for s in ("completed", "diverged", "running", "failed", "interrupted")}
        log.info(
            f"sweep: {len(jobs)} runs; skipping {counts['completed']} completed, {counts['diverged']} diverged, "
            f"{counts['running']} running elsewhere; launching {len(todo)} "
            f"({counts['failed']} failed and {counts['interrupted']} interrupted among them)"
        )
        if not todo:
            return []
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        overrides = [j.overrides for j in todo]
        self.overrides = list(self.split_overrides_to_chunks(overrides, self.max_batch_size))
        returns = []
        index = 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=index)
            index += len(batch)
            returns.append(results)
        return returns


def print_plan(jobs: list[Job]) -> None:
    """One line per run (state, key, overrides, estimated time) and the totals."""
    estimates = [estimate_seconds(j.config) for j in jobs]
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    for j, est in zip(jobs, estimates):
        shown = f"{est / 60:7.1f} min" if est is not None else "      n/a"
        print(f"{j.state:<11} {j.key}  {shown}  {' '.join(o for o in j.overrides if o not in shared)}")
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.state] = counts.get(j.state, 0) + 1
    todo = [e for j, e in zip(jobs, estimates) if j.state in ("pending", "failed", "interrupted")]
    known = [e for e in todo if e is not None]
    print(f"{len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if known:
        print(f"to run: {len(todo)}; estimated {sum(known) / 3600:.2f} h of compute for {len(known)} of them "
              "(from the measured speed of finished runs of the same model, task and method)")
    elif todo:
        print(f"to run: {len(todo)}; no estimate yet: no finished run of the same model, task and method")


def estimate_seconds(cfg: DictConfig) -> Optional[float]:
    """Training samples of the run divided by the measured speed of finished runs like it."""

    size = cfg.task.synthetic.train_size if cfg.task.synthetic is not None else cfg.task.train_size
    if size is None:
        return None
    if cfg.max_train_samples:
        size = min(size, cfg.max_train_samples)
    samples = cfg.max_steps * cfg.batch_size * cfg.grad_accum if cfg.max_steps is not None else size * cfg.epochs
    speeds, fixed = _reference_speeds(str(Path(cfg.results_dir).expanduser().absolute()),
                                      (cfg.model.name, cfg.task.name, cfg.method.name))
    if not speeds:
        return None
    return samples / statistics.median(speeds) + statistics.median(fixed)


_speed_cache: dict[str, dict[tuple[str, str, str], tuple[list[float], list[float]]]] = {}


def _reference_speeds(root: str, kind: tuple[str, str, str]) -> tuple[list[float], list[float]]:
    if root not in _speed_cache:
        import json

        from qvtune.record import ResultsStore

        table: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
        for path in ResultsStore(root).result_files():
            try:
                r = json.loads(path.read_text())
                c, t = r["config"], r["timing"]
                k = (c["model"]["name"], c["task"]["name"], c["method"]["name"])
                if r["status"] == "completed" and t.get("samples_per_s"):
                    speeds, fixed = table.setdefault(k, ([], []))
                    speeds.append(t["samples_per_s"])
                    fixed.append(t["wall_s"] - t["train_s"])
            except (ValueError, KeyError, TypeError):
                continue
        _speed_cache[root] = table
    return _speed_cache[root].get(kind, ([], []))
