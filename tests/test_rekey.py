"""`python -m qvtune.rekey`: a store written under earlier run keys is moved to today's keys."""

import json
import shutil
from pathlib import Path

import pytest

from qvtune.rekey import main, rekey
from qvtune.status import Status
from qvtune.store.identity import run_key
from qvtune.store.record import CURVES_FILE, RESULT_FILE, Curves, RunRecord
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


@pytest.mark.slow  # 15 s; the other tests here move hand-made earlier records in process
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


# Fault injection: stores written by hand (no training), each record under a name that is not its key.


def old_run(results, name, *overrides):
    """A finished run's folder as an earlier qvtune left it, under `name`; returns today's key."""
    cfg = make_config(*ARGS, *overrides)
    record = RunRecord.start(cfg, name, "fp32")
    record.status, record.final, record.steps = Status.COMPLETED, {"accuracy": 0.5}, 2
    record.curves = Curves([[1, 0.7], [2, 0.6]], [[1, 0.1, 0.0, 0.2]] * 2, [[1, 1e-4, 1e-4, 1e-4]] * 2)
    record.write(results / name)
    return run_key(cfg, "fp32")


def assert_under_their_keys(results, keys):
    """Each key is a folder whose result.json and curves.json both name it, its curves intact."""
    for key in keys:
        record = RunRecord.read(results / key / RESULT_FILE, curves=True)  # checks the two files agree
        assert record.run_key == key and len(record.curves.train_loss) == 2


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)


def test_unreadable_records_are_skipped_and_nothing_moves_before_all_are_read(tmp_path, capsys):
    results = tmp_path / "results"
    keys = [old_run(results, "old-a", "seed=1"), old_run(results, "old-b", "seed=2")]
    good = (results / "old-a" / RESULT_FILE).read_text()
    write_json(results / "no-config" / RESULT_FILE, {"status": "completed", "run_key": "no-config"})
    write_json(results / "not-a-record" / RESULT_FILE, [1, 2])
    write_json(results / "truncated" / RESULT_FILE, good[: len(good) // 2])
    folders = sorted(p.name for p in results.iterdir())

    def lines(verb):
        return [
            "skipped no-config: unreadable record (no config to compute its key from)",
            "skipped not-a-record: unreadable record (not a JSON object)",
            f"{verb} old-a -> {keys[0]}",
            f"{verb} old-b -> {keys[1]}",
            "skipped truncated: unreadable record (JSONDecodeError: ",
        ]

    assert main([str(results), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == lines("would move")[:4] and out[4].startswith(lines("would move")[4])
    assert sorted(p.name for p in results.iterdir()) == folders  # a dry run moves nothing

    assert main([str(results)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == lines("moved")[:4] and out[4].startswith(lines("moved")[4])
    assert_under_their_keys(results, keys)
    assert sorted(p.name for p in results.iterdir()) == sorted(
        ["no-config", "not-a-record", "truncated", *keys]
    )


def test_a_rekey_stopped_between_a_rename_and_its_record_is_finished_by_a_rerun(
    tmp_path, monkeypatch, capsys
):
    results = tmp_path / "results"
    keys = [old_run(results, f"old-{i}", f"seed={i}") for i in range(3)]
    write = RunRecord.write

    def killed_at_the_second_record(record, folder):
        if folder.name == keys[1]:  # old-1 is renamed already
            raise KeyboardInterrupt
        write(record, folder)

    monkeypatch.setattr(RunRecord, "write", killed_at_the_second_record)
    seen: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        rekey(results, report=seen.append)
    assert seen == [f"moved old-0 -> {keys[0]}"]
    assert sorted(p.name for p in results.iterdir()) == sorted([keys[0], keys[1], "old-2"])
    monkeypatch.undo()

    assert main([str(results)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"rewrote {keys[1]}: its record said run_key old-1",
        f"moved old-2 -> {keys[2]}",
    ]
    assert_under_their_keys(results, keys)
    assert main([str(results)]) == 0
    assert capsys.readouterr().out == "every run is under its current key\n"


def test_a_failed_rename_is_an_error_and_a_rerun_finishes(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    keys = [old_run(results, f"old-{i}", f"seed={i}") for i in range(2)]
    rename = Path.rename

    def read_only_old_1(path, target):
        if path.name == "old-1":
            raise PermissionError(13, "Permission denied", str(path))
        return rename(path, target)

    monkeypatch.setattr(Path, "rename", read_only_old_1)
    assert main([str(results)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"moved old-0 -> {keys[0]}"]
    assert err.startswith("error: [Errno 13] Permission denied") and "run rekey again" in err
    monkeypatch.undo()
    assert main([str(results)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"moved old-1 -> {keys[1]}"]
    assert_under_their_keys(results, keys)


def test_a_rekey_stopped_between_curves_and_result_is_finished_by_a_rerun(tmp_path):
    """curves.json is written first: stopped before result.json, the two files disagree."""
    results = tmp_path / "results"
    key = old_run(results, "old-0")
    assert rekey(results) == [f"moved old-0 -> {key}"]
    data = json.loads((results / key / RESULT_FILE).read_text())
    write_json(results / key / RESULT_FILE, {**data, "run_key": "old-0"})  # curves.json names the key
    assert rekey(results, dry_run=True) == [f"would rewrite {key}: its record said run_key old-0"]
    assert rekey(results) == [f"rewrote {key}: its record said run_key old-0"]
    assert_under_their_keys(results, [key])
    assert rekey(results) == []


def test_curves_of_another_run_are_not_taken_as_this_ones(tmp_path):
    results = tmp_path / "results"
    old_run(results, "old-0")
    data = json.loads((results / "old-0" / CURVES_FILE).read_text())
    write_json(results / "old-0" / CURVES_FILE, {**data, "run_key": "elsewhere"})
    assert rekey(results) == [
        "skipped old-0: unreadable record (curves.json holds the curves of run elsewhere, not of old-0)"
    ]


def test_a_taken_key_is_left_and_reported(tmp_path):
    results = tmp_path / "results"
    key = old_run(results, "old-a")
    assert old_run(results, "old-b") == key  # one run copied twice
    assert rekey(results) == [f"moved old-a -> {key}", f"left old-b: its new key {key} is also that of old-a"]
    assert rekey(results) == [f"left old-b: its new key {key} is already a folder of the store"]


def test_a_missing_store_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no results store at" in capsys.readouterr().err
