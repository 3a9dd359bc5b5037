"""The run record (`result.json`) and the results store that holds one folder per run key.

This module imports nothing heavy: the collector and `plan=true` read the store on a laptop far
from the GPUs. A record is plain JSON; its fields (schema version 1):

    schema          1
    run_key         12 hex digits, qvtune.config.run_key of the config
    status          "running" | "completed" | "diverged" | "failed"
    error           null, or the reason of a failure / divergence (a failure also keeps its `traceback`)
    config          the resolved RunConfig (model.name, task.name, method.name, targets "qv", rank, lr, ...)
    rates           {"qk": eta_QK, "v": eta_V, "head": head lr, "lam": lambda}
    params          {"total": int, "trainable": int, "groups": [{"group", "lr", "tensors", "params"}, ...]}
    metric          name of the task's headline metric (e.g. "accuracy", "matthews", "pearson")
    history         [{"step": int, "epoch": float, "metrics": {name: value, ...}}, ...]  dev evaluations
    final, best     {name: value} at the last evaluation / at the evaluation with the best headline metric
    train_loss      [[step, loss], ...]
    update_norms    [[step, |dW_q|, |dW_k|, |dW_v|], ...]  Frobenius norms of the accumulated updates
    lr_trace        [[step, lr_qk, lr_v, lr_head], ...]  the learning rates the optimizer applied
    steps, samples  optimizer steps and training samples seen
    timing          {"wall_s", "setup_s", "load_s", "data_s", "train_s", "eval_s", "samples_per_s", "tokens_per_s"}
                    wall_s from the run's start (its imports included) to its end; setup_s the part
                    before training (imports, model, data): a process's first run pays the imports
    peak_rss_mb     peak resident memory of the process
    sweep           the sweep name or null
    host, started_at, finished_at, qvtune_version
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".lock"
FINISHED = ("completed", "diverged")  # a re-launch skips these; "failed" runs again


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class RunState:
    """What the store knows of one run key."""

    state: str  # pending | running | interrupted | completed | diverged | failed
    record: Optional[dict[str, Any]]

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class ResultsStore:
    """One folder per run key under `root`: result.json, the run's log, its latest checkpoint.

    A run holds an exclusive lock on its folder while it works, so two sweeps writing into one
    store never run the same key twice at once, and a record that says "running" while nobody
    holds the lock belongs to a run that was killed: it resumes from its checkpoint.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()

    def run_dir(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> Optional[dict[str, Any]]:
        path = self.run_dir(key) / RESULT_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def write(self, key: str, record: dict[str, Any]) -> None:
        write_json_atomic(self.run_dir(key) / RESULT_FILE, record)

    def state(self, key: str) -> RunState:
        try:
            record = self.read(key)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return RunState("interrupted", None)
        if record is None:
            return RunState("pending", None)
        status = record.get("status")
        if status == "running":
            return RunState("running" if self.is_locked(key) else "interrupted", record)
        return RunState(status if status in ("completed", "diverged", "failed") else "interrupted", record)

    def is_locked(self, key: str) -> bool:
        lock = self.run_dir(key) / LOCK_FILE
        if not lock.exists():
            return False
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    return True
                raise
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Hold the run's lock for the duration; yields False when another process holds it."""
        folder = self.run_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / LOCK_FILE, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def result_files(self) -> list[Path]:
        """Every result.json below the root (run folders, and sweep folders that hold run folders)."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.rglob(RESULT_FILE))
