"""The results store: one folder per run key, the lock a run holds on it while it works, and what
the store knows of a key (its record's status, interrupted, or pending)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout

from qvtune.config.budget import until_step
from qvtune.status import FINISHED, Status
from qvtune.store.record import LOCK_FILE, RESULT_FILE, RunRecord


class StoreError(Exception):
    """A store that cannot be written: the message is one line naming the path and the cause."""


def cause(error: OSError) -> str:
    """An OSError's cause in words ("No space left on device"), without the errno noise."""
    return error.strerror or str(error) or type(error).__name__


@dataclass(frozen=True)
class RunState:
    """What the store knows of one run key."""

    state: Status
    record: Optional[RunRecord]
    unreadable: Optional[str] = None  # why its result.json cannot be used (it is run again)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def reached(self, until: Optional[float]) -> bool:
        """Whether the run needs no launch with this `until`: finished, or paused at or past it."""
        if self.finished:
            return True
        if self.state is not Status.PAUSED or self.record is None or self.record.planned_steps is None:
            return False
        return self.record.steps >= until_step(until, self.record.planned_steps)


def result_files(root: Path) -> list[str]:
    """Paths (relative to `root`, '/'-separated, sorted) of every result.json below it: in run
    folders, and in sweep folders that hold run folders."""
    found = []
    prefix = len(str(root)) + 1
    for folder, _, files in os.walk(root):
        if RESULT_FILE in files:
            rel = f"{folder[prefix:]}/{RESULT_FILE}" if len(folder) >= prefix else RESULT_FILE
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


class ResultsStore:
    """One folder per run key under `root`: result.json, curves.json, the run's log, its latest checkpoint.

    A run holds an exclusive lock on its folder while it works, so two sweeps writing into one
    store never run the same key twice at once, and a record that says "running" while nobody
    holds the lock belongs to a run that was killed: it resumes from its checkpoint.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser()

    def run_dir(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> Optional[RunRecord]:
        """The key's record (without curves), None when there is none; raises ValueError when unusable."""
        try:
            return RunRecord.read(self.run_dir(key) / RESULT_FILE)
        except FileNotFoundError:
            return None

    def write(self, record: RunRecord) -> None:
        """Write a run's record; raises StoreError (one line: the path and the cause) when it cannot."""
        folder = self.run_dir(record.run_key)
        try:
            record.write(folder)
        except OSError as e:
            message = f"cannot write the record of run {record.run_key} in {folder}: {cause(e)}"
            raise StoreError(message) from e

    def unwritable(self) -> Optional[str]:
        """Why runs cannot be stored under `root` (a path that is a file or under one, a read-only
        folder or file system), or None: checked before anything loads or launches, so a bad store
        costs a second, not a run. Nothing is created (plan=true writes nothing): a folder is made and
        removed in `root`, or in its nearest existing parent, to see that one can be."""
        path = Path(os.path.abspath(self.root))
        existing = next(p for p in (path, *path.parents) if os.path.lexists(p))
        try:
            if not existing.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            os.rmdir(tempfile.mkdtemp(prefix=".qvtune-probe-", dir=existing))
        except OSError as e:
            return f"results_dir={path}: {cause(e)}; expected a writable folder"
        return None

    def set_aside(self, key: str) -> Path:
        """Move an unreadable result.json aside (kept for inspection) so that the run starts afresh."""
        path = self.run_dir(key) / RESULT_FILE
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = path.with_name(f"{RESULT_FILE}.unreadable-{stamp}")
        path.rename(aside)
        return aside

    def state(self, key: str) -> RunState:
        try:
            record = self.read(key)
        except (ValueError, UnicodeDecodeError) as e:  # not JSON, or not a record: run it again
            return RunState(Status.INTERRUPTED, None, unreadable=str(e) or type(e).__name__)
        if record is None:
            return RunState(Status.PENDING, None)
        if record.status is Status.RUNNING:
            return RunState(Status.RUNNING if self.is_locked(key) else Status.INTERRUPTED, record)
        return RunState(record.status, record)

    def _lock(self, key: str) -> FileLock:
        """The run's lock, taken without waiting (timeout 0): the caller learns at once who holds it."""
        return FileLock(self.run_dir(key) / LOCK_FILE, timeout=0)

    def is_locked(self, key: str) -> bool:
        """Whether a run of the key holds its lock (in another process, or in this one's `claim`)."""
        if not (self.run_dir(key) / LOCK_FILE).exists():
            return False
        lock = self._lock(key)
        try:
            lock.acquire()
        except Timeout:
            return True
        lock.release()
        return False

    @contextlib.contextmanager
    def claim(self, key: str) -> Iterator[bool]:
        """Hold the run's lock for the duration; yields False when another process holds it."""
        self.run_dir(key).mkdir(parents=True, exist_ok=True)
        lock = self._lock(key)
        try:
            lock.acquire()
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
