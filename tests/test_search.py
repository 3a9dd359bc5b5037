"""Successive halving over a learning-rate grid (qvtune.search and the sweeper's
hydra.sweeper.search=halving): the arithmetic by hand, then tiny-bert searches end to end."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from qvtune.collect import heatmap
from qvtune.collect.records import load
from qvtune.config.validate import validate
from qvtune.status import Status
from qvtune.store.identity import run_key
from qvtune.store.record import RunRecord
from qvtune.store.store import RunState
from qvtune.sweep.search.cells import (
    canonical,
    cell_of,
    full_samples,
    grid_name,
    group_of,
    labels,
    rung_score,
    seed_mean,
)
from qvtune.sweep.search.halving import cost_fraction, promote, ranked, rungs, worst_case
from qvtune.sweep.search.halving import validate as validate_halving
from tests.helpers import OFFLINE_ENV, make_config, records, run_cli

# ---------------------------------------------------------------------------------------------
# the arithmetic


def test_rungs_grow_by_eta_up_to_the_full_budget() -> None:
    assert rungs(3, 1 / 9) == pytest.approx([1 / 9, 1 / 3, 1.0])
    assert rungs(3, 0.111) == pytest.approx([0.111, 0.333, 1.0])  # 0.999 is the full budget
    assert rungs(2, 0.25) == [0.25, 0.5, 1.0]
    assert rungs(3, 1.0) == [1.0]
    assert rungs(4, 0.5) == [0.5, 1.0]


def test_validate_names_each_bad_option() -> None:
    assert validate_halving(3, 0.1) == []
    assert [e.split("=")[0] for e in validate_halving(1, 0)] == [
        "hydra.sweeper.halving.eta",
        "hydra.sweeper.halving.min_fraction",
    ]
    assert validate_halving(math.nan, 1.5) and validate_halving(3, math.inf)


A, B, C, D = (("lr=1",), ("lr=2",), ("lr=3",), ("lr=4",))


def test_promote_keeps_the_best_ceil_n_over_eta() -> None:
    scores = {A: 0.5, B: 0.9, C: 0.7, D: 0.6}
    assert promote([A, B, C, D], scores, 3) == [B, C]  # ceil(4 / 3) = 2
    assert promote([A, B, C, D], scores, 4) == [B]
    assert promote([A, B, C, D], scores, 1.5) == [B, C, D]


def test_promote_breaks_ties_by_the_sweep_order_and_skips_cells_without_a_score() -> None:
    assert promote([A, B, C], {A: 0.5, B: 0.8, C: 0.8}, 2) == [B, C]
    assert promote([C, B, A], {A: 0.5, B: 0.8, C: 0.8}, 3) == [C]
    # a diverged cell has no score: it is not promoted even when fewer cells than ceil(n / eta) remain
    assert promote([A, B, C], {A: None, B: None, C: 0.1}, 1.5) == [C]
    assert promote([A, B], {A: None, B: None}, 2) == []


def test_equal_scores_go_to_the_lower_dev_loss_first() -> None:
    # at a small budget every cell may predict the majority class: accuracy ties, the dev loss does not
    scores = {A: 0.68, B: 0.68, C: 0.68, D: 0.5}
    losses = {A: 0.66, B: 0.62, C: None, D: 0.1}
    assert ranked([A, B, C, D], scores, losses) == [B, A, C, D]
    assert promote([A, B, C, D], scores, 2, losses) == [B, A]
    assert promote([A, B, C, D], scores, 4, {A: 0.66, B: 0.66}) == [A]  # then the sweep order


def test_seed_mean_needs_every_seed() -> None:
    assert seed_mean([0.5, 0.7]) == pytest.approx(0.6)
    assert seed_mean([0.5, None]) is None and seed_mean([]) is None


def test_cells_and_groups_leave_out_seeds_and_learning_rates() -> None:
    job = ["task=rte", "lr=1e-4", "lr_v=4e-4", "seed=2", "+model.arch.x=1"]
    assert cell_of(job) == ("task=rte", "lr=1e-4", "lr_v=4e-4", "+model.arch.x=1")
    assert group_of(cell_of(job)) == ("task=rte", "+model.arch.x=1")
    groups = [("task=rte", "a=1"), ("task=mnli", "a=1")]
    assert labels(groups) == {groups[0]: "task=rte", groups[1]: "task=mnli"}
    assert labels([("a=1",)]) == {("a=1",): "all"}


def test_a_grid_has_one_name_however_its_overrides_are_ordered_spelled_or_stored() -> None:
    cells = [
        ("task=rte", "lr=1e-4", "lam=3", "results_dir=/runs/results"),
        ("task=rte", "lr=2e-4", "lam=3", "results_dir=/runs/results"),
    ]
    # the same grid: cells and parameters in another order, numbers spelled otherwise, the store
    # given relatively and the cache elsewhere
    same = [
        ("lam=3.0", "lr=0.0002", "task=rte", "results_dir=../results", "cache_dir=/tmp/c"),
        ("task=rte", "lam=3", "lr=0.0001", "results_dir=../results", "cache_dir=/tmp/c"),
    ]
    assert canonical(same[1]) == canonical(cells[0]) == ("lam=3.0", "lr=0.0001", "task=rte")
    assert grid_name(cells, ["0", "1"]) == grid_name(same, ["1", "0"])
    assert grid_name(cells, ["0", "1"]) != grid_name(cells, ["0"])
    assert grid_name(cells, ["0"]) != grid_name([("task=rte", "lr=1e-4", "lam=3")], ["0"])
    assert grid_name(cells, ["0"]) != grid_name([(*c, "epochs=2") for c in cells], ["0"])


def record(status: Status, steps: int, planned: int, history: list[tuple[int, float]]) -> RunRecord:
    return RunRecord(
        status=status,
        steps=steps,
        planned_steps=planned,
        samples=16 * steps,
        history=[{"step": s, "epoch": 0, "metrics": {"accuracy": v}} for s, v in history],
    )


def test_rung_score_is_the_last_evaluation_at_or_before_the_rung() -> None:
    paused = record(Status.PAUSED, 11, 32, [(11, 0.6)])
    assert rung_score(paused, 1 / 3, "accuracy") == 0.6  # ceil(32 / 3) = 11
    assert rung_score(paused, 1.0, "accuracy") is None  # has not reached it
    done = record(Status.COMPLETED, 32, 32, [(11, 0.6), (16, 0.7), (32, 0.8)])
    assert [rung_score(done, f, "accuracy") for f in (1 / 3, 0.5, 1.0)] == [0.6, 0.7, 0.8]
    assert rung_score(None, 1 / 3, "accuracy") is None
    assert rung_score(record(Status.FAILED, 0, 32, []), 1 / 3, "accuracy") is None


def test_a_paused_run_needs_a_launch_only_past_the_step_it_reached() -> None:
    paused = RunState(Status.PAUSED, record(Status.PAUSED, 11, 32, [(11, 0.6)]))
    assert paused.reached(1 / 3) and paused.reached(0.3) and not paused.finished
    assert not paused.reached(0.5) and not paused.reached(None)  # None: the whole run
    assert RunState(Status.COMPLETED, record(Status.COMPLETED, 32, 32, [])).reached(0.5)
    assert not RunState(Status.INTERRUPTED, record(Status.RUNNING, 20, 32, [])).reached(0.5)
    assert not RunState(Status.PENDING, None).reached(0.5)


@pytest.mark.parametrize("until", ["0", "1.5", "-0.5", "nan"])
def test_until_outside_0_1_is_one_error_line(until: str) -> None:
    errors = validate(make_config(f"until={until}"))
    assert len(errors) == 1 and errors[0].startswith(f"until={float(until)}: expected a fraction")


def test_until_is_not_in_the_run_key() -> None:
    assert run_key(make_config("until=0.25"), "fp32") == run_key(make_config(), "fp32")


def test_a_run_diverged_by_the_rung_has_no_score_there() -> None:
    late = record(Status.DIVERGED, 20, 32, [(11, 0.6), (20, 0.5)])
    assert rung_score(late, 1 / 3, "accuracy") == 0.6  # it diverged after the first rung
    assert rung_score(late, 1.0, "accuracy") is None
    assert rung_score(record(Status.DIVERGED, 11, 32, [(11, 0.5)]), 1 / 3, "accuracy") is None


def test_worst_case_cost_counts_each_cell_at_its_last_rung() -> None:
    costs = worst_case(16, 3, [1 / 9, 1 / 3, 1.0])
    assert [c.cells for c in costs] == [16, 6, 2]
    # 16 x 1/9 + 6 x (1/3 - 1/9) + 2 x (1 - 1/3) = 40/9 cell budgets of 16
    assert cost_fraction(costs, 16) == pytest.approx(40 / 9 / 16)
    assert cost_fraction(worst_case(5, 3, [1.0]), 5) == 1.0
    assert full_samples(record(Status.PAUSED, 11, 33, [])) == pytest.approx(16 * 33)


# ---------------------------------------------------------------------------------------------
# tiny-bert searches: a 3 x 3 grid whose lr=100 row diverges in the first rung, 2 seeds, eta 3,
# rungs at 0.34 and 1 (steps 11 and 32 of 32: 2 epochs of 16 batches)

GRID = ["lr=1e-2,3e-2,100", "lr_v=3e-2,1e-1,3e-1", "seed=0,1"]
BASE = [
    "model=tiny-bert",
    "task=synthetic",
    "targets=qv",
    "epochs=2",
    "batch_size=16",
    "eval_every=8",
    "task.synthetic.train_size=256",
    "task.synthetic.eval_size=64",
    "threads=1",
    "wandb.mode=disabled",
]
SEARCH = [
    "hydra.sweeper.search=halving",
    "hydra.sweeper.halving.eta=3",
    "hydra.sweeper.halving.min_fraction=0.34",
]
RUNG_STEP, FULL = 11, 32


def search_args(tmp_path: Path, results: str, *extra: str) -> list[str]:
    return [
        "-m",
        *BASE,
        *GRID,
        *SEARCH,
        f"results_dir={tmp_path / results}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweeps' / results}",
        *extra,
    ]


def answer(results: Path) -> dict[str, Any]:
    found = list((results / "searches").glob("*.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def cell_means(recs: list[dict[str, Any]], step: int) -> dict[tuple[float, float], Optional[float]]:
    """(eta_QK, eta_V) -> seed-mean accuracy at the last evaluation at or before `step`, from the records."""
    out: dict[tuple[float, float], list[Optional[float]]] = {}
    for r in recs:
        scores = [h["metrics"]["accuracy"] for h in r["history"] if h["step"] <= step]
        ok = r["status"] != "diverged" and r["steps"] >= step and scores
        out.setdefault((r["rates"]["qk"], r["rates"]["v"]), []).append(scores[-1] if ok else None)
    return {k: None if None in v else sum(v) / len(v) for k, v in out.items()}


def check_search(results: Path) -> dict[str, Any]:
    """The records and the answer of a finished search agree with what halving does by hand."""
    recs = records(results)
    assert len(recs) == 18
    rung1 = cell_means(recs, RUNG_STEP)
    diverged = {(r["rates"]["qk"], r["rates"]["v"]) for r in recs if r["status"] == "diverged"}
    assert {qk for qk, _ in diverged} == {100}
    assert all(r["steps"] <= RUNG_STEP for r in recs if r["status"] == "diverged")
    finished = {(r["rates"]["qk"], r["rates"]["v"]) for r in recs if r["status"] == "completed"}
    assert not finished & diverged and len(finished) == 3
    paused = [r for r in recs if r["status"] == "paused"]
    assert len(paused) == 6 and all(r["steps"] == RUNG_STEP and r["planned_steps"] == FULL for r in paused)
    full = cell_means(recs, FULL)
    ans = answer(results)
    (group,) = ans["groups"]
    assert [len(r["cells"]) for r in group["rungs"]] == [9, 3]
    assert {(c["lr"], c["lr_v"]) for c in group["rungs"][0]["cells"] if c["promoted"]} == finished
    left = [s for c, s in rung1.items() if c not in finished and s is not None]
    assert min(rung1[c] for c in finished) >= max(left)  # the best three at the rung
    best = max(full[c] for c in finished)
    assert group["pick"]["score"] == pytest.approx(best)
    assert full[(group["pick"]["lr"], group["pick"]["lr_v"])] == pytest.approx(best)
    assert group["pick"]["lam"] == pytest.approx(group["pick"]["lr_v"] / group["pick"]["lr"])
    assert ans["samples"] == sum(r["samples"] for r in recs)
    assert ans["grid_samples"] == 18 * 2 * 256 and ans["samples"] < ans["grid_samples"]
    return ans


@pytest.mark.slow  # 30 s; tests/test_sweep_search.py drives halving rung by rung in make test
def test_search_picks_from_the_promoted_cells_and_a_rung_is_a_prefix_of_the_run(tmp_path: Path) -> None:
    proc = run_cli(*search_args(tmp_path, "results"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ans = check_search(tmp_path / "results")
    assert "pick: eta_QK=" in proc.stdout and "of the grid's" in proc.stdout
    # the collector's heatmap: the promoted cells at the full budget, the others at their rung
    (found,) = heatmap.find(load(tmp_path / "results"))
    cells = heatmap.grid_frame([found]).set_index(["lr", "lr_v"])
    for c in ans["groups"][0]["rungs"][0]["cells"]:
        row = cells.loc[(c["lr"], c["lr_v"])]
        if c["promoted"]:
            assert row["budget"] == 1 and row["n"] == 2 and math.isnan(row["partial"])
        elif c["score"] is not None:
            assert row["budget"] == pytest.approx(RUNG_STEP / FULL) and row["n"] == 0
            assert row["partial"] == pytest.approx(c["score"]) and row["running"] == 2
        else:
            assert row["diverged"] == 2
    assert "@0.34" in " ".join(t.get_text() for t in heatmap.draw(found).axes[0].texts)
    # each promoted run was paused at the rung and continued: the record of the same runs done in one go
    cells = [c for c in ans["groups"][0]["rungs"][0]["cells"] if c["promoted"]]
    grids = ",".join("{lr: " + repr(c["lr"]) + ", lr_v: " + repr(c["lr_v"]) + "}" for c in cells)
    one_go = run_cli(
        "-m",
        *BASE,
        "seed=0,1",
        f"results_dir={tmp_path / 'one-go'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweeper.grids=[{grids}]",
        f"hydra.sweep.dir={tmp_path / 'sweeps' / 'one-go'}",
        cwd=tmp_path,
    )
    assert one_go.returncode == 0, one_go.stderr[-3000:]
    searched = {r["run_key"]: r for r in records(tmp_path / "results") if r["status"] == "completed"}
    direct = {r["run_key"]: r for r in records(tmp_path / "one-go")}
    assert set(searched) == set(direct) and len(direct) == 6
    for key, r in direct.items():
        s = searched[key]
        assert s["steps"] == r["steps"] == FULL and s["samples"] == r["samples"]
        assert s["final"] == pytest.approx(r["final"], rel=1e-6, abs=1e-6)
        assert [x[0] for x in s["train_loss"]] == [x[0] for x in r["train_loss"]]
        losses = [x[1] for x in r["train_loss"]]
        assert [x[1] for x in s["train_loss"]] == pytest.approx(losses, rel=1e-6, abs=1e-6)
        rates = [v for x in r["lr_trace"] for v in x]
        assert [v for x in s["lr_trace"] for v in x] == pytest.approx(rates, rel=1e-12)
        # the same evaluations, and one more where the rung paused the run (step 11)
        kept = [h for h in s["history"] if h["step"] != RUNG_STEP]
        assert [h["step"] for h in kept] == [h["step"] for h in r["history"]] == [8, 16, 24, 32]
        for a, b in zip(kept, r["history"]):
            assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_a_relaunched_search_repeats_nothing(tmp_path: Path) -> None:
    env = {**os.environ, **OFFLINE_ENV}
    out = tmp_path / "out.txt"
    with open(out, "w") as stdout, open(tmp_path / "err.txt", "w") as stderr:
        args = search_args(tmp_path, "results", "checkpoint_minutes=0")
        proc = subprocess.Popen(
            [sys.executable, "-m", "qvtune.run", *args], cwd=tmp_path, env=env, stdout=stdout, stderr=stderr
        )
    deadline = time.monotonic() + 300
    while "search rung 2/2" not in out.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # stopped after its first rung, maybe inside a second-rung run
    proc.wait(timeout=30)
    results = tmp_path / "results"
    first = {r["run_key"]: r for r in records(results)}
    assert len(first) == 18 and not (results / "searches").exists()

    again = run_cli(*search_args(tmp_path, "results", "checkpoint_minutes=0"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rung 1/2 (0.34 of the budget): 18 runs, 18 done already, launching 0" in again.stdout
    ans = check_search(results)
    now = {r["run_key"]: r for r in records(results)}
    for key, r in first.items():
        if r["status"] in ("paused", "diverged") and now[key]["status"] == r["status"]:
            assert now[key] == r  # a run that was not promoted is not touched
        else:  # promoted: it went on from its rung-1 checkpoint, and trained no step twice
            assert now[key]["status"] == "completed" and now[key]["samples"] == FULL * 16
    # every run's samples once: 12 first-rung runs (6 paused, 6 diverged at most at the rung) and 6 full ones
    assert ans["samples"] == sum(r["samples"] for r in now.values())
    assert sum(r["samples"] for r in now.values() if r["status"] == "completed") == 6 * FULL * 16


@pytest.mark.slow
def test_search_through_the_gpus_launcher(tmp_path: Path) -> None:
    proc = run_cli(
        *search_args(
            tmp_path, "results", "hydra/launcher=gpus", "hydra.launcher.devices=[]", "hydra.launcher.slots=2"
        ),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_search(tmp_path / "results")


def test_plan_prints_the_worst_case_and_runs_nothing(tmp_path: Path) -> None:
    proc = run_cli(*search_args(tmp_path, "results", "plan=true"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "search all: 9 cells x 2 seeds to 0.34, 3 cells x 2 seeds to 1" in proc.stdout
    # 9 x 0.34 + 3 x 0.66 of 9 cell budgets, of 18 x 512 samples
    share = (9 * 0.34 + 3 * 0.66) / 9
    expected = f"search worst case: {share * 18 * 512:.0f} training samples, {share:.1%} of the grid's 9216"
    assert expected in proc.stdout
    assert not (tmp_path / "results").exists()


def test_a_bad_search_option_stops_the_sweep(tmp_path: Path) -> None:
    proc = run_cli(*search_args(tmp_path, "results", "hydra.sweeper.halving.eta=1"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "hydra.sweeper.halving.eta=1.0: expected a reduction factor > 1" in proc.stderr
    proc = run_cli(*search_args(tmp_path, "results", "until=0.5"), cwd=tmp_path)
    assert proc.returncode == 2 and "until: set by the search" in proc.stderr
