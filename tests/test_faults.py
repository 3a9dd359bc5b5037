"""Faults a run meets outside its own code: a store that fills up or cannot be written, a record
that cannot be read, a loss that blows up in a run shorter than the divergence window. Each ends in
one line that names the path and the cause, and a record that says what happened wherever one can
still be written (docs/faults.md)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import OFFLINE_ENV, records, run_cli

TINY = [
    "model=tiny-bert",
    "task=synthetic",
    "targets=qv",
    "epochs=1",
    "task.synthetic.train_size=256",
    "task.synthetic.eval_size=64",
    "wandb.mode=disabled",
]


def store(root: Path, results: Path) -> list[str]:
    return [f"results_dir={results}", f"cache_dir={root / 'cache'}"]


@contextlib.contextmanager
def mounted(target: Path, *options: str) -> Iterator[bool]:
    """`mount -t tmpfs` (or a read-only bind) on `target`; yields False where mounting is not allowed."""
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(target)], capture_output=True).returncode == 0
    try:
        yield done
    finally:
        if done:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def run_with_full_disk_at(results: Path, root: Path, name: str) -> subprocess.CompletedProcess:
    """The run in a subprocess whose writes of `name` (a file of the run's folder) fail with ENOSPC,
    as on a disk that fills up while the run trains."""
    code = (
        "import errno, os, sys\n"
        "import qvtune.common.files as files\n"
        "real = files.atomic_write\n"
        "def full(path, write):\n"
        f"    if os.path.basename(path) == {name!r}:\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))\n"
        "    real(path, write)\n"
        "files.atomic_write = full\n"
        "import qvtune.store.record as record\n"
        "record.atomic_write = full\n"
        "from qvtune.run import main\n"
        "sys.argv = ['qvtune.run', *sys.argv[1:]]\n"
        "main()\n"
    )
    env = {**__import__("os").environ, **OFFLINE_ENV}
    args = [*TINY, *store(root, results)]
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_full_disk_at_the_records_final_write_is_one_line_and_a_failed_record(tmp_path: Path) -> None:
    # the disk is full for the record's curves: a real tmpfs cannot be sized to fill at exactly that
    # write (the record's size changes with its fields), so the write fails as a full disk's does
    results = tmp_path / "full"
    proc = run_with_full_disk_at(results, tmp_path, "curves.json")
    [rec] = records(results)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "No space left on device" in errors[0] and str(results) in errors[0]
    # the record no longer says running: it says failed and why, without the curves that did not fit
    assert rec["status"] == "failed" and "No space left on device" in rec["error"]
    assert not (results / rec["run_key"] / "curves.json").exists()


@pytest.mark.parametrize("how", ["read-only", "a file"])
def test_a_store_that_cannot_be_written_is_one_line_before_anything_loads(tmp_path: Path, how: str) -> None:
    results = tmp_path / "store"
    with contextlib.ExitStack() as stack:
        if how == "a file":
            results.write_text("not a folder")
        else:
            results.mkdir()
            if not stack.enter_context(mounted(results, "--bind", "-o", "ro", str(results))):
                results = tmp_path / "file" / "store"  # under a regular file: no folder can be made there
                (tmp_path / "file").write_text("not a folder")
        proc = run_cli(*TINY, *store(tmp_path, results), cwd=tmp_path)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().startswith(f"error: results_dir={results}: ") and "Traceback" not in proc.stderr
    )
    assert (
        proc.stderr.strip().endswith("expected a writable folder")
        and len(proc.stderr.strip().splitlines()) == 1
    )


def test_a_corrupt_record_is_said_moved_aside_and_its_run_starts_over(tmp_path: Path) -> None:
    results = tmp_path / "results"
    first = run_cli(*TINY, *store(tmp_path, results), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    [rec] = records(results)
    path = results / rec["run_key"] / "result.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # truncated, as by a disk that filled up mid-write
    again = run_cli(*TINY, *store(tmp_path, results), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    said = again.stdout + again.stderr
    assert f"run {rec['run_key']}: its record was unreadable (" in said
    assert "(starting over: no checkpoint to resume from)" in said and "(resuming" not in said
    [aside] = list((results / rec["run_key"]).glob("result.json.unreadable-*"))
    assert aside.read_text() == text[: len(text) // 2]  # kept for inspection
    [rerun] = records(results)
    assert rerun["status"] == "completed" and rerun["final"] == rec["final"]  # trained again, from step 0


def test_a_blow_up_in_a_run_shorter_than_the_window_is_recorded_diverged(tmp_path: Path) -> None:
    """A diverged run is a record, not a failure: exit 0, its reason, and what it scored when it stopped."""
    results = tmp_path / "results"
    proc = run_cli(
        *TINY, "method=full", "targets=qkv", "lr=10", "max_steps=8", *store(tmp_path, results), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(results)
    assert rec["status"] == "diverged" and rec["steps"] <= 8, json.dumps(rec)[:2000]
    assert "exceeds 10 x its start" in rec["error"] or "loss is" in rec["error"]
    assert "accuracy" in rec["final"] and rec["history"][-1]["step"] == rec["steps"]  # evaluated then
