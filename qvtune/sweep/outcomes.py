"""What became of a sweep's runs: the one line every sweep ends with, and the sweep's exit status.

A run the sweep launched ends completed, paused (at a rung's `until`, or the sweep's), diverged
or failed: each a record, a result, and the sweep exits 0. A run whose job raised outside the run
(the launcher returned a failed job), or that left no record or a `running` one nobody works on,
is lost: the sweep exits 1, and a re-launch runs it again. A run the sweep did not run (finished
already, paused at its `until`, or running in another process) is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from qvtune.status import Status
from qvtune.sweep.plan import Job, lookup

log = logging.getLogger(__name__)

OUTCOMES = ("completed", "paused", "diverged", "failed", "skipped", "lost")
RECORDED = (Status.COMPLETED, Status.PAUSED, Status.DIVERGED, Status.FAILED)  # results: named as they are
LOST_EXIT = 1  # the sweep's exit status when any run was lost


@dataclass(frozen=True)
class Summary:
    counts: dict[str, int]  # outcome -> runs, every one of OUTCOMES

    @property
    def line(self) -> str:
        """`sweep ended: 18 runs: 6 completed, 6 paused, 6 diverged, 0 failed, 0 skipped, 0 lost`."""
        parts = ", ".join(f"{self.counts[o]} {o}" for o in OUTCOMES)
        return f"sweep ended: {sum(self.counts.values())} runs: {parts}"

    @property
    def exit_code(self) -> int:
        return LOST_EXIT if self.counts["lost"] else 0


def outcome(job: Job, launched: Collection[str], failed: Collection[str], gpus: bool) -> str:
    """One run's outcome; a launched run's is what the store says of it now (one lookup)."""
    if job.key in failed:
        return "lost"
    if job.key not in launched:
        return "skipped"
    state = lookup(job.config, gpus)[1].state
    if state in RECORDED:
        return state.value
    if state is Status.RUNNING:  # another process holds it: claimed after the sweep looked
        return "skipped"
    log.error(f"run {job.key} ({' '.join(job.overrides)}) is lost: the store says {state} after its job")
    return "lost"


def summarize(runs: Sequence[Job], launched: Collection[str], failed: Collection[str], gpus: bool) -> Summary:
    """Count the sweep's runs (each run key once) by outcome: `launched` the keys the sweep launched,
    `failed` those whose launcher job failed (logged when it returned)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for job in {j.key: j for j in runs}.values():
        counts[outcome(job, launched, failed, gpus)] += 1
    return Summary(counts)
