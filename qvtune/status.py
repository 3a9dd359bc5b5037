"""The one vocabulary of where a run stands, shared by the training loop (how a run ended), the
record (what it says), the store (what it knows of a key), the sweeper and the collector. Nothing is
imported: every stage, the collector included, uses it."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """Where a run stands, from the most advanced; equal to its string and printed as it (f-strings,
    JSON, pandas columns). A record says any of them but pending; the store says pending for a key
    without a record, and interrupted for a record that says running while nobody holds the run's
    lock (a killed run) or that cannot be read."""

    COMPLETED = "completed"
    DIVERGED = "diverged"  # stopped by the divergence check; it counts with what it scored
    # stopped at `until` (a rung of a search) with its checkpoint: a launch with a larger one resumes it
    PAUSED = "paused"
    RUNNING = "running"  # at work, or killed: the store tells them apart by the run's lock
    INTERRUPTED = "interrupted"  # stopped by a signal or killed, its checkpoint kept: a re-launch resumes it
    FAILED = "failed"  # an exception, its reason in `error`; a re-launch runs it again
    PENDING = "pending"  # no record yet

    def __str__(self) -> str:
        return self.value


FINISHED = (Status.COMPLETED, Status.DIVERGED)  # a re-launch skips these
# a launch runs these, and a paused run that has not reached the launch's `until` (see RunState.reached)
TO_RUN = (Status.PENDING, Status.FAILED, Status.INTERRUPTED)
# a launch resumes these from their checkpoint
RESUMABLE = (Status.RUNNING, Status.INTERRUPTED, Status.PAUSED)
