"""The MLflow tracker, on MLflow's own local store: an experiment per sweep with a parent run that
nests the sweep's runs, a lone run in the default experiment, a resumed run found again by its
run key and holding each step once, and a server that cannot be reached costing one line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from qvtune.config.rates import learning_rates
from qvtune.track.mlflow_backend import RUN_KEY_TAG, SWEEP_TAG, tracking_uri
from qvtune.track.tracker import Trackers, open_trackers
from tests.helpers import make_config

pytest.importorskip("mlflow")

TRAIN = ("train/loss", "update_norm/q", "update_norm/k", "update_norm/v", "lr/qk", "lr/v", "lr/head")


def play(trackers: Trackers, steps: range, session: int) -> None:
    """A training loop's log calls (`session` tells the two copies of a step apart)."""
    for step in steps:
        trackers.log({name: step / 100 + session for name in TRAIN}, step)
        if step % 5 == 0:
            trackers.log({"eval/accuracy": step / 100}, step)


def session(results: Path, key: str, steps: range, status: str, *overrides: str) -> None:
    cfg = make_config(f"results_dir={results}", "trackers=[mlflow]", *overrides)
    trackers = open_trackers(cfg, key, learning_rates(cfg), results / key)
    assert list(trackers.backends) == ["mlflow"]
    play(trackers, steps, session=1 if status == "interrupted" else 2)
    summary = {"status": status, "best": {"accuracy": 0.2}, "final": {"accuracy": 0.2}, "steps": steps[-1]}
    trackers.finish(summary, 0 if status == "completed" else 1)


@pytest.mark.slow  # MLflow creates its SQLite store's tables through ~70 migrations: 10-20 s on 2 cores
def test_sweeps_nest_their_runs_and_a_resumed_run_logs_each_step_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    session(tmp_path, "a" * 12, range(1, 13), "interrupted", "sweep_name=s1")
    session(tmp_path, "a" * 12, range(11, 21), "completed", "sweep_name=s1")  # from its checkpoint at 10
    session(tmp_path, "b" * 12, range(1, 6), "completed", "sweep_name=s1", "lr=3e-4")
    session(tmp_path, "c" * 12, range(1, 6), "completed")

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    sweep, lone = (client.get_experiment_by_name(name) for name in ("s1", "qvtune"))
    assert sweep is not None and lone is not None
    runs: dict[str, Any] = {}
    for run in client.search_runs([sweep.experiment_id, lone.experiment_id]):
        runs[run.data.tags.get(RUN_KEY_TAG) or run.data.tags[SWEEP_TAG]] = run
    assert sorted(runs) == ["a" * 12, "b" * 12, "c" * 12, "s1"]  # one run per key: the resume found its own
    parent = runs["s1"].info.run_id
    assert runs["s1"].info.experiment_id == sweep.experiment_id
    for key in ("a" * 12, "b" * 12):
        assert runs[key].data.tags["mlflow.parentRunId"] == parent
        assert runs[key].info.experiment_id == sweep.experiment_id
    assert "mlflow.parentRunId" not in runs["c" * 12].data.tags
    assert runs["c" * 12].info.experiment_id == lone.experiment_id

    resumed = runs["a" * 12]
    assert resumed.info.status == "FINISHED" and resumed.data.tags["status"] == "completed"
    assert resumed.data.params["run_key"] == "a" * 12 and float(resumed.data.params["lr"]) == 1e-4
    assert float(runs["b" * 12].data.params["lr"]) == 3e-4
    history = {name: client.get_metric_history(resumed.info.run_id, name) for name in resumed.data.metrics}
    for name in TRAIN:
        assert [m.step for m in history[name]] == list(range(1, 21)), name
        # MLflow keeps every point: the replayed steps 11 and 12 keep their first copy
        values = {m.step: m.value for m in history[name]}
        assert values[12] == pytest.approx(12 / 100 + 1) and values[13] == pytest.approx(13 / 100 + 2)
    assert [m.step for m in history["eval/accuracy"]] == [5, 10, 15, 20]
    assert [m.step for m in history["summary/steps"]] == [12, 20]  # each session's, at its last step
    assert resumed.data.metrics["summary/best/accuracy"] == pytest.approx(0.2)


def test_the_store_is_the_setting_else_the_environment_else_a_file_beside_the_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(make_config(f"results_dir={tmp_path}")) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking_uri(make_config(f"results_dir={tmp_path}")) == "http://tracking:5000"
    cfg = make_config(f"results_dir={tmp_path}", "mlflow.tracking_uri=sqlite:////elsewhere/m.db")
    assert tracking_uri(cfg) == "sqlite:////elsewhere/m.db"


def test_a_server_that_cannot_be_reached_costs_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = make_config(
        f"results_dir={tmp_path}", "trackers=[mlflow,csv]", "mlflow.tracking_uri=http://127.0.0.1:9"
    )
    (tmp_path / "k").mkdir()
    with caplog.at_level(logging.WARNING, logger="qvtune.track"):
        trackers = open_trackers(cfg, "k" * 12, learning_rates(cfg), tmp_path / "k")
        play(trackers, range(1, 4), session=1)
        trackers.finish({"status": "completed"}, 0)
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("qvtune.track")]
    assert line.startswith("tracker mlflow: MlflowException: API request to http://127.0.0.1:9/")
    assert line.endswith("; the run goes on without it") and "\n" not in line
    assert (tmp_path / "k" / "metrics.csv").read_text().count("train/loss") == 3
