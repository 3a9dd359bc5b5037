"""A sweep's plan: every job's run key and state in the results store, what a launch skips and runs,
and (`plan=true`) the list of runs with a cost estimate from the measured speed of finished runs
like each. qvtune's sweeper (hydra_plugins/qvtune_sweeper) composes the jobs and calls this.

Nothing heavy is imported: a plan is made on a login node, far from the GPUs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

from qvtune.identity import expected_precisions, plain, run_key
from qvtune.record import TO_RUN, ResultsStore, RunRecord, RunState, State, Status, result_files

if TYPE_CHECKING:
    from qvtune.config import RunConfig

# the most advanced state first: a run that may have several keys is what its most advanced key says
STATE_ORDER = (
    State.COMPLETED,
    State.DIVERGED,
    State.PAUSED,
    State.RUNNING,
    State.INTERRUPTED,
    State.FAILED,
    State.PENDING,
)


@dataclass
class Job:
    """One composed job of a sweep: its overrides, run key, what the store knows of it, and config."""

    overrides: list[str]
    key: str
    run: RunState
    config: RunConfig

    @property
    def state(self) -> State:
        return self.run.state

    @property
    def to_run(self) -> bool:
        """Pending, failed, interrupted, or paused short of the job's `until`."""
        return self.state in TO_RUN or (
            self.state is State.PAUSED and not self.run.reached(self.config.until)
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
    counts = {s: sum(j.state == s for j in jobs) for s in State}
    return (
        f"sweep: {len(jobs)} runs; skipping {counts[State.COMPLETED]} completed, "
        f"{counts[State.DIVERGED]} diverged, {counts[State.RUNNING]} running elsewhere, "
        f"{sum(j.state is State.PAUSED and not j.to_run for j in jobs)} paused at their until; "
        f"launching {len(to_launch(jobs))} "
        f"({counts[State.FAILED]} failed and {counts[State.INTERRUPTED]} interrupted among them)"
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


def train_samples(cfg: RunConfig) -> Optional[float]:
    """The training samples of the whole run, from the task's size hint; None where it has none."""
    size = cfg.task.synthetic.train_size if cfg.task.synthetic is not None else cfg.task.train_size
    if size is None:
        return None
    if cfg.max_train_samples:
        size = min(size, cfg.max_train_samples)
    steps = cfg.max_steps
    return float(steps * cfg.batch_size * cfg.grad_accum if steps is not None else size * cfg.epochs)


def estimate_seconds(cfg: RunConfig, fraction: float = 1.0) -> Optional[float]:
    """Training samples of the run (a `fraction` of them: a rung) divided by the measured speed of
    finished runs like it, plus their time outside training."""
    samples = train_samples(cfg)
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


def form_packs(jobs: list[Job], size: int) -> list[list[Job]]:
    """The jobs grouped into packs of at most `size` that may share a forward pass (the same config
    but for PACK_KEYS), in sweep order and as even as the count allows; a method=full job, and one
    without a partner, is a pack of one: a lone run."""
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(pack_signature(j.config) if j.config.method.name != "full" else j.key, []).append(j)
    packs = []
    for group in groups.values():
        n = -(-len(group) // max(1, size))
        packs += [group[i::n] for i in range(n)] if n > 1 else [group]
    return packs


def pack_signature(cfg: RunConfig) -> str:
    """What the members of a pack share: the whole config but PACK_KEYS."""
    import json

    from omegaconf import DictConfig

    from qvtune.config import PACK_KEYS

    skip = (*PACK_KEYS, "pack", "hydra")
    items = cast(DictConfig, cfg).items()  # a job's config is the DictConfig Hydra composed
    return json.dumps({k: plain(v) for k, v in items if k not in skip}, sort_keys=True)


def pack_overrides(pack: list[Job]) -> list[str]:
    """The overrides of a pack's one job: the first member's without PACK_KEYS, and `pack=[...]`
    with every member's PACK_KEYS values (qvtune.config.member_configs takes them apart)."""
    from qvtune.config import PACK_KEYS
    from qvtune.search import override_key

    shared = [o for o in pack[0].overrides if override_key(o) not in PACK_KEYS]
    members = []
    for j in pack:
        values = [f"{k}:{_override_value(plain(getattr(j.config, k)))}" for k in PACK_KEYS]
        members.append("{" + ",".join(values) + "}")
    return [*shared, f"pack=[{','.join(members)}]"]


def _override_value(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value.isalnum() else "'" + value.replace("'", "\\'") + "'"
    return repr(value)


def print_packs(packs: list[list[Job]]) -> None:
    """One line per pack of several runs: its run keys and what sets its members apart."""
    from qvtune.config import PACK_KEYS
    from qvtune.search import override_key

    for i, pack in enumerate(p for p in packs if len(p) > 1):
        members = " | ".join(
            " ".join(o for o in j.overrides if override_key(o) in PACK_KEYS) or j.key for j in pack
        )
        print(f"pack {i + 1} ({len(pack)} runs: {' '.join(j.key for j in pack)}): {members}")
    lone = sum(len(p) == 1 for p in packs)
    runs = sum(len(p) for p in packs)
    print(f"{runs} runs to launch as {len(packs)} jobs: {len(packs) - lone} packs, {lone} alone")
