"""Sweeps: every sweep file expands to the runs it claims, a sweep skips finished runs, plan=true plans."""

import re
from pathlib import Path

import pytest

from tests.helpers import records, run_cli

CLAIMED = {
    "table1": 216,
    "table1-llama": 72,
    "table2": 504,
    "heatmap": 432,
    "heatmap-llama": 105,
    "curves": 6,
    "demo": 13,
    "search": 48,
    "block": 45,
    "loraplus": 36,
    "table1-text": 36,
    "heatmap-text": 96,
}


HEAVY = ("table2", "heatmap", "heatmap-text")  # 504, 432 and 96 runs composed: 10-20 s each, make test-slow


@pytest.mark.parametrize(
    "sweep", [pytest.param(s, marks=pytest.mark.slow) if s in HEAVY else s for s in sorted(CLAIMED)]
)
def test_sweep_file_expands_to_its_runs(tmp_path, sweep):
    proc = run_cli("-m", f"+sweep={sweep}", "plan=true", f"results_dir={tmp_path}", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    total = re.search(r"^(\d+) runs: (\d+) pending$", proc.stdout, re.M)
    assert total and int(total.group(1)) == CLAIMED[sweep] == int(total.group(2)), proc.stdout[-2000:]
    assert len(set(re.findall(r"^pending\s+([0-9a-f]{12})", proc.stdout, re.M))) == CLAIMED[sweep]


def test_table2_rows(tmp_path):
    proc = run_cli(
        "-m",
        "+sweep=table2",
        "task=rte",
        "seed=0",
        "plan=true",
        f"results_dir={tmp_path}",
        cwd=tmp_path,
        timeout=120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("pending")]
    assert len(lines) == 21  # before fine-tune, full/lora8/lora16/dora8/dora16 QKV, and 3 lambdas x 5 on QV
    assert sum("epochs=0" in line for line in lines) == 1
    assert sum("method=full" in line and "targets=qv" in line for line in lines) == 3


def test_a_typo_in_any_job_stops_the_sweep_before_launch(tmp_path):
    proc = run_cli(
        "-m", "model=tiny-bert", "targets=q,qx", f"results_dir={tmp_path / 'r'}", cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 2
    assert "targets='qx'" in proc.stderr and "nothing was launched" in proc.stderr
    assert not (tmp_path / "r").exists()


ENDED = "sweep ended: 6 runs:"  # the line every sweep ends with, counting its runs by outcome


def test_sweep_runs_then_relaunch_skips_and_plan_reports(tmp_path):
    results = tmp_path / "results"
    args = [
        "-m",
        "model=tiny-bert",
        "task=synthetic",
        "targets=q,v,qv",
        "lam=1,4",
        "epochs=1",
        "task.synthetic.train_size=96",
        "task.synthetic.eval_size=32",
        "wandb.mode=disabled",
        f"results_dir={results}",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    recs = records(results)
    assert len(recs) == 6 and {r["status"] for r in recs} == {"completed"}
    assert "launching 6" in first.stdout
    assert (
        "sweep ended: 6 runs: 6 completed, 0 paused, 0 diverged, 0 failed, 0 skipped, 0 lost" in first.stdout
    )

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "skipping 6 completed" in again.stdout and "launching 0" in again.stdout
    assert (
        "sweep ended: 6 runs: 0 completed, 0 paused, 0 diverged, 0 failed, 6 skipped, 0 lost" in again.stdout
    )
    assert records(results) == recs

    # a failed record runs again; plan=true shows the states without running anything
    failed = recs[0]
    (results / failed["run_key"] / "result.json").write_text('{"status": "failed", "error": "boom"}')
    plan = run_cli(*args, "plan=true", cwd=tmp_path)
    assert re.search(r"^6 runs: 5 completed, 1 failed$", plan.stdout, re.M), plan.stdout
    assert "estimated" in plan.stdout
    rerun = run_cli(*args, cwd=tmp_path)
    assert "skipping 5 completed" in rerun.stdout and "launching 1" in rerun.stdout
    assert (
        "sweep ended: 6 runs: 1 completed, 0 paused, 0 diverged, 0 failed, 5 skipped, 0 lost" in rerun.stdout
    )
    assert {r["status"] for r in records(results)} == {"completed"}


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs /proc, where no folder can be made")
def test_a_store_that_cannot_be_created_stops_the_sweep_before_launch(tmp_path):
    """A results_dir that cannot be made is one line before anything is launched, not a failure in
    every job (tests/test_sweep_faults.py: a file, a path under one, a read-only folder)."""
    proc = run_cli(
        "-m",
        "model=tiny-bert",
        "targets=q,v",
        "wandb.mode=disabled",
        "results_dir=/proc/qvtune-store",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: results_dir=/proc/qvtune-store: No such file or directory; expected a writable folder" in (
        proc.stderr.splitlines()
    )
    assert "Traceback" not in proc.stderr and "Launching" not in proc.stdout + proc.stderr
