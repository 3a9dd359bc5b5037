"""The benchmark's baseline: the paper's recipe on HF Trainer + PEFT runs offline on real GLUE files
and reports what scripts/bench.py reads (the speed figures themselves live in the benchmark)."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import OFFLINE_ENV, ROOT


@pytest.mark.parametrize("batching", ["padded", pytest.param("grouped", marks=pytest.mark.slow)])
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
