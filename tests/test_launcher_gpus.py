"""The `gpus` launcher (hydra_plugins/qvtune_launcher): slots, queueing, failures, stopping, and
Hydra's own launcher test suites. GPUs are faked with `devices=[...]`: a job only sees the id."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.qvtune_launcher.gpus_launcher import GpusLauncher, Slot, plan_slots, visible_gpus

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "tests" / "launcher_app" / "app.py"
SEARCHPATH = f"hydra.searchpath=[file://{REPO / 'conf'}]"  # where hydra/launcher/gpus.yaml lives
CORES = sorted(os.sched_getaffinity(0))


def sweep(
    tmp_path: Path, *overrides: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the test app as a sweep with hydra/launcher=gpus; records go to tmp_path/rec."""
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        f"out={tmp_path / 'rec'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        SEARCHPATH,
        "hydra/launcher=gpus",
        *overrides,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "rec").glob("*.json"))]


def overlapping(recs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (a, b)
        for i, a in enumerate(recs)
        for b in recs[i + 1 :]
        if a["start"] < b["end"] and b["start"] < a["end"]
    ]


def test_discovery() -> None:
    assert GpusLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


def test_plan_slots() -> None:
    assert plan_slots([], None, [0, 1, 2, 3]) == [Slot(None, (0, 1, 2, 3))]
    assert plan_slots([], 3, [0, 1, 2, 3, 4, 5, 6]) == [
        Slot(None, (0, 1)),
        Slot(None, (2, 3)),
        Slot(None, (4, 5, 6)),
    ]
    assert plan_slots([], 3, [0, 1]) == [Slot(None, (0,)), Slot(None, (1,)), Slot(None, (0,))]
    assert plan_slots(["4", "6"], None, [0, 1, 2, 3]) == [Slot("4", (0, 1)), Slot("6", (2, 3))]
    assert [s.device for s in plan_slots(["4", "6"], 5, list(range(8)))] == ["4", "6", "4", "6", "4"]
    assert Slot("4", (2, 3)).env() == {
        "CUDA_VISIBLE_DEVICES": "4",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }
    assert Slot(None, (0,)).env()["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ValueError):
        plan_slots([], 0, [0, 1])


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 5,GPU-abc")
    assert visible_gpus() == ["2", "5", "GPU-abc"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,3")
    assert visible_gpus() == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


@pytest.mark.timeout(120)
def test_fake_gpus_one_device_per_concurrent_job_and_a_queue(tmp_path: Path) -> None:
    """4 jobs on 2 fake GPUs: never two at once on one device, never more than 2 at once, all run."""
    r = sweep(tmp_path, "hydra.launcher.devices=[7,3]", "+i=1,2,3,4", "sleep=2")
    assert r.returncode == 0, r.stderr
    recs = records(tmp_path)
    assert len(recs) == 4
    assert {x["cuda_visible_devices"] for x in recs} == {"7", "3"}
    pairs = overlapping(recs)
    assert pairs, "two slots never ran at the same time"
    assert all(a["cuda_visible_devices"] != b["cuda_visible_devices"] for a, b in pairs)
    if len(CORES) > 1:  # and the cores are split between them
        assert all(not set(a["affinity"]) & set(b["affinity"]) for a, b in pairs)
    for x in recs:  # at no job's start were more than 2 running
        assert sum(y["start"] <= x["start"] < y["end"] for y in recs) <= 2
    assert any(a["end"] <= b["start"] for a in recs for b in recs), "no job waited for a slot"


@pytest.mark.timeout(120)
def test_cpu_slots_split_the_cores_and_set_torch_threads(tmp_path: Path) -> None:
    """Without GPUs a slot is a core group: its affinity, OMP_NUM_THREADS and torch's thread count."""
    r = sweep(
        tmp_path, "hydra.launcher.devices=[]", f"hydra.launcher.slots={len(CORES)}", "+i=1,2", "torch=true"
    )
    assert r.returncode == 0, r.stderr
    recs = records(tmp_path)
    assert len(recs) == 2
    for x in recs:  # one core each
        assert x["cuda_visible_devices"] == ""
        assert len(x["affinity"]) == 1 and set(x["affinity"]) <= set(CORES)
        assert x["omp_num_threads"] == "1" and x["torch_threads"] == 1
    if len(CORES) > 1:
        assert not set(recs[0]["affinity"]) & set(recs[1]["affinity"])


@pytest.mark.timeout(120)
def test_default_on_a_cpu_machine_is_one_slot_with_every_core(tmp_path: Path) -> None:
    env = {"CUDA_VISIBLE_DEVICES": ""}  # what a machine without GPUs reports
    r = sweep(tmp_path, "+i=1,2", "sleep=1", env=env)
    assert r.returncode == 0, r.stderr
    recs = records(tmp_path)
    assert len(recs) == 2 and not overlapping(recs)
    assert all(x["affinity"] == CORES and x["omp_num_threads"] == str(len(CORES)) for x in recs)


@pytest.mark.timeout(120)
def test_failed_and_crashed_jobs_do_not_stop_the_others(tmp_path: Path) -> None:
    r = sweep(tmp_path, "hydra.launcher.slots=2", "mode=fail,crash,ok,ok")
    assert r.returncode != 0
    assert "job0 was asked to fail" in r.stderr
    assert [x["name"] for x in records(tmp_path)] == ["job2", "job3"]
    log = r.stdout + r.stderr
    assert "#1 failed" in log and "#2 completed" in log and "#3 completed" in log


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm", "sigkill"])
def test_stopping_the_launcher_stops_its_jobs(tmp_path: Path, how: str) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) and SIGTERM interrupt the jobs, which can clean
    up; a SIGKILLed launcher takes its jobs along. Either way no job outlives the launcher."""
    rec = tmp_path / "rec"
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        f"out={rec}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        SEARCHPATH,
        "hydra/launcher=gpus",
        "hydra.launcher.slots=2",
        "+i=1,2,3",
        "sleep=60",
    ]
    # as from a terminal: SIGINT handled even when the tests run in the background (`&` ignores it)
    launcher = subprocess.Popen(
        cmd,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    started = [rec / "job0.started", rec / "job1.started"]
    deadline = time.monotonic() + 60
    while not all(p.exists() and p.read_text() for p in started):
        assert time.monotonic() < deadline and launcher.poll() is None, "the jobs did not start"
        time.sleep(0.2)
    jobs = [int(p.read_text()) for p in started]
    time.sleep(0.5)  # into the sleep
    tic = time.monotonic()
    if how == "ctrl-c":
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        launcher.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    launcher.communicate(timeout=30)
    assert time.monotonic() - tic < 15
    assert launcher.returncode != 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in jobs):
        assert time.monotonic() < deadline, "a job outlived its launcher"
        time.sleep(0.2)
    if how != "sigkill":
        assert all((rec / f"job{i}.interrupted").exists() for i in (0, 1))
    assert not (rec / "job2.started").exists(), "a queued job started after the stop"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("launcher_name, overrides", [("gpus", [SEARCHPATH, "hydra.launcher.slots=2"])])
class TestGpusLauncher(LauncherTestSuite):
    """Hydra's launcher test suite, on the yaml (conf/hydra/launcher/gpus.yaml)."""


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {},
            [
                "-m",
                "hydra/hydra_logging=disabled",
                "hydra/job_logging=disabled",
                SEARCHPATH,
                "hydra/launcher=gpus",
            ],
        )
    ],
)
class TestGpusLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration test suite: the launcher from a real app's command line."""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_qvtune_sweep_on_two_slots_then_a_relaunch_runs_nothing(tmp_path: Path) -> None:
    """The demo-like sweep of qvtune itself on 2 slots: every run completes on its own share of the
    cores; launched again, the sweep finds every run finished and starts no job."""
    cmd = [
        sys.executable,
        "-m",
        "qvtune.run",
        "-m",
        "model=tiny-bert",
        "task=synthetic",
        "targets=q,v,qv",
        "epochs=1",
        "max_train_samples=128",
        "max_eval_samples=64",
        "wandb.mode=disabled",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        "hydra/launcher=gpus",
        "hydra.launcher.devices=[]",
        "hydra.launcher.slots=2",
    ]
    r = subprocess.run(
        cmd + [f"hydra.sweep.dir={tmp_path / 'sweep1'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    recs = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")}
    assert sorted(x["config"]["targets"] for x in recs.values()) == ["q", "qv", "v"]
    assert all(x["status"] == "completed" for x in recs.values()), [x["error"] for x in recs.values()]
    shares = {len(s.cores) for s in plan_slots([], 2, CORES)}
    assert all(x["threads"] in shares for x in recs.values())

    r = subprocess.run(
        cmd + [f"hydra.sweep.dir={tmp_path / 'sweep2'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Launching" not in r.stdout + r.stderr  # the launcher was not even called
    again = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/result.json")}
    assert {k: x["finished_at"] for k, x in again.items()} == {k: x["finished_at"] for k, x in recs.items()}
