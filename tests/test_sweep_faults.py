"""Faults at the sweep level: a results_dir that cannot be written stops a sweep in one line before
anything is launched; a search's options given without that search are refused, not ignored; every
sweep ends with one line counting its runs by outcome, and exits 1 when a run was lost (recorded
failures and divergences are results: exit 0)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qvtune.store.identity import run_key
from qvtune.store.store import ResultsStore
from tests.helpers import make_config, run_cli

# tiny runs: 4 steps of 16 samples, on the CPU (so every run key is the fp32 one)
RUN = [
    "model=tiny-bert",
    "task=synthetic",
    "epochs=1",
    "batch_size=16",
    "task.synthetic.train_size=64",
    "task.synthetic.eval_size=16",
    "threads=1",
    "wandb.mode=disabled",
    "device=cpu",
]


def sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """A sweep of tiny runs, its store in tmp_path/results unless `args` say otherwise."""
    return run_cli(
        "-m",
        *RUN,
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={tmp_path / 'sweeps'}",
        *args,
        cwd=tmp_path,
        timeout=300,
    )


def summary(outcomes: str) -> str:
    return f"sweep ended: {outcomes}"


# ---------------------------------------------------------------------------------------------
# a results_dir that cannot be written


def can_write(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder`, made read-only by its mode, or for root (whom modes do not stop) by the immutable
    attribute (chattr +i); skips the test where neither holds."""
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    try:
        if can_write(folder) and shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if can_write(folder):
            pytest.skip("no way to make a folder read-only here: root, and no chattr +i on this file system")
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_unwritable_names_the_cause_and_creates_nothing(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    assert (
        ResultsStore(str(file)).unwritable()
        == f"results_dir={file}: Not a directory; expected a writable folder"
    )
    assert ResultsStore(str(file / "results")).unwritable() == (
        f"results_dir={file / 'results'}: Not a directory; expected a writable folder"
    )
    assert ResultsStore(str(tmp_path / "a" / "b")).unwritable() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # neither the folder nor a probe left
    with read_only(tmp_path / "ro"):
        problem = ResultsStore(str(tmp_path / "ro" / "results")).unwritable()
        assert problem and problem.endswith("; expected a writable folder")


@pytest.mark.parametrize("kind", ["a file", "under a file", "read-only"])
def test_a_results_dir_that_cannot_be_written_stops_the_sweep_in_one_line(tmp_path: Path, kind: str) -> None:
    file = tmp_path / "file"
    file.write_text("")
    results = {"a file": file, "under a file": file / "results", "read-only": tmp_path / "ro" / "results"}[
        kind
    ]
    with read_only(tmp_path / "ro") if kind == "read-only" else contextlib.nullcontext():
        proc = sweep(tmp_path, "lr=1e-2,2e-2", f"results_dir={results}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: results_dir={results}: ")
    assert errors[0].endswith("; expected a writable folder")
    assert errors[1:] == ["error: 1 problem(s) in the sweep; nothing was launched"]
    assert "Traceback" not in proc.stderr and "Launching" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# a search's options without their search


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["hydra.sweeper.halving.eta=1"],
            "error: hydra.sweeper.halving.eta=1: halving options need hydra.sweeper.search=halving",
        ),
        (
            ["hydra.sweeper.search=halving", "hydra.sweeper.optuna.lr=[0.001,0.01]"],
            "error: hydra.sweeper.optuna.lr=[0.001,0.01]: optuna options need hydra.sweeper.search=optuna",
        ),
    ],
)
def test_search_options_without_their_search_stop_the_sweep(
    tmp_path: Path, args: list[str], line: str
) -> None:
    proc = sweep(tmp_path, "lr=1e-2,2e-2", *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert line in proc.stderr.splitlines()
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------
# the closing line and the exit status


def test_recorded_outcomes_are_counted_and_exit_0(tmp_path: Path) -> None:
    """A run that completes, one that diverges (lr=100), one that fails in its run (an activation
    that does not exist): each a record, and the sweep exits 0."""
    grids = "[{lr: 0.01}, {lr: 100}, {+model.arch.hidden_act: bogus}]"
    proc = sweep(tmp_path, f"hydra.sweeper.grids={grids}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = summary("3 runs: 1 completed, 0 paused, 1 diverged, 1 failed, 0 skipped, 0 lost")
    assert proc.stdout.splitlines()[-1] == line, proc.stdout[-3000:]


def test_a_run_lost_outside_its_run_is_counted_and_exits_1(tmp_path: Path) -> None:
    """A folder where the second run's log file goes: its job raises before the run writes a
    record (the launcher returns it failed); the other run completes."""
    lost = run_key(make_config(*RUN, "lr=0.02"), "fp32")
    (tmp_path / "results" / lost / "run.log").mkdir(parents=True)
    proc = sweep(tmp_path, "lr=0.01,0.02")
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = summary("2 runs: 1 completed, 0 paused, 0 diverged, 0 failed, 0 skipped, 1 lost")
    assert proc.stdout.splitlines()[-1] == line, proc.stdout[-3000:]
    assert "lr=0.02 failed before writing a record" in proc.stdout + proc.stderr
    assert not (tmp_path / "results" / lost / "result.json").exists()
