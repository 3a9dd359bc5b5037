"""The three claims answered with paired seeds: supported, not supported, not enough runs."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from records_factory import make_record, write_record  # noqa: E402

from qvtune.collect import heatmap, verdicts  # noqa: E402
from qvtune.collect.records import load  # noqa: E402


def write(root: Path, values: dict, **kw) -> None:
    """values: targets -> per-seed values."""
    for targets, per_seed in values.items():
        for seed, value in enumerate(per_seed):
            write_record(root, make_record(targets=targets, seed=seed, value=value, **kw))


def claims(root: Path) -> list[verdicts.Verdict]:
    coll = load(root)
    return verdicts.all_verdicts(coll, heatmap.find(coll))


def test_v_beats_k_and_qv_close_to_qkv(tmp_path: Path) -> None:
    write(tmp_path, {"v": [0.81, 0.80, 0.82], "k": [0.73, 0.74, 0.73], "qv": [0.820, 0.818, 0.825],
                     "qkv": [0.821, 0.820, 0.824]})
    by_claim = {v.claim: v for v in claims(tmp_path)}
    v_k = by_claim["v>k"]
    assert v_k.status == verdicts.SUPPORTED and v_k.pairs == 3
    assert v_k.mean == pytest.approx((0.08 + 0.06 + 0.09) / 3)
    assert by_claim["qv~qkv"].status == verdicts.SUPPORTED
    assert by_claim["qv~qkv"].mean == pytest.approx(-0.0006666, abs=1e-6)
    assert "Δ = +0.0767" in v_k.line and "supported" in v_k.line


def test_not_supported(tmp_path: Path) -> None:
    write(tmp_path, {"v": [0.70, 0.71, 0.70], "k": [0.75, 0.74, 0.76], "qv": [0.70, 0.71, 0.70],
                     "qkv": [0.80, 0.81, 0.80]})
    statuses = {v.claim: v.status for v in claims(tmp_path)}
    assert statuses == {"v>k": verdicts.NOT_SUPPORTED, "qv~qkv": verdicts.NOT_SUPPORTED}


def test_pairs_need_the_same_seed_and_setting(tmp_path: Path) -> None:
    write(tmp_path, {"v": [0.8], "k": [0.7]})  # one seed
    write(tmp_path / "other", {"v": [0.8, 0.8]}, rank=16)
    write(tmp_path / "other", {"k": [0.7, 0.7]}, rank=4)  # different rank: never paired
    (verdict,) = claims(tmp_path)
    assert verdict.claim == "v>k" and verdict.status == verdicts.NOT_ENOUGH and verdict.pairs == 1


def grid(root: Path, best: tuple[float, float]) -> None:
    for qk in (1e-4, 2e-4):
        for v in (1e-4, 2e-4, 4e-4):
            for seed in (0, 1, 2):
                value = 0.8 + (0.02 if (qk, v) == best else 0.0) + 0.001 * seed
                write_record(root, make_record(targets="qkv", lr=qk, lam=None, lr_v=v, seed=seed, value=value))


def test_best_lambda_above_one(tmp_path: Path) -> None:
    grid(tmp_path, best=(1e-4, 4e-4))
    (v,) = [v for v in claims(tmp_path) if v.claim == "lambda>1"]
    assert v.status == verdicts.SUPPORTED and v.mean == pytest.approx(0.02) and "best λ = 4" in v.detail


def test_best_lambda_on_the_diagonal(tmp_path: Path) -> None:
    grid(tmp_path, best=(2e-4, 2e-4))
    (v,) = [v for v in claims(tmp_path) if v.claim == "lambda>1"]
    assert v.status == verdicts.NOT_SUPPORTED and v.mean == pytest.approx(0.0)


def test_overall_lines(tmp_path: Path) -> None:
    write(tmp_path, {"v": [0.81, 0.80, 0.82], "k": [0.73, 0.74, 0.73]})
    lines = verdicts.overall(claims(tmp_path))
    assert lines[0] == "tuning v beats tuning k: supported (holds in 1 of 1 tested context(s))"
    assert lines[1].endswith("not enough runs: no paired runs in the results")
    assert "| tuning v beats tuning k | MNLI(R) LoRA r = 8" in verdicts.to_markdown(claims(tmp_path))
