"""The paper's own Table 1 and Table 2 (paper.json), to print next to what the runs collected.

Values are stored as fractions, the unit of the records (Table 2's percentages divided by 100).
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources
from typing import Any, Optional

from qvtune.config.schema import has_rank

PAPER_MODEL = "roberta-base"  # Table 2 is roberta-base only


@functools.cache
def reference() -> dict[str, Any]:
    """The parsed paper.json shipped with the package."""
    return json.loads(resources.files(__package__).joinpath("paper.json").read_text(encoding="utf-8"))


def _lam(lam: Optional[float]) -> Optional[float]:
    return None if lam is None or (isinstance(lam, float) and math.isnan(lam)) else round(float(lam), 6)


def _rank(rank: Any) -> Optional[int]:
    return None if rank is None or (isinstance(rank, float) and math.isnan(rank)) else int(rank)


@functools.cache
def _table1() -> dict[tuple[str, str, int, str], float]:
    t = reference()["table1"]
    return {
        (row["model"], row["task"], row["rank"], targets): value
        for row in t["rows"]
        for targets, value in zip(t["columns"], row["values"])
    }


@functools.cache
def _table2() -> dict[tuple[Any, ...], tuple[str, float, dict[str, float]]]:
    t = reference()["table2"]
    out = {}
    for row in t["rows"]:
        key = (
            ("before",)
            if row["method"] is None
            else (row["method"], row["targets"], row["rank"], _lam(row["lam"]))
        )
        out[key] = (row["label"], row["params_m"], dict(zip(t["columns"], row["values"])))
    return out


def table1_value(model: str, task: str, method: str, targets: str, rank: Any, lam: float) -> Optional[float]:
    """The paper's Table 1 cell for this setting, or None (Table 1 is LoRA with lambda = 1)."""
    t = reference()["table1"]
    ranked = _rank(rank)
    if method != t["method"] or _lam(lam) != _lam(t["lam"]) or ranked is None:
        return None
    return _table1().get((model, task, ranked, targets))


def _table2_row(
    model: str, method: Optional[str], targets: Optional[str], rank: Any, lam: Any
) -> Optional[tuple[str, float, dict[str, float]]]:
    if model != PAPER_MODEL:
        return None
    ranked = _rank(rank) if has_rank(method) else None  # a full fine-tune has no rank
    key = ("before",) if method is None else (method, targets, ranked, _lam(lam))
    return _table2().get(key)


def table2_value(
    model: str, task: str, method: Optional[str], targets: Optional[str], rank: Any, lam: Any
) -> Optional[float]:
    """The paper's Table 2 cell; method None is the 'Before fine-tune' row."""
    row = _table2_row(model, method, targets, rank, lam)
    return None if row is None else row[2].get(task)


def table2_params(
    model: str, method: Optional[str], targets: Optional[str], rank: Any, lam: Any
) -> Optional[float]:
    """The paper's trainable-parameter count for the row, in millions."""
    row = _table2_row(model, method, targets, rank, lam)
    return None if row is None else row[1]
