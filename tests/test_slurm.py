"""Sweeps through a real Slurm cluster with `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml).

The launcher alone (tests/launcher_app): a job array, and a task past its time limit that submitit
requeues and that resumes from its own checkpoint. qvtune: a sweep on Slurm gives the records of a
local sweep; a run cancelled with scancel, and a run past its time limit, resume from their
checkpoint while finished runs are left alone.

Needs a cluster whose partition `debug` (QVTUNE_SLURM_PARTITION) is up, with accounting (`sacct`:
submitit learns of cancelled jobs from it). The yaml asks for a GPU and 64 GB; the tests override
both, so one CPU-only node is enough. Skipped without a cluster, unless QVTUNE_REQUIRE_SLURM=1.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "tests" / "launcher_app" / "app.py"
PARTITION = os.environ.get("QVTUNE_SLURM_PARTITION", "debug")


def cluster_problem() -> Optional[str]:
    """Why jobs cannot run on the cluster, or None."""
    for tool in ("sinfo", "sbatch", "sacct", "scancel"):
        if shutil.which(tool) is None:
            return f"{tool} is not on PATH"
    try:
        info = subprocess.run(
            ["sinfo", "-h", "-p", PARTITION, "-o", "%a %T"], capture_output=True, text=True, timeout=30
        )
        acct = subprocess.run(
            ["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired as e:
        return f"{e.cmd[0]} did not answer in 30 s (is slurmctld / slurmdbd running?)"
    if info.returncode:
        return f"sinfo failed: {info.stderr.strip()}"
    if not any(
        line.split()[0] == "up"
        and line.split()[1].rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
        for line in info.stdout.splitlines()
    ):
        return f"partition {PARTITION!r} has no node up: {info.stdout.strip() or 'no such partition'}"
    if acct.returncode:
        return f"sacct failed (accounting off?): {acct.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    problem = cluster_problem()
    if problem and os.environ.get("QVTUNE_REQUIRE_SLURM") == "1":
        pytest.fail(f"QVTUNE_REQUIRE_SLURM=1 but the Slurm cluster is not usable: {problem}", pytrace=False)
    if problem:
        pytest.skip(f"no usable Slurm cluster: {problem}")


def slurm(name: str, sweep_dir: Path, timeout_min: int = 10) -> list[str]:
    """hydra/launcher=slurm on a small CPU node: no GPU, 1 core and 1 GB per task, a named job."""
    return [
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={PARTITION}",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1",
        f"hydra.launcher.timeout_min={timeout_min}",
        f"hydra.launcher.name={name}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


@pytest.fixture
def name() -> Iterator[str]:
    """The test's Slurm job name; whatever of it is still queued or running at the end is cancelled."""
    job = f"qvtune-test-{uuid.uuid4().hex[:8]}"
    yield job
    subprocess.run(["scancel", f"--name={job}"], capture_output=True, timeout=30)


def qvtune(tmp_path: Path, results: str, *overrides: str) -> list[str]:
    """A qvtune sweep of tiny-bert on the synthetic task, one thread per run, offline."""
    return [
        sys.executable,
        "-m",
        "qvtune.run",
        "-m",
        "model=tiny-bert",
        "task=synthetic",
        "wandb.mode=disabled",
        "threads=1",
        f"results_dir={tmp_path / results}",
        f"cache_dir={tmp_path / 'cache'}",
        *overrides,
    ]


def run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def records(results: Path) -> dict[str, dict[str, Any]]:
    """run key -> result.json of every run in a results store."""
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("*/result.json")}


def wait_for(what: str, condition: Callable[[], Any], timeout: float, poll: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll)
    return value


@contextlib.contextmanager
def releasing_requeued(name: str) -> Iterator[list[str]]:
    """Start the requeued tasks of job `name` at once. Slurm holds a requeued job for about two
    minutes (reason BeginTime) before it may start again; the tests do not need to wait that out."""
    released: list[str] = []
    stop = threading.Event()

    def release() -> None:
        while not stop.wait(2.0):
            queue = subprocess.run(
                ["squeue", "-h", "-n", name, "-t", "PD", "-o", "%i %r"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            for job, reason in (line.split(maxsplit=1) for line in queue.splitlines() if " " in line):
                if reason.strip() == "BeginTime":
                    subprocess.run(
                        ["scontrol", "update", f"JobId={job}", "StartTime=now"],
                        capture_output=True,
                        timeout=30,
                    )
                    released.append(job)

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield released
    finally:
        stop.set()
        thread.join()


def array_tasks(sweep_dir: Path) -> list[str]:
    """The Slurm ids of a launch's tasks (<array>_<index>, or <job> for a launch of one), from
    submitit's folder."""
    dirs = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir())
    return [d for d in dirs if "_" in d] or dirs


def sacct_states(job: str, settle_s: float = 60) -> list[str]:
    """The job's accounting states, once they settle: slurmdbd can lag behind the jobs' own end."""
    deadline = time.monotonic() + settle_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "--duplicates", "-j", job, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        states = out.split()
        if (states and not {"PENDING", "RUNNING", "COMPLETING"} & set(states)) or time.monotonic() > deadline:
            return states
        time.sleep(1)


@pytest.mark.timeout(240)
def test_app_sweep_runs_as_one_job_array(tmp_path: Path, name: str) -> None:
    sweep = tmp_path / "sweep"
    r = run(
        [
            sys.executable,
            str(APP),
            "-m",
            f"out={tmp_path / 'rec'}",
            f"hydra.searchpath=[file://{REPO / 'conf'}]",
            "+i=1,2,3",
            *slurm(name, sweep),
        ],
        tmp_path,
        timeout=200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "rec").glob("*.json"))]
    assert [x["name"] for x in recs] == ["job0", "job1", "job2"]
    assert all(x["slurm_job_id"] for x in recs)
    tasks = array_tasks(sweep)
    array = tasks[0].split("_")[0]
    assert tasks == [f"{array}_{i}" for i in range(3)], tasks
    assert set(sacct_states(array)) == {"COMPLETED"}


@pytest.mark.timeout(420)
def test_app_task_past_its_time_limit_is_requeued_and_resumes(tmp_path: Path, name: str) -> None:
    """75 s of work under a 1-minute limit: submitit's requeue (max_num_timeout of slurm.yaml)
    restarts the task, which resumes from its progress file. signal_delay_s=1: Slurm checks time limits
    every 30 s and sends USR2 once at most the delay + 30 s remain, here 29-59 s into the task; with
    the yaml's 120 s it could come in the task's first second, before submitit handles it, and kill it."""
    sweep, rec = tmp_path / "sweep", tmp_path / "rec"
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        f"out={rec}",
        f"hydra.searchpath=[file://{REPO / 'conf'}]",
        "+i=1",
        "work_s=75",
        *slurm(name, sweep, timeout_min=1),
        "hydra.launcher.signal_delay_s=1",
    ]
    with releasing_requeued(name) as released:
        r = run(cmd, tmp_path, timeout=380)
    assert r.returncode == 0, r.stderr[-3000:]
    assert released, "the task was never requeued"
    assert (rec / "job0.json").exists()
    assert float((rec / "job0.progress").read_text()) == 75
    starts = (rec / "job0.starts").read_text().split()
    assert len(starts) >= 2
    (task,) = array_tasks(sweep)
    assert "REQUEUED" in sacct_states(task) and sacct_states(task)[-1] == "COMPLETED"


@pytest.mark.timeout(480)
def test_qvtune_sweep_on_slurm_gives_the_records_of_a_local_sweep(tmp_path: Path, name: str) -> None:
    demo = ["targets=q,v,qv", "epochs=1", "max_train_samples=128", "max_eval_samples=64"]
    r = run(qvtune(tmp_path, "slurm", *demo, *slurm(name, tmp_path / "sweep-slurm")), tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(
        qvtune(tmp_path, "local", *demo, f"hydra.sweep.dir={tmp_path / 'sweep-local'}"), tmp_path, timeout=150
    )
    assert r.returncode == 0, r.stderr[-3000:]
    on_slurm, local = records(tmp_path / "slurm"), records(tmp_path / "local")
    assert len(on_slurm) == 3 and set(on_slurm) == set(local)
    for key, rec in on_slurm.items():
        assert rec["status"] == local[key]["status"] == "completed", rec["error"]
        assert rec["steps"] == local[key]["steps"]
        assert rec["final"] == pytest.approx(local[key]["final"], rel=1e-5, abs=1e-7)


# A run that takes a while on one core (every input padded to 128 tokens), checkpointed every 3 s.
LONG = ["padding=max", "max_len=128", "max_eval_samples=64", "checkpoint_minutes=0.05"]


@pytest.fixture(scope="module")
def steps_per_s(tmp_path_factory: pytest.TempPathFactory) -> float:
    """Training speed of a LONG run on one core of this machine now, from a short local run: the
    interrupted runs below are sized in seconds, which is what a cancel or a time limit cuts."""
    tmp = tmp_path_factory.mktemp("speed")
    r = run(
        qvtune(tmp, "results", "targets=qv", "max_steps=60", *LONG, f"hydra.sweep.dir={tmp / 'sweep'}"),
        tmp,
        180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = records(tmp / "results").values()
    return rec["steps"] / rec["timing"]["train_s"]


def steps_for(seconds: float, steps_per_s: float) -> int:
    return max(100, round(seconds * steps_per_s))


@pytest.mark.timeout(480)
def test_scancelled_run_resumes_when_the_sweep_is_relaunched(
    tmp_path: Path, name: str, steps_per_s: float
) -> None:
    """Cancel the sweep's last task once its run has a checkpoint: the launch fails, the re-launch
    resumes that run and leaves the finished one alone. (The last, since the launcher collects the
    tasks in order: an earlier failure would end the launch while later runs are still going.)"""
    results, steps = tmp_path / "results", steps_for(30, steps_per_s)
    cmd = qvtune(tmp_path, "results", "targets=q,v", f"max_steps={steps}", *LONG)
    with open(tmp_path / "launch1.log", "w") as log:
        first = subprocess.Popen(
            cmd + slurm(name, tmp_path / "sweep1"), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
        try:

            def v_checkpointed() -> Optional[str]:
                return next(
                    (
                        k
                        for k, x in records(results).items()
                        if x["config"]["targets"] == "v" and (results / k / "checkpoint.pt").exists()
                    ),
                    None,
                )

            v = wait_for("the v run's first checkpoint", v_checkpointed, timeout=180)
            task = wait_for(
                "the v run's Slurm task",
                lambda: next((p.name for p in (tmp_path / "sweep1" / ".submitit").glob("*_1")), None),
                timeout=30,
            )
            subprocess.run(["scancel", task], check=True, timeout=30)
            assert first.wait(timeout=240) != 0
        finally:
            if first.poll() is None:
                first.kill()
    assert "CANCELLED" in sacct_states(task)[0]
    before = records(results)
    (q,) = [k for k in before if k != v]
    assert before[q]["status"] == "completed"
    # scancel's SIGTERM: the run checkpointed at a step boundary and says so
    assert before[v]["status"] == "interrupted" and before[v]["signal"] == "SIGTERM"
    assert (results / v / "checkpoint.pt").exists()

    r = run(cmd + slurm(name, tmp_path / "sweep2"), tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    after = records(results)
    assert after[q]["finished_at"] == before[q]["finished_at"]
    assert after[v]["status"] == "completed" and after[v]["steps"] == steps
    assert "(resuming from its checkpoint at step" in (results / v / "run.log").read_text()
    assert len(array_tasks(tmp_path / "sweep2")) == 1, "re-ran a finished run"


@pytest.mark.timeout(600)
def test_run_past_its_time_limit_is_requeued_and_resumes(
    tmp_path: Path, name: str, steps_per_s: float
) -> None:
    """70 s of training under a 1-minute limit (USR2 at 29-59 s, see the app's test above):
    requeued (slurm.yaml's max_num_timeout), the run resumes from its checkpoint and completes; a
    re-launch then has nothing to do."""
    results, steps = tmp_path / "results", steps_for(70, steps_per_s)
    cmd = qvtune(tmp_path, "results", "targets=qv", f"max_steps={steps}", *LONG)
    with releasing_requeued(name) as released:
        r = run(
            cmd + slurm(name, tmp_path / "sweep1", timeout_min=1) + ["hydra.launcher.signal_delay_s=1"],
            tmp_path,
            timeout=540,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    assert released, "the run finished within its time limit"
    (rec,) = records(results).values()
    assert rec["status"] == "completed" and rec["steps"] == steps
    assert "(resuming from its checkpoint at step" in (results / rec["run_key"] / "run.log").read_text()

    r = run(cmd + slurm(name, tmp_path / "sweep2"), tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert records(results)[rec["run_key"]]["finished_at"] == rec["finished_at"]
    assert not (tmp_path / "sweep2" / ".submitit").exists(), "re-ran a finished run"


@pytest.mark.timeout(600)
def test_halving_search_on_slurm_picks_from_its_records(tmp_path: Path, name: str) -> None:
    """A 2 x 2 grid, 2 seeds, rungs at 1/2 and 1: 8 Slurm jobs, then the best 2 cells' 4 again."""
    grid = [
        "targets=qv",
        "epochs=2",
        "max_train_samples=128",
        "max_eval_samples=64",
        "batch_size=16",
        "lr=1e-2,3e-2",
        "lr_v=3e-2,1e-1",
        "seed=0,1",
        "hydra.sweeper.search=halving",
        "hydra.sweeper.halving.eta=2",
        "hydra.sweeper.halving.min_fraction=0.5",
    ]
    r = run(qvtune(tmp_path, "slurm", *grid, *slurm(name, tmp_path / "sweep")), tmp_path, timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = list(records(tmp_path / "slurm").values())
    assert len(recs) == 8
    # ceil(4 / 2) cells go on to the full budget
    assert sorted(rec["status"] for rec in recs) == ["completed"] * 4 + ["paused"] * 4
    assert all(rec["steps"] == 8 for rec in recs if rec["status"] == "paused")  # half of 16 steps
    (found,) = (tmp_path / "slurm" / "searches").glob("*.json")
    (group,) = json.loads(found.read_text())["groups"]
    done: dict[tuple[float, float], list[float]] = {}
    for rec in recs:
        if rec["status"] == "completed":
            done.setdefault((rec["rates"]["qk"], rec["rates"]["v"]), []).append(rec["final"]["accuracy"])
    means = {cell: sum(v) / len(v) for cell, v in done.items()}
    assert group["pick"]["score"] == pytest.approx(max(means.values()))
    assert means[(group["pick"]["lr"], group["pick"]["lr_v"])] == pytest.approx(max(means.values()))


@pytest.mark.timeout(600)
def test_optuna_search_on_slurm_scores_each_trial_from_its_records(tmp_path: Path, name: str) -> None:
    """4 trials on seed 0 in batches of 2 (each batch one launch: a job array), then the best on seed 1."""
    grid = [
        "targets=qv",
        "epochs=1",
        "max_train_samples=128",
        "max_eval_samples=64",
        "batch_size=16",
        "lr=1e-2,3e-2",
        "lam=1,10",
        "seed=0,1",
        "hydra.sweeper.search=optuna",
        "hydra.sweeper.optuna.trials=4",
        "hydra.sweeper.optuna.batch=2",
        "hydra.sweeper.optuna.seeds=1",
    ]
    r = run(qvtune(tmp_path, "slurm", *grid, *slurm(name, tmp_path / "sweep")), tmp_path, timeout=540)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = list(records(tmp_path / "slurm").values())
    (found,) = (tmp_path / "slurm" / "searches").glob("*-optuna.json")
    (group,) = json.loads(found.read_text())["groups"]
    by_point = {(rec["config"]["lr"], rec["config"]["lam"], rec["config"]["seed"]): rec for rec in recs}
    assert len(recs) == len({(t["lr"], t["lam"]) for t in group["trials"]}) + 1
    for t in group["trials"]:
        assert t["score"] == by_point[(t["lr"], t["lam"], 0)]["final"]["accuracy"]
    pick = group["pick"]
    scores = [by_point[(pick["lr"], pick["lam"], s)]["final"]["accuracy"] for s in (0, 1)]
    assert pick["score"] == pytest.approx(sum(scores) / 2)
    assert pick["trial"] == max(group["trials"], key=lambda t: (t["score"], -t["trial"]))["trial"]


@pytest.mark.timeout(480)
def test_packed_sweep_on_slurm_trains_each_pack_as_one_array_task(tmp_path: Path, name: str) -> None:
    """A 2 x 2 grid in packs of 2: two array tasks, four records equal to a local unpacked sweep's."""
    grid = [
        "targets=qv",
        "epochs=1",
        "max_train_samples=128",
        "max_eval_samples=64",
        "attention_dropout=0",
        "+model.arch.hidden_dropout_prob=0",
        "lr=1e-2,3e-2",
        "lr_v=3e-2,1e-1",
    ]
    sweep = tmp_path / "sweep-slurm"
    r = run(
        qvtune(tmp_path, "slurm", *grid, "hydra.sweeper.pack=2", *slurm(name, sweep)), tmp_path, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(array_tasks(sweep)) == 2
    local = run(
        qvtune(tmp_path, "local", *grid, f"hydra.sweep.dir={tmp_path / 'sweep-local'}"), tmp_path, 150
    )
    assert local.returncode == 0, local.stderr[-3000:]
    on_slurm, alone = records(tmp_path / "slurm"), records(tmp_path / "local")
    assert len(on_slurm) == 4 and set(on_slurm) == set(alone)
    for key, rec in on_slurm.items():
        assert rec["status"] == "completed" and len(rec["packed_with"]) == 1, rec["error"]
        assert rec["final"] == pytest.approx(alone[key]["final"], rel=1e-5, abs=1e-7)
