"""Packs through the entry point and the sweeper: a packed sweep writes the records its runs write
alone, under the same keys; a pack stopped by SIGTERM mid-run resumes every member, and a member finished
elsewhere in the meantime is not trained again. Dropout is off, so packed and lone runs agree."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.helpers import records, run_cli
from tests.test_resume import PER_EPOCH, TOTAL, start, tail

REL = 1e-5
BASE = [
    "model=tiny-bert",
    "+model.arch.hidden_dropout_prob=0",
    "attention_dropout=0",
    "task=synthetic",
    "task.synthetic.eval_size=64",
    "batch_size=32",
    "threads=1",
    "wandb.mode=disabled",
]


def store(root: Path, name: str) -> list[str]:
    return [
        f"results_dir={root / name}",
        f"cache_dir={root / 'cache'}",
        f"hydra.sweep.dir={root / ('sweep-' + name)}",
    ]


def by_key(results: Path) -> dict[str, dict]:
    return {r["run_key"]: r for r in records(results)}


def assert_same_record(got: dict, want: dict) -> None:
    assert got["status"] == want["status"] and got["steps"] == want["steps"]
    assert got["final"] == pytest.approx(want["final"], rel=REL)
    assert [row[0] for row in got["train_loss"]] == [row[0] for row in want["train_loss"]]
    for g, w in zip(got["train_loss"], want["train_loss"]):
        assert g[1] == pytest.approx(w[1], rel=REL), f"loss at step {g[0]}"
    for g, w in zip(got["update_norms"], want["update_norms"]):
        assert g == pytest.approx(w, rel=REL, abs=1e-9), f"update norms at step {g[0]}"


def test_a_packed_sweep_writes_the_records_of_its_runs_alone(tmp_path: Path) -> None:
    grid = [
        *BASE,
        "task.synthetic.train_size=256",
        "epochs=1",
        "lr=1e-2,3e-2",
        "lr_v=3e-2,1e-1",
        "targets=qv",
    ]
    plan = run_cli("-m", *grid, *store(tmp_path, "packed"), "hydra.sweeper.pack=3", "plan=true", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "4 runs to launch as 2 jobs: 2 packs, 0 alone" in plan.stdout
    packed = run_cli("-m", *grid, *store(tmp_path, "packed"), "hydra.sweeper.pack=3", cwd=tmp_path)
    assert packed.returncode == 0, packed.stderr[-3000:]
    assert "training 2 runs as one pack" in packed.stderr + packed.stdout
    alone = run_cli("-m", *grid, *store(tmp_path, "alone"), cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    got, want = by_key(tmp_path / "packed"), by_key(tmp_path / "alone")
    assert sorted(got) == sorted(want) and len(got) == 4  # keyed as if alone
    for key, record in got.items():
        assert len(record["packed_with"]) == 1 and want[key]["packed_with"] is None
        assert_same_record(record, want[key])
    again = run_cli("-m", *grid, *store(tmp_path, "packed"), "hydra.sweeper.pack=3", cwd=tmp_path)
    assert again.returncode == 0 and "skipping 4 completed" in again.stderr + again.stdout


@pytest.mark.slow  # 13 s; each member's tracker is its run's (tests/test_track_trackers.py)
def test_each_member_of_a_pack_logs_to_its_own_wandb_run(tmp_path: Path) -> None:
    args = [*BASE, "task.synthetic.train_size=64", "epochs=1", "wandb.mode=offline", *store(tmp_path, "r")]
    proc = run_cli(*args, "pack=[{lr:0.01},{lr:0.02},{lr:0.03}]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    keys = sorted(by_key(tmp_path / "r"))
    assert len(keys) == 3
    for key in keys:
        (run,) = (tmp_path / "r" / key / "wandb").glob(f"offline-run-*-{key}")
        assert list(run.glob(f"run-{key}.wandb")), f"no W&B log of run {key}"


def test_full_fine_tunes_stay_unpacked(tmp_path: Path) -> None:
    grid = [*BASE, "method=full", "lr=1e-3,2e-3", "epochs=1", "task.synthetic.train_size=64"]
    plan = run_cli("-m", *grid, *store(tmp_path, "r"), "hydra.sweeper.pack=4", "plan=true", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "2 runs to launch as 2 jobs: 0 packs, 2 alone" in plan.stdout


KILLED = [*BASE, "task.synthetic.train_size=1280", "epochs=2", "eval_every=20", "checkpoint_minutes=0"]
MEMBERS = "pack=[{lr:0.003,lam:2},{lr:0.01,lam:4},{lr:0.001,targets:v}]"
ALONE = [["lr=0.003", "lam=2"], ["lr=0.01", "lam=4"], ["lr=0.001", "targets=v"]]


@pytest.mark.slow  # 70 s; tests/test_resume.py checks SIGTERM's exact resume of a lone run in make test
def test_a_terminated_pack_resumes_every_member_and_skips_one_finished_elsewhere(tmp_path: Path) -> None:
    import os
    import time

    import torch

    results = tmp_path / "results"
    args = [*KILLED, *store(tmp_path, "results")]
    proc = start([*args, MEMBERS], tmp_path)
    deadline = time.monotonic() + 180
    while True:  # kill once every member has a mid-epoch checkpoint (they are saved together)
        assert proc.poll() is None, f"the pack ended before it was killed:\n{tail(tmp_path / 'err.txt')}"
        assert time.monotonic() < deadline, "no mid-epoch checkpoints in time"
        found = sorted(results.glob("*/checkpoint.pt"))
        if len(found) == 3:
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                steps = {int(torch.load(f, weights_only=False)["state"]["step"]) for f in found}
            except FileNotFoundError:
                steps = set()
            (step,) = steps if len(steps) == 1 else (0,)
            if step >= 22 and step % PER_EPOCH and step < TOTAL - 2:
                os.kill(proc.pid, signal.SIGTERM)  # scancel: every member stops at the step's end
                os.kill(proc.pid, signal.SIGCONT)
                proc.wait(timeout=60)
                break
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    assert proc.returncode == 128 + signal.SIGTERM, tail(tmp_path / "err.txt")
    stopped = records(results)
    assert {r["status"] for r in stopped} == {"interrupted"} and {r["signal"] for r in stopped} == {"SIGTERM"}
    assert len({r["steps"] for r in stopped}) == 1  # checkpointed together, at one step boundary
    # the first member finishes alone in the meantime, from its pack checkpoint
    first = run_cli(*args, *ALONE[0], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    relaunch = run_cli(*args, MEMBERS, cwd=tmp_path)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    log = relaunch.stderr + relaunch.stdout
    assert "is already completed" in log and "training 2 runs as one pack" in log
    assert log.count("(resuming from its checkpoint at step") == 2
    for overrides in ALONE:
        ref = run_cli(*[*KILLED, *store(tmp_path, "reference")], *overrides, cwd=tmp_path)
        assert ref.returncode == 0, ref.stderr[-3000:]
    got, want = by_key(results), by_key(tmp_path / "reference")
    assert sorted(got) == sorted(want) and len(got) == 3
    for key in got:
        assert_same_record(got[key], want[key])


@pytest.mark.slow  # 30 s; tests/test_pack.py checks a diverging member in process
def test_a_member_that_diverges_has_its_record_written_then_and_a_kill_after_it_loses_nothing(
    tmp_path: Path,
) -> None:
    import json
    import os
    import time

    results = tmp_path / "results"
    args = [*KILLED, *store(tmp_path, "results")]
    pack = "pack=[{lr:0.003},{lr:100},{lr:0.001,lam:4}]"  # the second diverges long before step 80
    proc = start([*args, pack], tmp_path)
    deadline = time.monotonic() + 180
    while True:  # kill the pack once the diverged member's record says so
        assert proc.poll() is None, (
            f"the pack ended before its diverged member was recorded:\n{tail(tmp_path / 'err.txt')}"
        )
        assert time.monotonic() < deadline, "no diverged record in time"
        try:
            statuses = [json.loads(p.read_text())["status"] for p in results.glob("*/result.json")]
        except (json.JSONDecodeError, FileNotFoundError):
            statuses = []
        if "diverged" in statuses:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            break
        time.sleep(0.05)
    assert sorted(r["status"] for r in records(results)) == ["diverged", "running", "running"]
    assert len(list(results.glob("*/checkpoint.pt"))) == 2  # the diverged member keeps none
    relaunch = run_cli(*args, pack, cwd=tmp_path)
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    log = relaunch.stderr + relaunch.stdout
    assert "is already diverged" in log and "training 2 runs as one pack" in log
    assert log.count("(resuming from its checkpoint at step") == 2
    got = list(by_key(results).values())
    assert sorted(r["status"] for r in got) == ["completed", "completed", "diverged"]
    assert [r["steps"] for r in got if r["status"] == "completed"] == [TOTAL, TOTAL]
    # the diverged record is its lone run's (the resumed members' are checked in the test above)
    ref = run_cli(*[*KILLED, *store(tmp_path, "reference")], "lr=100", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ((key, want),) = by_key(tmp_path / "reference").items()
    diverged = by_key(results)[key]
    # at lr = 100 rounding grows fast: the same run diverges at the same step
    assert diverged["status"] == want["status"] == "diverged" and diverged["steps"] == want["steps"]


@pytest.mark.slow  # 12 s; packing and halving each have their own tests
def test_a_halving_search_packs_each_rung(tmp_path: Path) -> None:
    """2 x 2 cells x 2 seeds in packs of 4: rung 1 is two packs (one per seed), the best 2 cells go
    on from their pack checkpoints as two packs of 2."""
    grid = [*BASE, "task.synthetic.train_size=256", "epochs=2", "batch_size=16", "eval_every=8"]
    search = [
        "hydra.sweeper.search=halving",
        "hydra.sweeper.halving.min_fraction=0.34",
        "hydra.sweeper.pack=4",
    ]
    proc = run_cli(
        "-m",
        *grid,
        "lr=1e-2,3e-2",
        "lr_v=3e-2,1e-1",
        "seed=0,1",
        *search,
        *store(tmp_path, "r"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr + proc.stdout
    assert log.count("training 4 runs as one pack") == 2 and log.count("training 2 runs as one pack") == 2
    recs = list(by_key(tmp_path / "r").values())
    assert sorted(r["status"] for r in recs) == ["completed"] * 4 + ["paused"] * 4
    assert "pick: eta_QK=" in log
