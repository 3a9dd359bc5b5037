"""A run killed mid-epoch (SIGKILL), or stopped by SIGTERM (scancel, a Slurm time limit,
preemption), and resumed from its checkpoint writes the record the same run writes when nothing
interrupts it: the same losses at every step, the same evaluations, the same final metrics.

The model trains with dropout (BERT's hidden dropout 0.1, stated in the overrides so that the test does
not rest on a default, and LoRA dropout 0.1), so the resumed steps match only if the checkpoint restores
the random number generator along with the weights, the optimizer and the schedule.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.helpers import OFFLINE_ENV, records, run_cli

TRAIN_SIZE, BATCH, EPOCHS = 1280, 32, 2
PER_EPOCH = TRAIN_SIZE // BATCH  # 40 steps an epoch, 80 in the run
TOTAL = EPOCHS * PER_EPOCH
EVAL_EVERY = 20
KILL_AFTER = 22  # kill once a periodic evaluation (step 20) is in the checkpoint
REL = 1e-6

ARGS = [
    "model=tiny-bert",
    "+model.arch.hidden_dropout_prob=0.1",
    "dropout=0.1",
    "task=synthetic",
    "targets=qv",
    "lr=3e-3",
    "lam=2",
    f"epochs={EPOCHS}",
    f"batch_size={BATCH}",
    f"task.synthetic.train_size={TRAIN_SIZE}",
    "task.synthetic.eval_size=64",
    f"eval_every={EVAL_EVERY}",
    "checkpoint_minutes=0",
    "threads=1",
    "wandb.mode=disabled",
]


def store_args(root: Path) -> list[str]:
    return [*ARGS, f"results_dir={root / 'results'}", f"cache_dir={root / 'cache'}"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """The run in the background, its output in cwd/out.txt and err.txt (a pipe could fill and block it)."""
    env = {**os.environ, **OFFLINE_ENV}
    with open(cwd / "out.txt", "w") as out, open(cwd / "err.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "qvtune.run", *args], cwd=cwd, env=env, stdout=out, stderr=err
        )


def tail(path: Path) -> str:
    return path.read_text()[-3000:] if path.exists() else ""


def checkpoint_step(results: Path) -> Optional[int]:
    """The step of the run's checkpoint, or None while there is none (it is replaced atomically)."""
    import torch

    found = list(results.glob("*/checkpoint.pt"))
    if not found:
        return None
    try:
        return int(torch.load(found[0], map_location="cpu", weights_only=False)["state"]["step"])
    except FileNotFoundError:  # deleted by a run that just finished
        return None


def interrupt_mid_epoch(
    proc: subprocess.Popen, results: Path, how: signal.Signals, timeout: float = 120
) -> int:
    """Send `how` to the run at a checkpoint past KILL_AFTER that is not at an epoch boundary and wait
    for it to end; returns the step of that checkpoint.

    The run is frozen (SIGSTOP) while its checkpoint is read, so the step read is the one a SIGKILLed
    run resumes from; a SIGTERMed run finishes the step it is in and checkpoints after it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended before it was killed:\n{tail(results.parent / 'err.txt')}"
        step = checkpoint_step(results)
        if step is not None and step >= KILL_AFTER:
            os.kill(proc.pid, signal.SIGSTOP)
            step = checkpoint_step(results)
            if step is not None and step % PER_EPOCH and step < TOTAL - 2:
                os.kill(proc.pid, how)
                os.kill(proc.pid, signal.SIGCONT)
                proc.wait(timeout=60)
                return step
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no mid-epoch checkpoint appeared in time")


def full_record(results: Path) -> dict[str, Any]:
    """The store's one record with its per-step curves, inline or in the file the record names."""
    [rec] = records(results)
    if "train_loss" not in rec and rec.get("curves_file"):
        rec = {**json.loads((results / rec["run_key"] / rec["curves_file"]).read_text()), **rec}
    return rec


def assert_pairs_close(got: list[list[float]], want: list[list[float]], what: str) -> None:
    """[[step, value, ...], ...] curves: the same steps, every value within REL."""
    assert [row[0] for row in got] == [row[0] for row in want], what
    for g, w in zip(got, want):
        assert g[1:] == pytest.approx(w[1:], rel=REL, abs=1e-12), f"{what} at step {g[0]}"


def assert_same_record(got: dict[str, Any], want: dict[str, Any], interrupted_at: int) -> None:
    """`got` (interrupted at a step, then resumed) is the uninterrupted run's record `want`."""
    assert got["run_key"] == want["run_key"]
    assert got["config"]["model"]["arch"]["hidden_dropout_prob"] == 0.1 and got["config"]["dropout"] == 0.1
    assert want["status"] == got["status"] == "completed"
    assert want["steps"] == got["steps"] == TOTAL and got["samples"] == want["samples"] == EPOCHS * TRAIN_SIZE
    assert got["tokens"] == want["tokens"]
    assert got["final"] == pytest.approx(want["final"], rel=REL)
    assert got["best"] == pytest.approx(want["best"], rel=REL)
    assert [s for s, _ in got["train_loss"]] == list(range(1, TOTAL + 1))
    assert_pairs_close(got["train_loss"], want["train_loss"], "train loss")
    assert_pairs_close(got["lr_trace"], want["lr_trace"], "learning rates")
    assert_pairs_close(got["update_norms"], want["update_norms"], "update norms")
    # the evaluations before the stop come from the checkpoint, the later ones from the resumed run
    expected_steps = sorted(
        {*range(EVAL_EVERY, TOTAL + 1, EVAL_EVERY), *range(PER_EPOCH, TOTAL + 1, PER_EPOCH)}
    )
    assert [h["step"] for h in got["history"]] == [h["step"] for h in want["history"]] == expected_steps
    assert any(h["step"] < interrupted_at for h in got["history"])
    assert any(h["step"] > interrupted_at for h in got["history"])
    for g, w in zip(got["history"], want["history"]):
        assert g["epoch"] == w["epoch"]
        assert g["metrics"] == pytest.approx(w["metrics"], rel=REL), f"evaluation at step {g['step']}"


def test_a_run_killed_or_terminated_mid_epoch_resumes_to_the_uninterrupted_record(tmp_path: Path) -> None:
    roots = {name: tmp_path / name for name in ("whole", "killed", "terminated")}
    for root in roots.values():
        root.mkdir()
    procs = {name: start(store_args(root), root) for name, root in roots.items()}  # 1 thread each
    try:
        killed_at = interrupt_mid_epoch(procs["killed"], roots["killed"] / "results", signal.SIGKILL)
        [partial] = records(roots["killed"] / "results")
        assert partial["status"] == "running"  # a killed run never looks complete

        terminated_at = interrupt_mid_epoch(
            procs["terminated"], roots["terminated"] / "results", signal.SIGTERM
        )
        assert procs["terminated"].returncode == 128 + signal.SIGTERM, tail(roots["terminated"] / "err.txt")
        [stopped] = records(roots["terminated"] / "results")
        assert stopped["status"] == "interrupted" and stopped["signal"] == "SIGTERM"
        # it finished the step it was in and checkpointed after it, at a step boundary
        step = stopped["steps"]
        assert (
            step in (terminated_at, terminated_at + 1)
            and checkpoint_step(roots["terminated"] / "results") == step
        )
        key = stopped["run_key"]
        line = f"run {key} stopped by SIGTERM at step {step}: checkpoint saved, re-launch to resume"
        said = (roots["terminated"] / "out.txt").read_text() + (roots["terminated"] / "err.txt").read_text()
        assert (
            line in said
            and line in (roots["terminated"] / "results" / stopped["run_key"] / "run.log").read_text()
        )

        resumed = {
            name: run_cli(*store_args(roots[name]), cwd=roots[name], timeout=300)
            for name in ("killed", "terminated")
        }
    finally:
        for name in ("killed", "terminated"):
            procs[name].kill()
            procs[name].wait(timeout=30)
        procs["whole"].wait(timeout=300)
    assert procs["whole"].returncode == 0, tail(roots["whole"] / "err.txt")
    assert KILL_AFTER <= killed_at < TOTAL and killed_at % PER_EPOCH != 0, killed_at
    want = full_record(roots["whole"] / "results")
    for name, at in (("killed", killed_at), ("terminated", terminated_at)):
        assert resumed[name].returncode == 0, resumed[name].stderr[-3000:]
        assert "(resuming from its checkpoint at step" in resumed[name].stdout
        assert not list((roots[name] / "results").glob("*/checkpoint.pt"))
        assert_same_record(full_record(roots[name] / "results"), want, at)
    # the loss changes from step to step and the weights moved: matching curves are not trivially equal
    losses = [loss for _, loss in want["train_loss"]]
    assert len(set(losses)) > TOTAL // 2
    assert want["update_norms"][-1][1] > 0 and want["update_norms"][-1][3] > 0
