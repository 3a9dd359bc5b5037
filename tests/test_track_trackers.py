"""The trackers a run logs to, driven directly with a fake run that is interrupted after step 12
and resumes from its checkpoint at step 10 (so steps 11 and 12 are logged twice): CSV and
TensorBoard keep one copy of each step, W&B's offline logs hold each step once, a tracker that
fails is dropped with one line, and a run that asks for none of them imports none of them."""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qvtune.config.rates import learning_rates
from qvtune.config.validate import validate
from qvtune.track.tracker import Trackers, open_trackers
from tests.helpers import ROOT, make_config

KEY = "0123456789ab"

GROUPS = ("qk", "v", "head")


def train_values(step: int, session: int) -> dict[str, float]:
    """What the loop logs at an optimizer step; `session` tells the two copies of a step apart."""
    return {
        "train/loss": 1 / step + session,
        **{f"update_norm/{t}": step * 0.1 for t in "qkv"},
        **{f"lr/{g}": 1e-4 * (1 - step / 100) for g in GROUPS},
    }


def play(trackers: Trackers, steps: range, session: int) -> None:
    """A training loop's log calls: every step, and an evaluation every 5 steps."""
    for step in steps:
        trackers.log(train_values(step, session), step)
        if step % 5 == 0:
            trackers.log({"eval/accuracy": step / 100, "eval/f1": step / 200}, step)


def interrupted_then_resumed(results: Path, *overrides: str) -> tuple[Any, Path]:
    """Two sessions of one run: steps 1-12, interrupted; then 11-20 from the checkpoint at 10."""
    cfg = make_config(f"results_dir={results}", *overrides)
    run_dir = results / KEY
    run_dir.mkdir(parents=True, exist_ok=True)
    first = open_trackers(cfg, KEY, learning_rates(cfg), run_dir)
    play(first, range(1, 13), session=1)
    first.finish(
        {"status": "interrupted", "best": {"accuracy": 0.1}, "final": {"accuracy": 0.1}, "steps": 12}, 1
    )
    second = open_trackers(cfg, KEY, learning_rates(cfg), run_dir)
    play(second, range(11, 21), session=2)
    second.finish(
        {"status": "completed", "best": {"accuracy": 0.2}, "final": {"accuracy": 0.2}, "steps": 20}, 0
    )
    return cfg, run_dir


EVAL_STEPS = [5, 10, 15, 20]


def test_csv_keeps_one_row_per_step_and_name_the_resumed_ones(tmp_path: Path) -> None:
    _, run_dir = interrupted_then_resumed(tmp_path, "trackers=[csv]")
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    seen: dict[str, list[int]] = {}
    for row in rows:
        seen.setdefault(row["name"], []).append(int(row["step"]))
    for name in train_values(1, 0):
        assert seen[name] == list(range(1, 21)), name
    assert seen["eval/accuracy"] == seen["eval/f1"] == EVAL_STEPS
    # the interrupted session's summary (at step 12) went with its replayed steps
    assert seen["summary/best/accuracy"] == seen["summary/steps"] == [20]
    loss = {int(r["step"]): float(r["value"]) for r in rows if r["name"] == "train/loss"}
    assert loss[10] == pytest.approx(1 / 10 + 1) and loss[11] == pytest.approx(1 / 11 + 2)


def test_tensorboard_keeps_one_point_per_step_and_tag(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir = interrupted_then_resumed(tmp_path, "trackers=[tensorboard]")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert sorted(scalars) == sorted([*train_values(1, 0), "eval/accuracy", "eval/f1"])
    for name in train_values(1, 0):
        assert [e.step for e in events.Scalars(name)] == list(range(1, 21)), name
    assert [e.step for e in events.Scalars("eval/accuracy")] == EVAL_STEPS
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert loss[10] == pytest.approx(1 / 10 + 1) and loss[11] == pytest.approx(1 / 11 + 2)
    config = events.Tensors("config/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert f"run_key: {KEY}" in config and "results_dir:" in config
    summary = events.Tensors("summary/text_summary")[-1]
    assert summary.step == 20 and '"status": "completed"' in summary.tensor_proto.string_val[0].decode()


def wandb_records(path: Path) -> dict[str, list[Any]]:
    """The records of a W&B offline run file (run-<id>.wandb) by kind (run, history, summary, exit,
    ...): LevelDB's log format (32 KiB blocks of chunks, each with a 7-byte header: CRC, length,
    type) after a 7-byte W&B header, each record a protobuf `Record`; wandb has no reader of its own
    any more. W&B's service process writes the file a moment after `finish` returns: wait for the
    run's exit record."""
    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + 30
    while True:
        data = path.read_bytes()
        records: dict[str, list[Any]] = {}
        pos, chunks = 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if left < 7 or (kind == 0 and length == 0):  # the padding at a block's end
                pos += left
                continue
            if pos + 7 + length > len(data):  # not written yet
                break
            chunks += data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a whole record, or the last chunk of one
                record = pb.Record()
                record.ParseFromString(chunks)
                name = record.WhichOneof("record_type")
                records.setdefault(name, []).append(getattr(record, name))
                chunks = b""
        if "exit" in records or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def items(entries: Any) -> dict[str, Any]:
    """The names and values of a W&B record's items (a name is a key or a one-part nested key)."""
    return {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}


def test_wandb_logs_each_session_to_the_run_named_by_the_run_key(tmp_path: Path) -> None:
    cfg, run_dir = interrupted_then_resumed(
        tmp_path, "trackers=[wandb]", "wandb.mode=offline", "sweep_name=s1"
    )
    files = sorted((run_dir / "wandb").glob(f"offline-run-*-{KEY}/run-{KEY}.wandb"))
    assert len(files) == 2  # offline, each session writes its own; `wandb sync` sends both to one run
    # the second session does not log again the steps it replays (11 and 12): each step is sent once
    sessions = [(range(1, 13), "interrupted", 1), (range(13, 21), "completed", 0)]
    for file, (steps, status, exit_code) in zip(files, sessions):
        kinds = wandb_records(file)
        (run,) = kinds["run"]
        assert (run.run_id, run.run_group, run.job_type) == (KEY, "s1", cfg.task.name)
        assert list(run.tags) == [cfg.model.name, cfg.method.name, "qv"]
        config = items(run.config.update)
        assert config["run_key"] == KEY and config["lr"] == cfg.lr
        metrics = {m.name or m.glob_name: m for m in kinds["metric"]}
        headline = metrics[f"eval/{cfg.task.metric}"]
        assert headline.step_metric == "step" and headline.summary.max
        assert metrics["*"].step_metric == "step" and metrics["train/loss"].summary.min
        rows = [items(h.item) for h in kinds["history"]]
        assert [row["step"] for row in rows] == list(steps)
        assert all(set(train_values(1, 0)) <= set(row) for row in rows)
        assert [row["step"] for row in rows if "eval/accuracy" in row] == [s for s in steps if s % 5 == 0]
        summary = {k: v for s in kinds["summary"] for k, v in items(s.update).items()}
        assert summary["status"] == status and summary["eval/accuracy"] == {"max": max(steps) // 5 * 5 / 100}
        assert [e.exit_code for e in kinds["exit"]] == [exit_code]


def test_a_failing_tracker_says_one_line_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / KEY).mkdir()
    (tmp_path / KEY / "tensorboard").write_text("a file where the event folder would go")
    with caplog.at_level(logging.WARNING, logger="qvtune.track"):
        _, run_dir = interrupted_then_resumed(tmp_path, "trackers=[tensorboard,csv]")
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("qvtune.track")]
    assert len(lines) == 2  # one a session: TensorBoard opens its writer at the first step logged
    assert all(line.startswith("tracker tensorboard: FileExistsError: ") for line in lines)
    assert all(line.endswith("; the run goes on without it") and "\n" not in line for line in lines)
    with (run_dir / "metrics.csv").open(newline="") as f:
        steps = sorted({int(row["step"]) for row in csv.DictReader(f)})
    assert steps == list(range(1, 21))


def test_a_tracker_whose_library_is_missing_names_the_extra(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    cfg = make_config(f"results_dir={tmp_path}", "trackers=[mlflow,csv]")
    with caplog.at_level(logging.WARNING, logger="qvtune.track"):
        trackers = open_trackers(cfg, KEY, learning_rates(cfg), tmp_path)
    assert list(trackers.backends) == ["csv"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("tracker mlflow: ModuleNotFoundError: ")
    assert line.endswith("(pip install 'qvtune[mlflow]'); the run goes on without it")


def test_tracker_names_are_checked() -> None:
    assert make_config().trackers == ["wandb"]
    assert not [e for e in validate(make_config("trackers=[csv,tensorboard,mlflow,wandb]")) if "tracker" in e]
    assert "trackers=[foo]: expected any of wandb, tensorboard, mlflow, csv" in validate(
        make_config("trackers=[foo]")
    )


def test_wandb_disabled_leaves_it_out_and_nothing_heavy_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from tests.helpers import make_config\n"
        "from qvtune.config.rates import learning_rates\n"
        "from pathlib import Path\n"
        "from qvtune.track.tracker import open_trackers\n"
        f"cfg = make_config('results_dir={tmp_path}', 'wandb.mode=disabled', 'trackers=[wandb,csv]')\n"
        f"trackers = open_trackers(cfg, '{KEY}', learning_rates(cfg), Path('{tmp_path}'))\n"
        "assert list(trackers.backends) == ['csv'], trackers.backends\n"
        "heavy = ('wandb', 'mlflow', 'tensorboard', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
