"""The benchmark's baseline: the paper's recipe on HF Trainer + PEFT runs offline on real GLUE files
and reports what scripts/bench.py reads (the speed figures themselves live in the benchmark)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import OFFLINE_ENV, ROOT


@pytest.mark.slow  # 20 s a variant: the HF Trainer + PEFT reference of make bench
@pytest.mark.parametrize("batching", ["padded", "grouped"])
def test_hf_recipe_reports_a_run(glue_dir, tmp_path, batching):
    out = tmp_path / "hf.json"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "hf_recipe.py"),
        "--glue",
        str(glue_dir),
        "--task",
        "rte",
        "--batching",
        batching,
        "--samples",
        "16",
        "--lam",
        "4",
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["recipe"] == f"hf-trainer-{batching}" and rec["samples"] == 16 and rec["metric"] == "accuracy"
    assert (
        0 <= rec["dev_metric"] <= 1 and rec["train_s"] > 0 and rec["eval_s"] > 0 and rec["peak_rss_mb"] > 100
    )
    mean_tokens = rec["tokens"] / rec["samples"]
    assert 20 < mean_tokens < 128  # real tokens only: RTE pairs average about 67, never the padded 128


@pytest.mark.slow
def test_search_benchmark_reports_both_searches_and_goes_on_from_its_timings(tmp_path):
    """scripts/bench_search.py on tiny-bert: halving, the grid's completion and the optuna search
    into one store; a re-run measures nothing again and prints the same comparison."""
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench_search.py"),
        "--model",
        "tiny-bert",
        "--lr",
        "1e-2,3e-2",
        "--lr-v",
        "3e-2,1e-1",
        "--seeds",
        "0,1",
        "--optuna-trials",
        "3",
        "--optuna-batch",
        "2",
        "--out",
        str(tmp_path / "bench"),
        "task.synthetic.train_size=128",
        "task.synthetic.eval_size=64",
        "threads=1",
    ]
    env = {**os.environ, **OFFLINE_ENV}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    timings = json.loads((tmp_path / "bench" / "timings.json").read_text())
    assert set(timings) == {"halving", "completion", "optuna"} and min(timings.values()) > 0
    for line in ("grid best: ", "halving pick: ", "halving compute: ", "optuna pick: ", "optuna compute: "):
        assert line in proc.stdout, proc.stdout
    # the grid: 2 x 2 cells x 2 seeds, 1 epoch of 128 samples each
    assert "1024 training samples" in proc.stdout
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "bench" / "timings.json").read_text()) == timings
    sweeps = ("search ", "  rung ", "  trial ", "  pick: ")  # what the sweeps print as they run

    def report(out: str) -> list[str]:
        return [line for line in out.splitlines() if not line.startswith(sweeps)]

    assert report(again.stdout) == report(proc.stdout)


@pytest.mark.slow
def test_pack_benchmark_runs_every_mode_twice_and_packed_runs_score_as_alone(tmp_path):
    """scripts/bench_pack.py on tiny-bert with its own dropout on: K = 1 and 3, each twice; every
    mode's figures are reported, and the packed runs score exactly as their lone runs."""
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench_pack.py"),
        *("--tasks", "synthetic", "--model", "tiny-bert", "--samples", "64", "--packs", "1,3"),
        *("--repeats", "2", "--out", str(tmp_path / "bench")),
        "task.synthetic.eval_size=64",
        "threads=1",
    ]
    env = {**os.environ, **OFFLINE_ENV}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    modes = json.loads((tmp_path / "bench" / "bench-pack.json").read_text())["tasks"]["synthetic"]
    assert [(m["runs"], m["jobs"], len(m["walls_s"])) for m in modes.values()] == [(9, 9, 2), (9, 3, 2)]
    assert all(m["statuses"] == ["completed"] and m["wall_s"] > 0 for m in modes.values())
    # the bench reads and compares the metrics (the exact equivalence is tests/test_pack.py's)
    assert modes["3"]["metrics"] == modes["1"]["metrics"]
    assert "largest difference of a run's dev metric from its lone run: 0" in proc.stdout
    assert all(m["lone_step_ms_per_sample"] > 0 for m in modes.values())  # the bound on the speed-up
    assert "a lone run's step per sample at K x its batch" in proc.stdout
