"""A continuous search over log eta_QK and log lambda with Optuna's ask-and-tell interface.

Hydra's own Optuna sweeper pins optuna < 3 and waits for every job of a batch anyway; qvtune's
sweeper (hydra_plugins/qvtune_sweeper) asks this study for a batch of trials, launches the batch as
one batch of jobs through the configured launcher, and tells the study each trial's value: the
seed-mean of the headline metric at the full budget. A trial with a seed that diverged or failed is
told failed (TPE learns nothing from it). Points are rounded to three significant digits, so a
trial is an ordinary run with readable overrides (`lr=0.000731 lam=5.42`) and an ordinary key.

The study lives in an Optuna journal file beside the search's answer, so a re-launch goes on: the
trials that were asked but never told (the launch was interrupted) are launched again first, and
their runs are in the store, so what finished is skipped and the rest resume from checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from qvtune.config.rates import rounded

Range = tuple[float, float]


@dataclass(frozen=True)
class Point:
    """One trial: its number in the study and the rates it runs."""

    number: int
    lr: float  # eta_QK
    lam: float  # lambda = eta_V / eta_QK


def validate(
    trials: int,
    batch: int,
    seeds: Optional[int],
    startup: Optional[int],
    ranges: Mapping[str, Optional[Sequence[float]]],
) -> list[str]:
    """Every problem with the optuna options, one line each."""
    errors = []
    counts = {"trials": (trials, "the number of trials"), "batch": (batch, "the trials per launch")}
    for name, (n, what) in counts.items():
        if n < 1:
            errors.append(f"hydra.sweeper.optuna.{name}={n}: expected {what}, an integer >= 1")
    if seeds is not None and seeds < 1:
        errors.append(
            f"hydra.sweeper.optuna.seeds={seeds}: expected how many of the sweep's seeds a trial runs "
            "(>= 1), or null for all"
        )
    if startup is not None and startup < 0:
        errors.append(
            f"hydra.sweeper.optuna.startup={startup}: expected the random trials before TPE (>= 0), "
            "or null for one batch"
        )
    for name, bounds in ranges.items():
        if bounds is None:
            continue
        ok = len(bounds) == 2 and all(math.isfinite(b) and b > 0 for b in bounds) and bounds[0] < bounds[1]
        if not ok:
            errors.append(
                f"hydra.sweeper.optuna.{name}=[{','.join(f'{b:g}' for b in bounds)}]: expected [low, high] "
                "with 0 < low < high, or null for the grid's range"
            )
    return errors


def open_study(path: Path, name: str, sampler_seed: int, startup: int) -> optuna.Study:
    """The study in its journal file, created or loaded: TPE over the two log-scaled rates, its first
    `startup` trials at random, a batch asked with the trials in flight as 'constant liars'."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path)))
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=startup, constant_liar=True)
    return optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
    )


def ask(study: optuna.Study, lr: Range, lam: Range) -> Point:
    """A new trial, its rates rounded (and kept as the trial's user attributes)."""
    trial = study.ask({"lr": FloatDistribution(*lr, log=True), "lam": FloatDistribution(*lam, log=True)})
    point = Point(trial.number, rounded(trial.params["lr"], 3), rounded(trial.params["lam"], 3))  # readable
    trial.set_user_attr("lr", point.lr)
    trial.set_user_attr("lam", point.lam)
    return point


def _point(trial: optuna.trial.FrozenTrial) -> Point:
    return Point(trial.number, float(trial.user_attrs["lr"]), float(trial.user_attrs["lam"]))


def pending(study: optuna.Study) -> list[Point]:
    """The trials asked but not told: an interrupted launch's."""
    return [_point(t) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]


def next_batch(study: optuna.Study, trials: int, batch: int, lr: Range, lam: Range) -> list[Point]:
    """What to launch now: the pending trials if any, else up to `batch` new ones while the study has
    fewer than `trials`; empty when the search is done."""
    todo = pending(study)
    if todo:
        return todo
    return [ask(study, lr, lam) for _ in range(min(batch, trials - len(study.trials)))]


def tell(study: optuna.Study, number: int, value: Optional[float]) -> None:
    """A trial's value; None (a seed diverged, failed or did not finish): the trial failed."""
    if value is None:
        study.tell(number, state=TrialState.FAIL)
    else:
        study.tell(number, value)


def told(study: optuna.Study) -> list[tuple[Point, Optional[float]]]:
    """Every finished trial in order, with its value (None: failed)."""
    return [
        (_point(t), t.value if t.state is TrialState.COMPLETE else None)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    ]


def best(study: optuna.Study) -> Optional[Point]:
    """The trial with the highest value, ties to the earlier trial; None when none has a value."""
    done = [(p, v) for p, v in told(study) if v is not None]
    return max(done, key=lambda pv: (pv[1], -pv[0].number))[0] if done else None
