"""The sweep package without Hydra and without training: successive halving driven through a fake
sweeper whose launches write the records runs would (what it launches rung by rung, one store
lookup per launched run and rung, its answer), and the closing count of a sweep's runs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from qvtune.config.budget import until_step
from qvtune.status import Status
from qvtune.store.record import RunRecord
from qvtune.store.store import ResultsStore
from qvtune.sweep import outcomes
from qvtune.sweep.plan import Job, lookup
from qvtune.sweep.search import grid as search_grid
from qvtune.sweep.search import halving_search
from qvtune.sweep.search.grid import Grid, Sweeper
from tests.helpers import make_config

PLANNED = 12  # every fake run's steps


def jobs_of(results: Path, *cells: list[str], seeds: tuple[int, ...] = (0,)) -> list[Job]:
    """The jobs a sweeper would inspect: each cell's overrides on each seed, looked up in `results`."""
    jobs = []
    for cell in cells:
        for seed in seeds:
            overrides = [*cell, f"seed={seed}"]
            cfg = make_config("model=tiny-bert", "task=synthetic", *overrides, f"results_dir={results}")
            key, run = lookup(cfg, False)
            jobs.append(Job(overrides, key, run, cfg))
    return jobs


def write_record(results: Path, job: Job, status: Status, steps: int, accuracy: float = 0.5) -> None:
    """A run's record at `steps`, evaluated every 6 steps (at each rung of the search below)."""
    metrics = {"accuracy": accuracy, "loss": 1 - accuracy}
    history = [{"step": s, "epoch": 0, "metrics": metrics} for s in range(6, steps + 1, 6)]
    record = RunRecord(
        status=status,
        run_key=job.key,
        planned_steps=PLANNED,
        steps=steps,
        samples=16 * steps,
        history=history,
    )
    ResultsStore(results).write(record)


class FakeSweeper:
    """Launches by writing each run's record as far as the launch's `until`: its accuracy grows with
    eta_V (lr_v), so the search's pick is known."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.launches: list[list[str]] = []

    def launch(self, jobs: list[Job], extra: list[str]) -> None:
        (until,) = [None if e == "until=null" else float(e.split("=")[1]) for e in extra]
        self.launches.append([j.key for j in jobs])
        for j in jobs:
            status = Status.COMPLETED if until is None else Status.PAUSED
            write_record(self.results, j, status, until_step(until, PLANNED), accuracy=float(j.config.lr_v))

    def sweeper(self) -> Sweeper:
        return Sweeper(inspect=lambda overrides: [], launch=self.launch, gpus=False)


class Halving:
    eta = 2.0
    min_fraction = 0.5


def test_halving_looks_each_launched_run_up_once_per_rung_and_picks_the_best(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "results"
    cells = [["lr=0.01", f"lr_v={v}"] for v in (0.1, 0.4, 0.2, 0.3)]
    jobs = jobs_of(results, *cells, seeds=(0, 1))
    looked_up: Counter[str] = Counter()

    def counting_lookup(cfg: Any, gpus: bool) -> Any:
        key, state = lookup(cfg, gpus)
        looked_up[key] += 1
        return key, state

    monkeypatch.setattr(search_grid, "lookup", counting_lookup)
    fake = FakeSweeper(results)
    runs = halving_search.run(jobs, Halving(), fake.sweeper())
    assert runs == jobs
    best = {j.key for j in jobs if j.config.lr_v in (0.4, 0.3)}  # ceil(4 / 2) cells promoted
    assert [set(keys) for keys in fake.launches] == [{j.key for j in jobs}, best]
    assert looked_up == Counter(k for keys in fake.launches for k in keys)  # once a rung, after its launch

    (path,) = (results / "searches").glob("*.json")
    assert path.stem == Grid.of(jobs).name
    answer = json.loads(path.read_text())
    (group,) = answer["groups"]
    assert (group["pick"]["lr_v"], group["pick"]["score"]) == (0.4, pytest.approx(0.4))
    assert [c["promoted"] for c in group["rungs"][0]["cells"]] == [False, True, False, True]
    assert answer["samples"] == 16 * (8 * 6 + 4 * 6)  # every run to step 6, the promoted ones on to 12

    # a re-launch (its jobs inspected again) finds every rung done: it launches and looks up nothing
    looked_up.clear()
    again = FakeSweeper(results)
    halving_search.run(jobs_of(results, *cells, seeds=(0, 1)), Halving(), again.sweeper())
    assert again.launches == [[], []] and not looked_up
    assert json.loads(path.read_text())["groups"] == answer["groups"]


def test_each_run_is_counted_once_by_its_outcome(tmp_path: Path) -> None:
    results = tmp_path / "results"
    jobs = jobs_of(results, *[[f"lr=0.0{i}"] for i in range(1, 9)])
    done, paused, diverged, failed, killed, silent, not_launched, raised = jobs
    write_record(results, done, Status.COMPLETED, PLANNED)
    write_record(results, paused, Status.PAUSED, 6)
    write_record(results, diverged, Status.DIVERGED, 3)
    write_record(results, failed, Status.FAILED, 0)
    write_record(results, killed, Status.RUNNING, 4)  # its job died with the record saying running
    write_record(results, not_launched, Status.COMPLETED, PLANNED)
    write_record(results, raised, Status.COMPLETED, PLANNED)  # but its launcher job failed
    launched = {j.key for j in jobs if j is not not_launched}
    summary = outcomes.summarize([*jobs, done], launched, {raised.key}, gpus=False)
    assert summary.counts == {
        "completed": 1,
        "paused": 1,
        "diverged": 1,
        "failed": 1,
        "skipped": 1,
        "lost": 3,  # killed, silent (no record) and raised
    }
    assert (
        summary.line == "sweep ended: 8 runs: 1 completed, 1 paused, 1 diverged, 1 failed, 1 skipped, 3 lost"
    )
    assert summary.exit_code == 1
    assert outcomes.summarize([done, paused, diverged, failed], launched, set(), gpus=False).exit_code == 0
