"""The run record and the results store: a record's life (start, finish, fail), its layout (result.json
and curves.json), schema 1 records, validation, the run lock across processes, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from qvtune.collect import curves
from qvtune.collect.records import load
from qvtune.common.files import atomic_write
from qvtune.status import Status
from qvtune.store.record import CURVES_FILE, RESULT_FILE, SCHEMA_VERSION, InvalidRecord, RunRecord
from qvtune.store.store import ResultsStore
from qvtune.sweep.plan import estimate_seconds
from tests.helpers import ROOT, make_config
from tests.helpers.sample_records import make_record, write_record


def trained_state(**kw: object) -> SimpleNamespace:
    """What qvtune.train.loop.train yields, as far as a record reads it."""
    history = [
        {"step": 5, "epoch": 0.5, "metrics": {"accuracy": 0.7}},
        {"step": 10, "epoch": 1.0, "metrics": {"accuracy": 0.6}},
    ]
    return SimpleNamespace(
        status=Status.COMPLETED,
        error=None,
        signal=None,
        history=history,
        step=10,
        total_steps=10,
        samples=320,
        tokens=4000,
        train_s=2.0,
        eval_s=0.5,
        train_loss=[[s, 1.0 / s] for s in range(1, 11)],
        update_norms=[[10, 0.1, 0.0, 0.2]],
        lr_trace=[[1, 1e-3, 4e-3, 1e-3]],
        norm_types=["q", "k", "v"],
        lr_groups=["qk", "v", "head"],
        **kw,
    )


def test_a_record_from_start_to_finish(tmp_path: Path) -> None:
    cfg = make_config("lr=1e-3", "lam=4", f"results_dir={tmp_path}")
    store = ResultsStore(tmp_path)
    record = RunRecord.start(cfg, "abc123abc123", "fp32")
    store.write(record)
    assert store.state("abc123abc123").state == Status.INTERRUPTED  # says running, nobody holds the lock
    assert not (tmp_path / "abc123abc123" / CURVES_FILE).exists()

    record.finish(
        trained_state(),
        {"total": 10, "trainable": 4, "groups": []},
        {"wall_s": 5.0, "setup_s": 2.0, "load_s": 1.0, "data_s": 0.5},
        {"peak_rss_mb": 900.0, "peak_gpu_mb": None},
        "cpu",
        2,
    )
    store.write(record)
    summary = json.loads((tmp_path / "abc123abc123" / RESULT_FILE).read_text())
    assert summary["schema"] == SCHEMA_VERSION == 2 and summary["status"] == "completed"
    assert summary["curves_file"] == CURVES_FILE and "train_loss" not in summary
    assert summary["final"] == {"accuracy": 0.6} and summary["best"] == {"accuracy": 0.7}
    assert summary["rates"] == {"qk": 1e-3, "v": pytest.approx(4e-3), "head": 1e-3, "lam": 4.0}
    assert summary["timing"]["samples_per_s"] == 160 and summary["timing"]["tokens_per_s"] == 2000
    assert summary["precision"] == "fp32" and summary["threads"] == 2 and summary["finished_at"]

    state = store.state("abc123abc123")
    assert state.state == Status.COMPLETED and state.finished and state.record.curves is None  # summary only
    again = RunRecord.read(tmp_path / "abc123abc123" / RESULT_FILE, curves=True)
    assert again.curves == record.curves and again.to_dict() == record.to_dict()


def test_a_failure_is_recorded_with_its_traceback() -> None:
    record = RunRecord(status=Status.RUNNING, run_key="k")
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError as e:
        record.fail(e)
    assert record.status == Status.FAILED and record.error == "RuntimeError: CUDA out of memory"
    assert "Traceback" in record.traceback and record.finished_at


def schema_1(record: RunRecord) -> dict:
    """The record as qvtune wrote it before curves.json: curves inline, no precision, tokens, device."""
    old = {
        **record.to_dict(),
        "schema": 1,
        "train_loss": record.curves.train_loss,
        "update_norms": record.curves.update_norms,
        "lr_trace": record.curves.lr_trace,
    }
    for later in ("curves_file", "precision", "tokens", "device", "threads", "peak_gpu_mb", "traceback"):
        del old[later]
    return old


def test_schema_1_records_load_everywhere(tmp_path: Path) -> None:
    """Store states, collector rows, curves and the sweeper's cost estimate read records of schema 1."""
    results = tmp_path / "results"
    new, old = make_record(seed=0, loss_points=30), make_record(seed=1, loss_points=30)
    old.timing = {"wall_s": 70.0, "train_s": 50.0, "samples_per_s": 100.0}  # only it can give an estimate
    write_record(results, new)
    (results / old.run_key).mkdir(parents=True)
    (results / old.run_key / RESULT_FILE).write_text(json.dumps(schema_1(old), indent=1))

    read = RunRecord.read(results / old.run_key / RESULT_FILE, curves=True)
    assert read.schema == 1 and read.curves == old.curves and read.final == old.final
    assert RunRecord.read(results / old.run_key / RESULT_FILE).curves is None  # asked for the summary only
    assert ResultsStore(results).state(old.run_key).state == Status.COMPLETED

    coll = load(results)
    assert sorted(coll.runs["seed"]) == [0, 1] and not coll.problems
    loss, dev, metric = curves._series(results, coll.runs)
    assert [len(c) for c in loss] == [30, 30] and len(dev) == 2 and metric == "accuracy"

    cfg = make_config(
        "model=roberta-base",
        "task=mnli",
        "method=lora",
        "max_steps=100",
        "batch_size=32",
        "grad_accum=1",
        f"results_dir={results}",
    )
    assert estimate_seconds(cfg) == pytest.approx(100 * 32 / 100.0 + 20.0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([1, 2], "not a JSON object"),
        ({"status": "done"}, "unknown status 'done'"),
        ({"status": "completed", "steps": "ten"}, "steps: str where int was expected"),
        ({"status": "completed", "config": []}, "config: list where dict was expected"),
        ({"status": "completed", "schema": 3}, "schema 3"),
    ],
)
def test_what_is_not_a_record(data: object, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        RunRecord.from_dict(data)


def test_curves_of_another_run_are_refused(tmp_path: Path) -> None:
    a, b = make_record(seed=0), make_record(seed=1)
    write_record(tmp_path, a), write_record(tmp_path, b)
    os.replace(tmp_path / b.run_key / CURVES_FILE, tmp_path / a.run_key / CURVES_FILE)
    with pytest.raises(InvalidRecord, match="not the curves of run"):
        RunRecord.read(tmp_path / a.run_key / RESULT_FILE, curves=True)


def test_status_words_read_as_strings() -> None:
    assert Status.DIVERGED == "diverged" and f"{Status.PENDING}" == "pending"
    assert json.dumps({"s": Status.FAILED}) == '{"s": "failed"}'


HOLD = """
import sys, time
from qvtune.store.store import ResultsStore
with ResultsStore(sys.argv[1]).claim("k") as mine:
    print("mine" if mine else "taken", flush=True)
    time.sleep(60)
"""


def test_one_key_runs_in_one_process_at_a_time(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.write(RunRecord(status=Status.RUNNING, run_key="k"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mine"
        with store.claim("k") as mine:
            assert not mine  # the other process holds the key
        assert store.is_locked("k") and store.state("k").state == Status.RUNNING
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert store.state("k").state == Status.INTERRUPTED  # killed: nobody holds the lock any more
    with store.claim("k") as mine:
        assert mine


def test_collector_and_store_work_without_fcntl(tmp_path: Path) -> None:
    """Where fcntl does not exist (Windows), collecting and reading a store still work."""
    write_record(tmp_path, make_record(seed=0))
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import qvtune.collect\n"
        "from qvtune.collect.records import load\n"
        "from qvtune.store.store import ResultsStore\n"
        f"root = {str(tmp_path)!r}\n"
        "coll = load(root)\n"
        "store = ResultsStore(root)\n"
        "key = coll.runs['run_key'][0]\n"
        "print(len(coll.runs), store.state(key).state,\n"
        "      'fcntl' in sys.modules and sys.modules['fcntl'] is None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "completed", "True"]


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "file.bin"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f: object) -> None:
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and os.listdir(path.parent) == ["file.bin"]  # no temp file left


def test_atomic_writers_never_share_a_temp_file(tmp_path: Path) -> None:
    """Two writers of one path at once each fill their own temp file (the checkpoint's used to be fixed)."""
    path = tmp_path / "checkpoint.pt"
    during: list[list[str]] = []

    def second(f: object) -> None:
        during.append(sorted(os.listdir(tmp_path)))
        f.write(b"second")

    def first(f: object) -> None:
        atomic_write(path, second)  # starts and ends while the first writer is at work
        f.write(b"first")

    atomic_write(path, first)
    [names] = during
    assert len(names) == 2 and all(n.startswith(".checkpoint.pt.") and n.endswith(".tmp") for n in names)
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["checkpoint.pt"]
