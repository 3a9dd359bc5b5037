"""The training loop's arithmetic without a model: the learning-rate factor, the divergence stop and the
number of optimizer steps. Every expected number is worked out by hand in the test."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest

from qvtune.config.budget import Budget, budget
from qvtune.train.loop import LOSS_WINDOW, TrainState, check_divergence, lr_factor
from tests.helpers import make_config

# ---------------------------------------------------------------------------------------------
# lr_factor(step, warmup, total, kind)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1 / 5),  # warmup 4: (step + 1) / (warmup + 1)
        (1, 2 / 5),
        (2, 3 / 5),
        (3, 4 / 5),
        (4, 1.0),  # warmup over: (10 - 4) / (10 - 4)
        (5, 5 / 6),  # linear decay over the 6 steps after warmup
        (7, 3 / 6),
        (9, 1 / 6),  # the last step of the run still trains
        (10, 0.0),  # zero at `total`
        (13, 0.0),  # and never negative after it
    ],
)
def test_linear_schedule_with_warmup(step: int, expected: float) -> None:
    assert lr_factor(step, 4, 10, "linear") == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_linear_schedule_without_warmup_decays_from_one_to_zero() -> None:
    # total 8: factor (8 - s) / 8
    assert [lr_factor(s, 0, 8, "linear") for s in range(9)] == pytest.approx(
        [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    )


def test_warmup_ramps_strictly_up_then_linear_strictly_down() -> None:
    factors = [lr_factor(s, 3, 12, "linear") for s in range(13)]
    assert factors[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert factors[3] == 1.0
    assert all(a < b for a, b in zip(factors[:4], factors[1:4]))
    assert all(a > b for a, b in zip(factors[3:], factors[4:]))
    assert factors[-1] == 0.0


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 1 / 3), (1, 2 / 3), (2, 1.0), (9, 1.0), (10, 1.0), (100, 1.0)]
)
def test_constant_schedule_warms_up_then_holds(step: int, expected: float) -> None:
    assert lr_factor(step, 2, 10, "constant") == pytest.approx(expected, rel=1e-12)


def test_constant_schedule_without_warmup_is_one_everywhere() -> None:
    assert [lr_factor(s, 0, 5, "constant") for s in range(8)] == [1.0] * 8


# ---------------------------------------------------------------------------------------------
# check_divergence(state, loss, factor)


def feed(losses: list[float], factor: float, state: Optional[TrainState] = None) -> list[str]:
    """The status after each loss, fed in order to one state (its step advancing as in train)."""
    state = state if state is not None else TrainState()
    statuses = []
    for loss in losses:
        state.step += 1
        status, error = check_divergence(state, loss, factor)
        assert (error is None) == (status == "running")
        statuses.append(status)
    return statuses


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_diverges_at_once(bad: float) -> None:
    state = TrainState(step=7)
    status, error = check_divergence(state, bad, 10.0)
    assert status == "diverged" and str(bad) in error and "step 7" in error
    state = TrainState()
    assert feed([1.0, 1.1, 0.9, bad], 10.0, state) == ["running"] * 3 + ["diverged"]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_factor_zero_still_stops_on_non_finite_loss(bad: float) -> None:
    assert check_divergence(TrainState(), bad, 0.0)[0] == "diverged"


def test_without_a_measured_start_the_first_loss_is_the_start_and_later_losses_do_not_move_it() -> None:
    state = TrainState()
    feed([2.5, 0.1, 7.0, 3.0], 10.0, state)
    assert state.loss_start == 2.5 and state.recent_losses == [2.5, 0.1, 7.0, 3.0]
    feed([1.0] * 20, 10.0, state)
    assert state.loss_start == 2.5 and state.recent_losses == [1.0] * LOSS_WINDOW


def test_a_measured_start_is_kept() -> None:
    state = TrainState(loss_start=0.7)
    assert feed([0.05, 0.7, 0.69] + [0.68] * 30, 10.0, state) == ["running"] * 33
    assert state.loss_start == 0.7
    state = TrainState(step=40, loss_start=0.5, recent_losses=[0.5] * LOSS_WINDOW)  # from a checkpoint
    assert feed([0.6], 10.0, state) == ["running"] and state.loss_start == 0.5


def test_a_blow_up_shorter_than_the_window_is_caught() -> None:
    # 8 steps from a start of 0.7: the mean of the losses so far exceeds 10 x 0.7 at the 4th step,
    # long before a 10-step window would be full
    statuses = feed([0.7, 3.0, 9.0, 20.0, 40.0, 60.0, 80.0, 90.0], 10.0, TrainState(loss_start=0.7))
    assert statuses[:3] == ["running"] * 3 and statuses[3] == "diverged"  # mean(.7, 3, 9, 20) = 8.2


def test_mean_of_the_window_above_factor_times_start_diverges() -> None:
    assert LOSS_WINDOW == 10
    assert feed([1.0] + [20.0] * 9, 10.0, TrainState(loss_start=1.0)) == ["running"] + ["diverged"] * 9


def test_mean_exactly_at_the_limit_runs_and_the_window_slides() -> None:
    # start 1.0: a window of losses of 10.0 averages exactly 10 x 1.0, which is not above it
    state = TrainState(loss_start=1.0)
    assert feed([10.0] * 12, 10.0, state) == ["running"] * 12
    assert feed([11.0], 10.0, state) == ["diverged"]  # (9 x 10 + 11) / 10 = 10.1
    assert state.loss_start == 1.0


def test_divergence_message_names_mean_factor_start_and_step() -> None:
    state = TrainState(step=3, loss_start=2.0, recent_losses=[2.0, 2.0])
    state.step += 1
    status, error = check_divergence(state, 50.0, 3.0)
    assert status == "diverged"  # mean (2 + 2 + 50) / 3 = 18 > 3 x 2
    assert "18" in error and "3 x" in error and "start 2" in error and "step 4" in error


def test_factor_zero_means_non_finite_only() -> None:
    assert feed([0.01] + [1e6] * 50, 0.0) == ["running"] * 51


def test_noisy_but_bounded_loss_never_diverges() -> None:
    # start 1: noise in [0.5, 2] and every 13th step a spike of 40, itself 40 x the start; a window
    # holds at most one spike, so its mean stays <= (9 x 2 + 40) / 10 = 5.8 < 10; the first spike
    # comes when the window is already full
    rng = np.random.default_rng(0)
    losses = [40.0 if i % 13 == 0 else float(x) for i, x in enumerate(rng.uniform(0.5, 2.0, size=1000), 1)]
    state = TrainState(loss_start=1.0)
    assert feed(losses, 10.0, state) == ["running"] * 1000
    assert len(state.recent_losses) == LOSS_WINDOW


# ---------------------------------------------------------------------------------------------
# budget(n_train, cfg): (optimizer steps, optimizer steps per epoch) and samples


def plan(
    n_train: int, batch_size: int, epochs: float, grad_accum: int = 1, max_steps: Optional[int] = None
) -> tuple[int, int]:
    cfg = SimpleNamespace(batch_size=batch_size, epochs=epochs, grad_accum=grad_accum, max_steps=max_steps)
    planned = budget(n_train, cfg)
    return planned.steps, planned.per_epoch


def test_one_epoch_with_a_short_last_batch() -> None:
    assert plan(1000, 32, 1) == (32, 32)  # ceil(1000 / 32) = 32 batches, the last of 8 examples
    assert plan(1024, 32, 1) == (32, 32)
    assert plan(1025, 32, 1) == (33, 33)


@pytest.mark.parametrize(
    ("grad_accum", "per_epoch"),
    [
        (2, 16),  # 32 batches an epoch, 2 a step
        (4, 8),
        (5, 7),  # 6 steps of 5 batches, a 7th of the last 2: no step reaches into the next epoch
        (7, 5),  # 4 x 7 + 4
        (32, 1),
        (100, 1),  # one step of the epoch's 32 batches
    ],
)
def test_grad_accum_groups_each_epochs_batches_the_last_step_taking_what_is_left(
    grad_accum: int, per_epoch: int
) -> None:
    assert plan(1000, 32, 3, grad_accum) == (3 * per_epoch, per_epoch)


@pytest.mark.parametrize(
    ("epochs", "grad_accum", "expected"),
    [
        (0.5, 1, 16),  # 0.5 x 32
        (1.3, 1, 42),  # ceil(41.6)
        (2.5, 3, 28),  # ceil(32 / 3) = 11 steps an epoch; ceil(2.5 x 11) = ceil(27.5)
        (0.01, 1, 1),  # ceil(0.32): a sliver of an epoch still trains one step
        (0, 1, 0),
    ],
)
def test_fractional_epochs(epochs: float, grad_accum: int, expected: int) -> None:
    assert plan(1000, 32, epochs, grad_accum)[0] == expected


def test_fractional_epochs_that_come_to_whole_steps_are_not_rounded_up() -> None:
    assert plan(10_000, 100, 1.1) == (110, 100)  # 1.1 x 100 = 110.00000000000001 in floating point
    assert plan(800, 32, 2.2) == (55, 25)


@pytest.mark.parametrize(
    ("max_steps", "epochs", "grad_accum", "per_epoch"),
    [(7, 3, 1, 32), (7, 0.1, 4, 8), (500, 1, 1, 32), (0, 3, 2, 16)],
)
def test_max_steps_overrides_epochs_and_grad_accum(
    max_steps: int, epochs: float, grad_accum: int, per_epoch: int
) -> None:
    assert plan(1000, 32, epochs, grad_accum, max_steps) == (max_steps, per_epoch)


def steps_of(planned: Budget) -> tuple[int, int]:
    return planned.steps, planned.per_epoch


def test_samples_of_whole_and_partial_epochs() -> None:
    cfg = SimpleNamespace(batch_size=16, epochs=2, grad_accum=3, max_steps=None)
    assert budget(100, cfg).samples == 200  # 7 batches an epoch (the last of 4), 3 steps an epoch
    cfg.epochs = 1.5  # 3 + 2 steps: the second epoch's first 2 steps take 6 full batches
    assert budget(100, cfg).samples == 100 + 96
    cfg.max_steps = 4  # one epoch and one step of 3 batches
    assert budget(100, cfg).samples == 100 + 48


def test_composed_config() -> None:
    # 320 examples / 16 = 20 batches per epoch; 3 at a time: 7 steps an epoch (the last of 2); 2 epochs
    cfg = make_config("model=tiny-bert", "task=synthetic", "batch_size=16", "grad_accum=3", "epochs=2")
    assert steps_of(budget(320, cfg)) == (14, 7)
    cfg = make_config("model=tiny-bert", "task=synthetic", "batch_size=16", "epochs=2", "max_steps=5")
    assert steps_of(budget(320, cfg)) == (5, 20)
    # the CLI's own default (batch 32, 3 epochs, no accumulation) on 320 examples: 3 x 10 steps
    assert steps_of(budget(320, make_config("model=tiny-bert", "task=synthetic"))) == (30, 10)
