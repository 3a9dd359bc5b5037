"""`python -m qvtune.run` end to end, as a subprocess, on tiny models and on the pretrained MiniLM."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import OFFLINE_ENV, records, run_cli

RECORD_KEYS = {
    "schema",
    "run_key",
    "status",
    "error",
    "config",
    "rates",
    "params",
    "metric",
    "history",
    "final",
    "best",
    "train_loss",
    "update_norms",
    "lr_trace",
    "steps",
    "samples",
    "timing",
    "peak_rss_mb",
    "started_at",
    "finished_at",
    "host",
    "qvtune_version",
    "sweep",
}


def test_tiny_run_writes_a_complete_record_and_is_not_repeated(tmp_path):
    args = [
        "model=tiny-bert",
        "task=synthetic",
        "targets=qv",
        "lr=1e-3",
        "lam=4",
        "epochs=1",
        "task.synthetic.train_size=320",
        "task.synthetic.eval_size=64",
        "eval_every=4",
        "eval_at_start=true",
        "wandb.mode=offline",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(tmp_path / "results")
    assert RECORD_KEYS <= set(rec) and rec["status"] == "completed" and rec["error"] is None
    assert rec["steps"] == 10 and rec["samples"] == 320 and len(rec["train_loss"]) == 10
    assert [h["step"] for h in rec["history"]] == [0, 4, 8, 10]
    assert (
        rec["final"] == rec["history"][-1]["metrics"] and "accuracy" in rec["final"] and "f1" in rec["final"]
    )
    assert rec["config"]["targets"] == "qv" and rec["rates"] == {
        "qk": 1e-3,
        "v": pytest.approx(4e-3),
        "head": 1e-3,
        "lam": 4.0,
    }
    # the learning rates the optimizer applied: lr and lam * lr at step 1, their ratio lambda at every step
    first = rec["lr_trace"][0]
    assert (
        first[0] == 1
        and first[1] == pytest.approx(1e-3)
        and first[2] == pytest.approx(4e-3)
        and first[3] == pytest.approx(1e-3)
    )
    for _step, qk, v, head in rec["lr_trace"][:-1]:
        assert v == pytest.approx(4 * qk) and head == pytest.approx(qk)
    assert rec["lr_trace"][-1][1] < rec["lr_trace"][0][1]  # the linear schedule decays every group alike
    groups = {g["group"]: g for g in rec["params"]["groups"]}
    assert (
        groups["qk"]["lr"] == 1e-3
        and groups["v"]["lr"] == pytest.approx(4e-3)
        and groups["qk"]["params"] == groups["v"]["params"] > 0
    )
    assert (
        rec["update_norms"][-1][1] > 0 and rec["update_norms"][-1][2] == 0 and rec["update_norms"][-1][3] > 0
    )  # k untouched
    assert rec["timing"]["samples_per_s"] > 0 and rec["peak_rss_mb"] > 0
    run_dir = tmp_path / "results" / rec["run_key"]
    assert (run_dir / "run.log").exists() and not (run_dir / "checkpoint.pt").exists()
    assert list((run_dir / "wandb").glob(f"offline-run-*-{rec['run_key']}")), (
        "W&B offline run named by the run key"
    )

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout
    assert records(tmp_path / "results") == [rec]


@pytest.mark.slow  # ~30 s of training the pretrained model; make demo shows the same learning
def test_minilm_learns_the_synthetic_task(tmp_path):
    proc = run_cli(
        "model=minilm",
        "task=synthetic",
        "targets=qv",
        "lr=1e-3",
        "epochs=1",
        "eval_at_start=true",
        "wandb.mode=disabled",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(tmp_path / "results")
    assert rec["status"] == "completed" and rec["params"]["trainable"] == 74_498
    assert rec["history"][0]["metrics"]["accuracy"] < 0.6  # the fresh head is at chance
    assert rec["final"]["accuracy"] > 0.75, rec["final"]  # chance is 0.5


def test_dry_run_counts_without_download(tmp_path):
    proc = run_cli(
        "model=roberta-base",
        "task=rte",
        "method=lora",
        "targets=qv",
        "rank=16",
        "dry_run=true",
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1,181,954  trainable of" in proc.stdout and "592,130" in proc.stdout


def test_failed_run_is_a_record_with_its_reason(tmp_path):
    proc = run_cli(
        "model=hub",
        "model.source=FacebookAI/roberta-base",
        "task=synthetic",
        "wandb.mode=disabled",
        f"results_dir={tmp_path / 'r'}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 1
    [rec] = records(tmp_path / "r")
    assert rec["status"] == "failed" and "FacebookAI/roberta-base" in rec["error"] and rec["finished_at"]


@pytest.mark.slow  # tests/test_resume.py kills a run the same way and compares its whole record
def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    results = tmp_path / "results"
    args = [
        "model=tiny-bert",
        "task=synthetic",
        "epochs=3",
        "task.synthetic.train_size=2000",
        "checkpoint_minutes=0",
        "wandb.mode=disabled",
        f"results_dir={results}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    env = {**os.environ, **OFFLINE_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qvtune.run", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list(results.glob("*/checkpoint.pt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    [rec] = records(results)
    assert rec["status"] == "running"  # a killed run never looks complete
    ckpt = results / rec["run_key"] / "checkpoint.pt"
    assert ckpt.exists()
    import torch

    done_before = torch.load(ckpt, weights_only=False)["state"]["step"]
    assert 0 < done_before < 189
    finished = run_cli(*args, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "(resuming from its checkpoint at step" in finished.stdout
    [rec] = records(results)
    assert rec["status"] == "completed" and rec["steps"] == 189 and len(rec["train_loss"]) == 189
    assert [s for s, _ in rec["train_loss"]] == list(range(1, 190))
