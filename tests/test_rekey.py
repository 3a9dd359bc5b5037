"""`python -m qvtune.rekey`: a store written under earlier run keys is moved to today's keys."""

import json
import shutil

from qvtune.rekey import rekey
from qvtune.store.identity import run_key
from tests.helpers import make_config, records, run_cli

ARGS = [
    "model=tiny-bert",
    "task=synthetic",
    "targets=qv",
    "epochs=1",
    "task.synthetic.train_size=64",
    "task.synthetic.eval_size=32",
    "wandb.mode=disabled",
]


def as_earlier_version(folder, old_key, **changes):
    """Turn a run folder into what an earlier qvtune wrote: another key, schema 1, curves inline."""
    record = json.loads((folder / "result.json").read_text())
    curves = json.loads((folder / "curves.json").read_text()) if (folder / "curves.json").exists() else {}
    record.update({k: v for k, v in curves.items() if k != "run_key"}, schema=1, run_key=old_key, **changes)
    for key in ("precision", "curves_file"):
        record.pop(key, None)
    (folder / "curves.json").unlink(missing_ok=True)
    (folder / "result.json").write_text(json.dumps(record))
    target = folder.parent / old_key
    folder.rename(target)
    return target


def test_rekey_moves_earlier_runs_to_todays_keys(tmp_path):
    results = tmp_path / "results"
    proc = run_cli(*ARGS, f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [rec] = records(results)
    key = rec["run_key"]
    assert key == run_key(make_config(*ARGS), "fp32")
    as_earlier_version(results / key, "0123456789ab", device="cpu")
    gpu = results / "gpu-run"
    shutil.copytree(results / "0123456789ab", gpu)
    record = json.loads((gpu / "result.json").read_text())
    record["device"] = "cuda"
    (gpu / "result.json").write_text(json.dumps(record))

    assert rekey(results, dry_run=True) == [
        f"would move 0123456789ab -> {key}",
        "left gpu-run: a GPU run with precision=auto that did not record bf16 or fp16",
    ]
    assert (results / "0123456789ab").exists()
    lines = rekey(results)
    assert lines[0] == f"moved 0123456789ab -> {key}" and not (results / "0123456789ab").exists()
    moved = json.loads((results / key / "result.json").read_text())
    assert moved["run_key"] == key and moved["schema"] == 2 and moved["final"] == rec["final"]
    assert len(json.loads((results / key / "curves.json").read_text())["train_loss"]) == rec["steps"]
    assert rekey(results) == [lines[1]]  # nothing left to move; the GPU run stays where it was

    again = run_cli(*ARGS, f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout  # found, not run again
