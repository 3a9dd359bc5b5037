"""The continuous search (qvtune.optuna_search and hydra.sweeper.search=optuna): the study's
bookkeeping on its own, then tiny-bert searches end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qvtune.sweep.search import tpe
from tests.helpers import OFFLINE_ENV, records, run_cli

# ---------------------------------------------------------------------------------------------
# the study


def test_validate_names_each_bad_option() -> None:
    errors = tpe.validate(0, 0, 0, -1, {"lr": [1e-3, 1e-4], "lam": [0, 8]})
    bounds = "expected [low, high] with 0 < low < high, or null for the grid's range"
    assert errors == [
        "hydra.sweeper.optuna.trials=0: expected the number of trials, an integer >= 1",
        "hydra.sweeper.optuna.batch=0: expected the trials per launch, an integer >= 1",
        "hydra.sweeper.optuna.seeds=0: expected how many of the sweep's seeds a trial runs (>= 1), "
        "or null for all",
        "hydra.sweeper.optuna.startup=-1: expected the random trials before TPE (>= 0), "
        "or null for one batch",
        f"hydra.sweeper.optuna.lr=[0.001,0.0001]: {bounds}",
        f"hydra.sweeper.optuna.lam=[0,8]: {bounds}",
    ]
    assert tpe.validate(12, 4, None, None, {"lr": None, "lam": [1, 16]}) == []


def test_a_batch_is_asked_within_the_ranges_and_rounded(tmp_path: Path) -> None:
    study = tpe.open_study(tmp_path / "s.journal", "all", sampler_seed=0, startup=2)
    batch = tpe.next_batch(study, trials=5, batch=3, lr=(1e-4, 1e-3), lam=(1, 16))
    assert [p.number for p in batch] == [0, 1, 2]
    for p in batch:
        assert 1e-4 <= p.lr <= 1e-3 and 1 <= p.lam <= 16
        assert p.lr == float(f"{p.lr:.3g}") and p.lam == float(f"{p.lam:.3g}")


def test_a_reopened_study_gives_back_the_trials_never_told_then_asks_up_to_trials(tmp_path: Path) -> None:
    path = tmp_path / "s.journal"
    study = tpe.open_study(path, "all", sampler_seed=0, startup=2)
    first = tpe.next_batch(study, trials=5, batch=3, lr=(1e-4, 1e-3), lam=(1, 16))
    tpe.tell(study, first[0].number, 0.7)  # the launch was interrupted after one trial was told
    again = tpe.open_study(path, "all", sampler_seed=0, startup=2)
    assert tpe.next_batch(again, trials=5, batch=3, lr=(1e-4, 1e-3), lam=(1, 16)) == first[1:]
    tpe.tell(again, first[1].number, 0.8)
    tpe.tell(again, first[2].number, None)  # diverged: failed
    rest = tpe.next_batch(again, trials=5, batch=3, lr=(1e-4, 1e-3), lam=(1, 16))
    assert [p.number for p in rest] == [3, 4]  # 5 trials in all
    for p in rest:
        tpe.tell(again, p.number, 0.1)
    assert tpe.next_batch(again, trials=5, batch=3, lr=(1e-4, 1e-3), lam=(1, 16)) == []
    assert [v for _, v in tpe.told(again)] == [0.7, 0.8, None, 0.1, 0.1]
    assert tpe.best(again) == first[1]


def test_best_breaks_ties_by_the_earlier_trial_and_needs_a_value(tmp_path: Path) -> None:
    study = tpe.open_study(tmp_path / "s.journal", "all", sampler_seed=0, startup=1)
    points = tpe.next_batch(study, trials=3, batch=3, lr=(1e-4, 1e-3), lam=(1, 16))
    tpe.tell(study, points[0].number, None)
    assert tpe.best(study) is None
    tpe.tell(study, points[1].number, 0.5)
    tpe.tell(study, points[2].number, 0.5)
    assert tpe.best(study) == points[1]


# ---------------------------------------------------------------------------------------------
# tiny-bert searches: eta_QK in [1e-2, 100] (the top of it diverges), lambda in [1, 10], 2 seeds;
# 5 trials on seed 0 in batches of 2, then the best trial on seed 1

BASE = [
    "model=tiny-bert",
    "task=synthetic",
    "targets=qv",
    "epochs=2",
    "batch_size=16",
    "eval_every=16",
    "task.synthetic.train_size=256",
    "task.synthetic.eval_size=64",
    "threads=1",
    "wandb.mode=disabled",
]
SEARCH = [
    "lr=1e-2,100",
    "lam=1,10",
    "seed=0,1",
    "hydra.sweeper.search=optuna",
    "hydra.sweeper.optuna.trials=5",
    "hydra.sweeper.optuna.batch=2",
    "hydra.sweeper.optuna.seeds=1",
]


def search_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "-m",
        *BASE,
        *SEARCH,
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweeps'}",
        *extra,
    ]


def answer(results: Path) -> dict[str, Any]:
    (found,) = (results / "searches").glob("*-optuna.json")
    return json.loads(found.read_text())


def check_search(results: Path) -> dict[str, Any]:
    """The answer of a finished search agrees with its records: every trial a run on seed 0 within the
    ranges, scored by its final accuracy or failed where it diverged, the pick the best trial on both
    seeds, the samples those of the runs."""
    recs = records(results)
    by_rates: dict[tuple[float, float], dict[int, dict[str, Any]]] = {}
    for r in recs:
        by_rates.setdefault((r["config"]["lr"], r["config"]["lam"]), {})[r["config"]["seed"]] = r
    ans = answer(results)
    (group,) = ans["groups"]
    assert group["lr_range"] == [1e-2, 100] and group["lam_range"] == [1, 10]
    trials = group["trials"]
    assert [t["trial"] for t in trials] == list(range(5))
    for t in trials:
        assert 1e-2 <= t["lr"] <= 100 and 1 <= t["lam"] <= 10
        run = by_rates[(t["lr"], t["lam"])][0]
        assert run["rates"]["qk"] == t["lr"] and run["rates"]["v"] == pytest.approx(t["lr"] * t["lam"])
        if run["status"] == "diverged":
            assert t["score"] is None
        else:
            assert run["status"] == "completed" and t["score"] == run["final"]["accuracy"]
    assert any(t["score"] is None for t in trials), "no trial diverged: the test lost its diverging range"
    best = max((t for t in trials if t["score"] is not None), key=lambda t: (t["score"], -t["trial"]))
    pick = group["pick"]
    assert (pick["trial"], pick["lr"], pick["lam"]) == (best["trial"], best["lr"], best["lam"])
    seeds = by_rates[(pick["lr"], pick["lam"])]
    assert sorted(seeds) == [0, 1] and all(r["status"] == "completed" for r in seeds.values())
    assert pick["score"] == pytest.approx((seeds[0]["final"]["accuracy"] + seeds[1]["final"]["accuracy"]) / 2)
    assert len(recs) == len(by_rates) + 1 <= 6  # each trial once (two may round to one point), the pick twice
    assert ans["samples"] == sum(r["samples"] for r in recs)
    assert ans["grid_samples"] == 4 * 2 * 2 * 256  # 2 x 2 cells x 2 seeds x 2 epochs
    return ans


def test_search_tells_each_trial_its_runs_score_and_confirms_the_best_on_every_seed(tmp_path: Path) -> None:
    proc = run_cli(*search_args(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_search(tmp_path / "results")
    assert "trial 4: eta_QK=" in proc.stdout and "pick: eta_QK=" in proc.stdout
    # a relaunch finds the study finished and every run in the store: it launches nothing
    first = {r["run_key"]: r for r in records(tmp_path / "results")}
    again = run_cli(*search_args(tmp_path), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "launching 0" in again.stdout and "Launching" not in again.stdout + again.stderr
    assert {r["run_key"]: r for r in records(tmp_path / "results")} == first


@pytest.mark.slow  # 14 s; tests/test_search.py checks the canonical grid name of every spelling
def test_a_search_relaunched_in_another_spelling_finds_its_study_and_answer(tmp_path: Path) -> None:
    """One search launched twice: its overrides in another order, its rates spelled otherwise, its
    store given relatively from another folder. The second launch finds the first's study finished
    and its runs in the store: one journal, one answer, nothing launched again."""
    tiny = [a for a in BASE if not a.startswith(("epochs=", "task.synthetic.train_size="))]
    search = ["hydra.sweeper.search=optuna", "hydra.sweeper.optuna.trials=2", "hydra.sweeper.optuna.batch=2"]
    args = [*tiny, "epochs=1", "task.synthetic.train_size=64", "lr=1e-2,1e-1", "lam=1,4", "seed=0", *search]
    first = run_cli(
        "-m",
        *args,
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweeps'}",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    respelled = [{"lr=1e-2,1e-1": "lr=0.1,0.01", "lam=1,4": "lam=4.0,1"}.get(a, a) for a in reversed(args)]
    again = run_cli(
        "-m",
        "results_dir=../results",
        *respelled,
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweeps-again'}",
        cwd=elsewhere,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "launching 0" in again.stdout and "Launching" not in again.stdout + again.stderr
    assert (
        "sweep ended: 2 runs: 0 completed, 0 paused, 0 diverged, 0 failed, 2 skipped, 0 lost" in again.stdout
    )
    searches = tmp_path / "results" / "searches"
    assert len(list(searches.glob("*-optuna.journal"))) == len(list(searches.glob("*-optuna.json"))) == 1
    assert not (elsewhere / "results").exists()


@pytest.mark.slow
def test_a_search_killed_mid_batch_goes_on_and_repeats_nothing(tmp_path: Path) -> None:
    env = {**os.environ, **OFFLINE_ENV}
    out = tmp_path / "out.txt"
    args = search_args(tmp_path, "checkpoint_minutes=0")
    with open(out, "w") as stdout, open(tmp_path / "err.txt", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qvtune.run", *args], cwd=tmp_path, env=env, stdout=stdout, stderr=stderr
        )
    deadline = time.monotonic() + 300
    while out.read_text().count("search: 2 runs, launching") < 2:  # the second batch has started
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    results = tmp_path / "results"
    before = {r["run_key"]: r for r in records(results) if r["status"] in ("completed", "diverged")}
    assert len(before) >= 2 and not list((results / "searches").glob("*.json"))

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    ans = check_search(results)
    now = {r["run_key"]: r for r in records(results)}
    for key, r in before.items():
        assert now[key] == r  # what finished before the kill is not trained again
    done = [r for r in now.values() if r["status"] == "completed"]
    assert all(r["samples"] == 2 * 256 for r in done)  # resumed runs trained no step twice
    assert len(ans["groups"][0]["trials"]) == 5


def test_plan_prints_the_worst_case_and_runs_nothing(tmp_path: Path) -> None:
    proc = run_cli(*search_args(tmp_path, "plan=true"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "search all: 5 trials x 1 seeds in batches of 2, then the pick on 1 more; "
        "eta_QK in [0.01, 100], lambda in [1, 10] (log scale)"
    ) in proc.stdout
    # 5 + 1 runs of 512 samples against 2 x 2 cells x 2 seeds
    assert f"search worst case: 3072 training samples, {6 / 8:.1%} of the grid's 4096" in proc.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.sweeper.optuna.lr=[1,0.1]", "hydra.sweeper.optuna.lr=[1,0.1]: expected [low, high]"),
        ("hydra.sweeper.optuna.batch=0", "hydra.sweeper.optuna.batch=0: expected the trials per launch"),
    ],
)
def test_a_bad_option_stops_the_search_with_one_line(tmp_path: Path, override: str, message: str) -> None:
    proc = run_cli(*search_args(tmp_path, override), cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_grid_with_one_rate_needs_the_range_given(tmp_path: Path) -> None:
    args = [a for a in search_args(tmp_path) if not a.startswith("lam=")]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert "hydra.sweeper.optuna.lam=null: the grid has the one value 1 to take the range from" in proc.stderr
    proc = run_cli(*args, "hydra.sweeper.optuna.lam=[1,10]", "plan=true", cwd=tmp_path)
    assert proc.returncode == 0 and "lambda in [1, 10]" in proc.stdout
