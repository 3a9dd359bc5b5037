"""The words for where a run stands: what its record says (Status) and what the store knows of its
key (State). Nothing is imported: every stage, the collector included, uses them."""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A status word: equal to its string, and printed as it (f-strings, JSON, pandas columns)."""

    def __str__(self) -> str:
        return self.value


class Status(_Word):
    """What a record says of its run, in the collector's order of preference among duplicates."""

    COMPLETED = "completed"
    DIVERGED = "diverged"  # stopped by the divergence check; it counts with what it scored
    # stopped at `until` (a rung of a search) with its checkpoint: a launch with a larger one resumes it
    PAUSED = "paused"
    RUNNING = "running"  # at work, or killed: the store tells them apart by the run's lock
    FAILED = "failed"  # an exception, its reason in `error`; a re-launch runs it again


class State(_Word):
    """What the store knows of a run key, from the most advanced: its record's status; interrupted
    for a record that says running while nobody holds the run's lock, or one that cannot be used (a
    killed run: it resumes from its checkpoint); pending when there is no record."""

    COMPLETED = "completed"
    DIVERGED = "diverged"
    PAUSED = "paused"
    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    PENDING = "pending"


FINISHED = (State.COMPLETED, State.DIVERGED)  # a re-launch skips these

# a launch runs these, and a paused run that has not reached the launch's `until` (see `reached`)
TO_RUN = (State.PENDING, State.FAILED, State.INTERRUPTED)
