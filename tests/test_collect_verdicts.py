"""The three claims: the tests' error rates on simulated data, and the verdicts on collected runs."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from qvtune.collect import heatmap, verdicts
from qvtune.collect.records import load
from tests.helpers.sample_records import HEATMAP_QK, HEATMAP_V, make_record, write_record

REPLICATIONS = 200
SEEDS = 3  # as in the paper


def write(root: Path, values: dict, **kw) -> None:
    """values: targets -> per-seed values."""
    for targets, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            write_record(root, make_record(targets=targets, seed=seed, value=value, **kw))


def claims(root: Path, **kw) -> list[verdicts.Verdict]:
    coll = load(root)
    return verdicts.all_verdicts(coll, heatmap.find(coll, kw.get("pool", False)), **kw)


def test_v_beats_k_and_qv_close_to_qkv(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "v": [0.81, 0.80, 0.82],
            "k": [0.73, 0.74, 0.73],
            "qv": [0.820, 0.818, 0.825],
            "qkv": [0.821, 0.820, 0.824],
        },
    )
    by_claim = {v.claim: v for v in claims(tmp_path)}
    v_k = by_claim["v>k"]
    assert v_k.status == verdicts.SUPPORTED and v_k.pairs == 3
    assert v_k.mean == pytest.approx((0.08 + 0.06 + 0.09) / 3)
    # d = 0.08, 0.06, 0.09: sd 0.01528, se 0.00882, t_{0.95, 2} = 2.920, lower end 0.0767 - 0.0258 = 0.0509
    assert v_k.low == pytest.approx(0.0509, abs=1e-4) and v_k.high == pytest.approx(0.1024, abs=1e-4)
    qv = by_claim["qv~qkv"]
    # d = -0.001, -0.002, +0.001: the interval [-0.0032, +0.0019] lies inside ±0.01
    assert qv.status == verdicts.SUPPORTED and "inside the margin" in qv.detail and "±0.01" in qv.detail
    assert qv.mean == pytest.approx(-0.0006666, abs=1e-6)
    assert (qv.low, qv.high) == (pytest.approx(-0.00324, abs=1e-5), pytest.approx(0.00191, abs=1e-5))
    assert "Δ = +0.0767" in v_k.line and "90% interval [+0.0509, +0.1024]" in v_k.line
    assert v_k.line.endswith("| supported (v - k: lower end above 0)")


def test_not_supported(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "v": [0.70, 0.71, 0.70],
            "k": [0.75, 0.74, 0.76],
            "qv": [0.70, 0.71, 0.70],
            "qkv": [0.80, 0.81, 0.80],
        },
    )
    by_claim = {v.claim: v for v in claims(tmp_path)}
    assert {c: v.status for c, v in by_claim.items()} == {
        "v>k": verdicts.NOT_SUPPORTED,
        "qv~qkv": verdicts.NOT_SUPPORTED,
    }
    assert "qv worse" in by_claim["qv~qkv"].detail


def test_noise_no_longer_makes_qv_match(tmp_path: Path) -> None:
    """d = +0.03, -0.03, 0: the old rule (mean + 2 se >= 0) said supported; the interval, ±0.051, is wide."""
    write(tmp_path, {"qv": [0.83, 0.77, 0.80], "qkv": [0.80, 0.80, 0.80]})
    (qv,) = claims(tmp_path)
    assert qv.status == verdicts.NOT_SUPPORTED and "too noisy to tell" in qv.detail
    (wide,) = claims(tmp_path, margin=0.1)  # a margin wider than the interval
    assert wide.status == verdicts.SUPPORTED and "margin ±0.1" in wide.detail
    assert verdicts.overall([wide])[1] == (
        "qv matches qkv (or is better) within ±0.1: supported (holds in 1 of 1 tested context(s))"
    )
    assert "inside ±0.1 (equivalence" in verdicts.to_markdown([wide], margin=0.1)


def test_pairs_stay_within_a_sweep(tmp_path: Path) -> None:
    """v from one sweep and k from another are paired only when pooled."""
    write(tmp_path, {"v": [0.81, 0.80, 0.82]}, sweep="a")
    write(tmp_path, {"k": [0.73, 0.74, 0.73]}, sweep="b")
    assert claims(tmp_path) == []
    (pooled,) = claims(tmp_path, pool=True)
    assert pooled.status == verdicts.SUPPORTED and pooled.pairs == 3
    assert pooled.context.endswith("sweeps a, b")
    write(tmp_path, {"k": [0.73, 0.74, 0.73]}, sweep="a")  # the same runs again, made by sweep a: twins
    (within,) = claims(tmp_path)
    assert within.pairs == 3 and within.context.endswith(", sweep a")


def test_pairs_need_the_same_seed_and_setting(tmp_path: Path) -> None:
    write(tmp_path, {"v": [0.8], "k": [0.7]})  # one seed
    write(tmp_path / "other", {"v": [0.8, 0.8]}, rank=16)
    write(tmp_path / "other", {"k": [0.7, 0.7]}, rank=4)  # different rank: never paired
    (verdict,) = claims(tmp_path)
    assert verdict.claim == "v>k" and verdict.status == verdicts.NOT_ENOUGH and verdict.pairs == 1


def test_untuned_runs_are_never_a_pair_or_a_grid(tmp_path: Path) -> None:
    """Runs that take no optimizer step (epochs = 0, max_steps = 0) are baselines: v and k evaluated
    untuned, or a grid of rates never trained, give no verdict."""
    write(tmp_path, {"v": [0.81, 0.80, 0.82], "k": [0.50, 0.51, 0.50]}, epochs=0)
    write(tmp_path, {"qv": [0.8, 0.8, 0.8], "qkv": [0.5, 0.5, 0.5]}, extra_config={"max_steps": 0})
    untuned_grid = {"max_steps": 0}
    for qk, v, seed in itertools.product((1e-4, 2e-4), (2e-4, 4e-4), (0, 1, 2)):
        record = make_record(
            targets="qkv", lr=qk, lam=None, lr_v=v, seed=seed, value=0.5, extra_config=untuned_grid
        )
        write_record(tmp_path, record)
    coll = load(tmp_path)
    assert len(coll.untuned) == len(coll.runs) == 24
    assert heatmap.find(coll) == [] and claims(tmp_path) == []


def grid(root: Path, best: tuple[float, float], seeds: tuple[int, ...] = (0, 1, 2), skip: tuple = ()) -> None:
    """A 2 x 3 grid, `best` 0.02 above the rest; `skip`: (eta_QK, eta_V, seed) runs left out."""
    for qk, v, seed in itertools.product((1e-4, 2e-4), (1e-4, 2e-4, 4e-4), seeds):
        if (qk, v, seed) not in skip:
            value = 0.8 + (0.02 if (qk, v) == best else 0.0) + 0.001 * seed
            write_record(root, make_record(targets="qkv", lr=qk, lam=None, lr_v=v, seed=seed, value=value))


def test_best_lambda_above_one(tmp_path: Path) -> None:
    grid(tmp_path, best=(1e-4, 4e-4))
    (v,) = [v for v in claims(tmp_path) if v.claim == "lambda>1"]
    assert v.status == verdicts.SUPPORTED and v.mean == pytest.approx(0.02) and v.pairs == 3
    assert v.detail.startswith("best λ = 4 at (1e-4, 4e-4) vs λ = 1 at 1e-4, chosen on seeds 0, 1, 2;")
    assert "(disjoint seeds), choosing λ = 4, 4, 4" in v.detail


def test_best_lambda_uses_the_seeds_every_cell_shares(tmp_path: Path) -> None:
    grid(tmp_path, best=(1e-4, 4e-4), seeds=(0, 1, 2, 3), skip=((2e-4, 1e-4, 3),))
    (v,) = [v for v in claims(tmp_path) if v.claim == "lambda>1"]
    assert v.status == verdicts.SUPPORTED and v.pairs == 3
    assert "only seeds 0, 1, 2 are scored in all 6 cells" in v.detail
    grid(tmp_path / "fewer", best=(1e-4, 4e-4), skip=((2e-4, 1e-4, 2),))  # then 2 shared seeds: too few
    (v,) = [v for v in claims(tmp_path / "fewer") if v.claim == "lambda>1"]
    assert v.status == verdicts.NOT_ENOUGH and v.detail.startswith("2 seed(s) scored in every cell")


def test_best_lambda_on_the_diagonal(tmp_path: Path) -> None:
    grid(tmp_path, best=(2e-4, 2e-4))
    (v,) = [v for v in claims(tmp_path) if v.claim == "lambda>1"]
    assert v.status == verdicts.NOT_SUPPORTED and v.mean == pytest.approx(0.0)


def test_best_lambda_needs_a_cell_off_the_diagonal(tmp_path: Path) -> None:
    """A grid of eta_QK with every group at that rate (lambda = 1 everywhere) cannot tell lambda > 1."""
    for lr, seed in itertools.product((1e-4, 2e-4, 4e-4), (0, 1, 2)):
        value = 0.8 + (0.02 if lr == 2e-4 else 0.0)
        write_record(tmp_path, make_record(targets="qkv", lr=lr, lam=None, lr_v=lr, seed=seed, value=value))
    verdict = [v for v in claims(tmp_path) if v.claim == "lambda>1"]
    assert verdict and all(
        v.status == verdicts.NOT_ENOUGH and v.detail == "every scored cell has λ = 1" for v in verdict
    )


def test_overall_lines(tmp_path: Path) -> None:
    write(tmp_path, {"v": [0.81, 0.80, 0.82], "k": [0.73, 0.74, 0.73]})
    lines = verdicts.overall(claims(tmp_path))
    assert lines[0] == "tuning v beats tuning k: supported (holds in 1 of 1 tested context(s))"
    assert lines[1].endswith("not enough runs: no paired runs in the results")
    assert "| tuning v beats tuning k | MNLI(R) LoRA r = 8" in verdicts.to_markdown(claims(tmp_path))


# ---------------------------------------------------------------------------------------------
# The tests' error rates, simulated: REPLICATIONS stores of SEEDS seeds each, fixed numpy seeds, no files

NOISE = 0.005  # a run's own noise (sd); every setting of a seed also shares that seed's effect (sd 0.02)
GRID_QK, GRID_V = (a.ravel() for a in np.meshgrid(HEATMAP_QK, HEATMAP_V, indexing="ij"))  # the paper's 6 x 6
GRID_LAM = GRID_V / GRID_QK


def rate(test: Callable[[np.random.Generator], bool], seed: int) -> float:
    """How often `test` (one simulated store -> supported?) holds over the replications."""
    rng = np.random.default_rng(seed)
    return float(np.mean([test(rng) for _ in range(REPLICATIONS)]))


def settings(rng: np.random.Generator, means: np.ndarray, noise: float = NOISE) -> np.ndarray:
    """(settings, seeds) values: the setting's mean + the seed's effect + the run's own noise."""
    return means[:, None] + rng.normal(0.0, 0.02, SEEDS) + rng.normal(0.0, noise, (len(means), SEEDS))


def paired(effect: float, noise: float = NOISE) -> Callable[[np.random.Generator], np.ndarray]:
    """Per-seed differences of two settings whose true difference is `effect`."""

    def draw(rng: np.random.Generator) -> np.ndarray:
        a, b = settings(rng, np.array([0.8 + effect, 0.8]), noise)
        return a - b

    return draw


def v_beats_k(effect: float) -> Callable[[np.random.Generator], bool]:
    draw = paired(effect)
    return lambda rng: verdicts.beats(draw(rng))


def qv_matches(effect: float, noise: float = NOISE) -> Callable[[np.random.Generator], bool]:
    draw = paired(effect, noise)
    return lambda rng: verdicts.matches(draw(rng)) in (verdicts.BETTER, verdicts.EQUIVALENT)


def best_lambda(means: np.ndarray) -> Callable[[np.random.Generator], bool]:
    def test(rng: np.random.Generator) -> bool:
        folds = verdicts.cross_validate(settings(rng, means), verdicts.is_one(GRID_LAM))
        return verdicts.lambda_supported(folds, GRID_LAM)

    return test


def old_best_lambda(means: np.ndarray) -> Callable[[np.random.Generator], bool]:
    """The former rule, cells chosen on the seeds they are tested on: the simulation must catch it."""
    diagonal = np.flatnonzero(verdicts.is_one(GRID_LAM))

    def test(rng: np.random.Generator) -> bool:
        values = settings(rng, means)
        mean = values.mean(axis=1)
        best, on_diagonal = int(np.argmax(mean)), int(diagonal[np.argmax(mean[diagonal])])
        d = values[best] - values[on_diagonal]
        return bool(GRID_LAM[best] > 1.0 + 1e-6 and d.mean() - 2 * d.std(ddof=1) / math.sqrt(SEEDS) > 0)

    return test


FLAT = np.full(36, 0.8)
BY_ETA_QK = 0.8 - 2 * NOISE * np.abs(np.log2(GRID_QK / 2e-4))  # best eta_QK 2e-4, which has a lambda = 1 cell
LAMBDA_4 = FLAT + 4 * NOISE * np.isclose(GRID_LAM, 4.0)


def test_grid_shape() -> None:
    """26 of the 36 cells have lambda > 1 and 4 lie on the diagonal: what chance alone could pick from."""
    above = (GRID_LAM > 1) & ~verdicts.is_one(GRID_LAM)
    assert int(above.sum()) == 26 and int(verdicts.is_one(GRID_LAM).sum()) == 4
    assert int((LAMBDA_4 > FLAT).sum()) == 3  # the planted effect: (5e-5, 2e-4), (1e-4, 4e-4), (2e-4, 8e-4)


def test_false_positive_rates_without_an_effect() -> None:
    rates = {
        "v>k, v = k": rate(v_beats_k(0.0), 1),
        "qv~qkv, qv = qkv - margin": rate(qv_matches(-verdicts.DEFAULT_MARGIN), 2),
        "lambda>1, flat grid": rate(best_lambda(FLAT), 3),
        "lambda>1, eta_QK only": rate(best_lambda(BY_ETA_QK), 4),
    }
    print("false positives:", rates)
    assert all(r <= 0.10 for r in rates.values()), rates
    old = rate(old_best_lambda(FLAT), 3)
    print("false positives of the former lambda rule, flat grid:", old)
    assert old > 0.10  # the simulation tells a rule that leaks seeds from one that does not


def test_power_with_a_planted_effect() -> None:
    powers = {
        "v>k, v - k = 3 sd": rate(v_beats_k(3 * NOISE * math.sqrt(2)), 5),
        "qv~qkv, qv = qkv, small noise": rate(qv_matches(0.0, noise=0.001), 6),
        "lambda>1, lambda = 4 cells + 4 sd": rate(best_lambda(LAMBDA_4), 7),
    }
    print("power:", powers)
    assert all(p >= 0.80 for p in powers.values()), powers


def test_more_noise_makes_qv_match_less_often() -> None:
    rates = [rate(qv_matches(0.0, noise), 8) for noise in (0.001, 0.004, 0.016)]
    print("qv~qkv support, qv = qkv, noise 0.001 / 0.004 / 0.016:", rates)
    assert rates[0] > rates[1] > rates[2] and rates[2] <= 0.10


def test_cross_validation_never_tests_on_a_choosing_seed() -> None:
    """Cell A is high on seed 0 only: the fold holding out seed 0 must not choose it."""
    values = np.array(
        [
            [0.0, 0.5, 0.5],  # lambda = 1
            [1.0, 1.0, 1.0],  # B
            [10.0, 0.0, 0.0],
        ]
    )  # A
    folds = verdicts.cross_validate(values, np.array([True, False, False]))
    assert folds.best == 2 and folds.best_diagonal == 0
    assert folds.fold_best.tolist() == [1, 2, 2] and folds.fold_diagonal.tolist() == [0, 0, 0]
    assert folds.d.tolist() == [1.0, -0.5, -0.5]  # chosen on the same seeds, A would score +10 on seed 0
    with pytest.raises(ValueError):
        verdicts.cross_validate(values[:, :2], np.array([True, False, False]))  # two seeds are too few


def test_t_interval_at_n_minus_1_degrees_of_freedom() -> None:
    assert verdicts.t_quantile(3) == pytest.approx(2.919986, abs=1e-6)
    low, high = verdicts.interval(np.array([1.0, 2.0, 3.0]))
    half = 2.919986 / math.sqrt(3)  # sd 1, n = 3
    assert (low, high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    with pytest.raises(ValueError):
        verdicts.interval(np.array([1.0]))
    assert verdicts.matches(np.array([0.02, 0.021, 0.019])) == verdicts.BETTER
    assert verdicts.matches(np.array([-0.02, -0.021, -0.019])) == verdicts.WORSE


def test_pairs_stay_within_a_variant_named_in_their_label(tmp_path: Path) -> None:
    """v against k on kv-recall with 4 and with 8 pairs, same seeds: two contexts, never one, each
    paired within itself, the one off the default named by its setting."""
    for pairs, gap in ((4, 0.08), (8, -0.02)):
        task = {"kv_recall": {"pairs": pairs, "train_size": 3000, "eval_size": 500, "data_seed": 1234}}
        kw = dict(model="smollm2", task="kv-recall", text=True, task_settings=task)
        write(tmp_path, {"v": [0.6 + gap, 0.61 + gap, 0.62 + gap], "k": [0.6, 0.61, 0.62]}, **kw)
    found = {v.context: v for v in claims(tmp_path) if v.claim == "v>k"}
    plain = "KV-recall (text)(smollm2) LoRA r = 8, η_QK = 1e-4, η_V = 1e-4, epochs = 3"
    assert sorted(found) == [plain, f"{plain} [task.kv_recall.pairs=8]"]
    assert found[plain].mean == pytest.approx(0.08) and found[plain].pairs == 3
    assert found[f"{plain} [task.kv_recall.pairs=8]"].mean == pytest.approx(-0.02)
