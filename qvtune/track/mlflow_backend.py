"""MLflow: one experiment per sweep (lone runs share "qvtune"), a parent run per sweep with each of
its runs nested under it, the config as params. Sweep jobs are separate processes, so the parent
is found by a tag, and a resumed run is found again by its run-key tag.

MLflow keeps every point of a metric's history and has no call to remove one, so a resumed run
skips the steps of each metric its run already holds (the replay of a deterministic resume gives
the same values): no step is logged twice.

The store is `mlflow.tracking_uri`, else MLFLOW_TRACKING_URI, else MLflow's own local kind beside
the results: an SQLite file, sqlite:///<results_dir>/mlflow.db (`mlflow ui --backend-store-uri` it).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from qvtune.config.rates import LearningRates
from qvtune.config.schema import RunConfig, parse_targets
from qvtune.track.common import leaves, numbers, resolved_config, run_name

DEFAULT_EXPERIMENT = "qvtune"

RUN_KEY_TAG = "qvtune.run_key"  # on each run: its run key

SWEEP_TAG = "qvtune.sweep"  # on a sweep's parent run: the sweep name

PARAMS_PER_CALL = 100  # MLflow's limit on the params of one log_batch


def tracking_uri(cfg: RunConfig) -> str:
    """The store a run logs to (see the module docstring)."""
    db = Path(cfg.results_dir).expanduser().resolve() / "mlflow.db"
    return cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{db}"


def store_lock(uri: str) -> contextlib.AbstractContextManager[Any]:
    """A file lock beside an SQLite store while a run opens it: sweep jobs starting together would
    otherwise each create MLflow's tables, or each the sweep's parent run."""
    path = uri.removeprefix("sqlite:///")
    return FileLock(f"{path}.lock") if uri.startswith("sqlite:///") and path else contextlib.nullcontext()


class MlflowBackend:
    def __init__(self, cfg: RunConfig, key: str, rates: LearningRates, run_dir: Path):
        from mlflow.tracking import MlflowClient

        uri = tracking_uri(cfg)
        self.client = MlflowClient(tracking_uri=uri)
        self.step = 0  # the latest step logged, where the summary goes
        self.last: dict[str, int] = {}  # metric -> the latest step its run holds, for a resumed run
        with store_lock(uri):
            experiment = self._experiment(cfg.mlflow.experiment or cfg.sweep_name or DEFAULT_EXPERIMENT)
            found = self.client.search_runs([experiment], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
            if found:
                self.run_id = found[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                self._resume_points(found[0].data.metrics)
            else:
                self.run_id = self._create(cfg, key, rates, experiment)

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # a job beside this one (on a tracking server) created it meanwhile
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _create(self, cfg: RunConfig, key: str, rates: LearningRates, experiment: str) -> str:
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        tags = {
            RUN_KEY_TAG: key,
            "model": cfg.model.name,
            "task": cfg.task.name,
            "method": cfg.method.name,
            "targets": parse_targets(cfg.targets),
        }
        if cfg.sweep_name:
            tags[MLFLOW_PARENT_RUN_ID] = self._parent(experiment, cfg.sweep_name)
        run_id: str = self.client.create_run(experiment, run_name=run_name(cfg, rates), tags=tags).info.run_id
        # params never change once logged, so only a new run logs them (a resumed run may have
        # other logging settings)
        params = [
            Param(name, value if isinstance(value, str) else json.dumps(value))
            for name, value in leaves(resolved_config(cfg, key), sep=".").items()
        ]
        for i in range(0, len(params), PARAMS_PER_CALL):
            self.client.log_batch(run_id, params=params[i : i + PARAMS_PER_CALL])
        return run_id

    def _parent(self, experiment: str, sweep: str) -> str:
        """The sweep's parent run, created by the first of its jobs to need it. Two jobs that both
        created one (on a tracking server, where no lock is shared) keep the older."""
        query = f"tags.`{SWEEP_TAG}` = '{sweep}'"
        order = ["attributes.start_time ASC"]
        found = self.client.search_runs([experiment], query, order_by=order, max_results=1)
        if found:
            return str(found[0].info.run_id)
        mine: str = self.client.create_run(experiment, run_name=sweep, tags={SWEEP_TAG: sweep}).info.run_id
        self.client.set_terminated(mine)  # it only groups its children: nothing runs in it
        oldest = self.client.search_runs([experiment], query, order_by=order, max_results=1)
        first = str(oldest[0].info.run_id)
        if first != mine:
            self.client.delete_run(mine)
        return first

    def _resume_points(self, metrics: dict[str, float]) -> None:
        for name in metrics:
            history = self.client.get_metric_history(self.run_id, name)
            self.last[name] = max(m.step for m in history)
        self.step = max(self.last.values(), default=0)

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [Metric(k, float(v), now, step) for k, v in values.items() if step > self.last.get(k, -1)]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)
        self.step = step

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, self.step) for k, v in numbers(summary).items()]
        tags = [RunTag("status", str(summary["status"]))] if "status" in summary else []
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.run_id, "FINISHED" if exit_code == 0 else "FAILED")
