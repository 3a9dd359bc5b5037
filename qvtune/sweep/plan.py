"""A sweep's plan: every job's run key and state in the results store, what a launch skips and runs,
and (`plan=true`) the list of runs with a cost estimate from the measured speed of finished runs
like each."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from qvtune.config.budget import planned_budget
from qvtune.status import TO_RUN, Status
from qvtune.store.identity import run_key
from qvtune.store.record import RunRecord
from qvtune.store.store import ResultsStore, RunState, result_files
from qvtune.train.runtime import expected_precisions

if TYPE_CHECKING:
    from qvtune.config.schema import RunConfig


# the most advanced first: a run that may have several keys is what its most advanced key says
STATE_ORDER = tuple(Status)


@dataclass
class Job:
    """One composed job of a sweep: its overrides, run key, what the store knows of it, and config."""

    overrides: list[str]
    key: str
    run: RunState
    config: RunConfig

    @property
    def state(self) -> Status:
        return self.run.state

    @property
    def to_run(self) -> bool:
        """Pending, failed, interrupted, or paused short of the job's `until`."""
        return self.state in TO_RUN or (
            self.state is Status.PAUSED and not self.run.reached(self.config.until)
        )


def lookup(cfg: RunConfig, gpus: bool) -> tuple[str, RunState]:
    """The run key and state of a job's run: the most advanced among the keys it may have where it
    runs (`gpus`: whether its launcher gives it a GPU; precision=auto is bf16 or fp16 there)."""
    store = ResultsStore(Path(cfg.results_dir).expanduser().absolute())
    keys = [run_key(cfg, precision) for precision in expected_precisions(cfg, gpus)]
    states = {key: store.state(key) for key in keys}
    key = min(states, key=lambda k: STATE_ORDER.index(states[k].state))
    return key, states[key]


def to_launch(jobs: list[Job]) -> list[Job]:
    """The jobs a launch runs; completed, diverged, running and paused at their `until` are left."""
    return [j for j in jobs if j.to_run]


def launch_summary(jobs: list[Job]) -> str:
    """One line on what a launch skips and runs."""
    counts = {s: sum(j.state == s for j in jobs) for s in Status}
    return (
        f"sweep: {len(jobs)} runs; skipping {counts[Status.COMPLETED]} completed, "
        f"{counts[Status.DIVERGED]} diverged, {counts[Status.RUNNING]} running elsewhere, "
        f"{sum(j.state is Status.PAUSED and not j.to_run for j in jobs)} paused at their until; "
        f"launching {len(to_launch(jobs))} "
        f"({counts[Status.FAILED]} failed and {counts[Status.INTERRUPTED]} interrupted among them)"
    )


def print_plan(jobs: list[Job]) -> None:
    """One line per run (state, key, overrides, estimated time) and the totals."""
    estimates = [estimate_seconds(j.config) for j in jobs]
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    for j, est in zip(jobs, estimates):
        shown = f"{est / 60:7.1f} min" if est is not None else "      n/a"
        print(f"{j.state:<11} {j.key}  {shown}  {' '.join(o for o in j.overrides if o not in shared)}")
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.state.value] = counts.get(j.state.value, 0) + 1
    todo = [e for j, e in zip(jobs, estimates) if j.to_run]
    known = [e for e in todo if e is not None]
    print(f"{len(jobs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if known:
        print(
            f"to run: {len(todo)}; estimated {sum(known) / 3600:.2f} h of compute for {len(known)} of them "
            "(from the measured speed of finished runs of the same model, task and method)"
        )
    elif todo:
        print(f"to run: {len(todo)}; no estimate yet: no finished run of the same model, task and method")


def estimate_seconds(cfg: RunConfig, fraction: float = 1.0) -> Optional[float]:
    """Training samples of the run (a `fraction` of them: a rung) divided by the measured speed of
    finished runs like it, plus their time outside training."""
    planned = planned_budget(cfg)
    samples = float(planned.samples) if planned is not None else None
    if samples is None:
        return None
    samples *= fraction
    speeds, fixed = _reference_speeds(
        str(Path(cfg.results_dir).expanduser().absolute()), (cfg.model.name, cfg.task.name, cfg.method.name)
    )
    if not speeds:
        return None
    return samples / statistics.median(speeds) + statistics.median(fixed)


_speed_cache: dict[str, dict[tuple[str, str, str], tuple[list[float], list[float]]]] = {}


def _reference_speeds(root: str, kind: tuple[str, str, str]) -> tuple[list[float], list[float]]:
    """(samples/s, seconds outside training) of the completed runs of a (model, task, method) in the
    store, read once per store; records that say too little are left out."""
    if root not in _speed_cache:
        table: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
        for rel in result_files(Path(root)):
            try:
                r = RunRecord.read(Path(root) / rel)
                c = r.config
                t: dict[str, Any] = r.timing  # a timing it lacks (None) raises TypeError: left out
                k = (c["model"]["name"], c["task"]["name"], c["method"]["name"])
                if r.status is Status.COMPLETED and t.get("samples_per_s"):
                    speeds, fixed = table.setdefault(k, ([], []))
                    speeds.append(t["samples_per_s"])
                    fixed.append(t["wall_s"] - t["train_s"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        _speed_cache[root] = table
    return _speed_cache[root].get(kind, ([], []))
