"""The paper's Table 1 and Table 2 as shipped in qvtune/collect/paper.json, against hand-picked cells."""

from __future__ import annotations

import pytest

from qvtune.collect import paper


@pytest.mark.parametrize(
    "model, task, rank, targets, value",
    [
        ("roberta-base", "mnli", 8, "qkv", 0.827),
        ("roberta-base", "sst2", 4, "q", 0.904),
        ("roberta-base", "qnli", 8, "qkv", 0.895),
        ("roberta-base", "qqp", 16, "v", 0.831),
        ("llama3.1-8b", "mnli", 8, "k", 0.660),
        ("llama3.1-8b", "qqp", 16, "qv", 0.874),
    ],
)
def test_table1_cells(model: str, task: str, rank: int, targets: str, value: float) -> None:
    assert paper.table1_value(model, task, "lora", targets, rank, 1.0) == value


def test_table1_needs_lora_at_lambda_one() -> None:
    assert paper.table1_value("roberta-base", "mnli", "lora", "qkv", 8, 2.0) is None
    assert paper.table1_value("roberta-base", "mnli", "dora", "qkv", 8, 1.0) is None
    assert paper.table1_value("roberta-base", "rte", "lora", "qkv", 8, 1.0) is None


@pytest.mark.parametrize(
    "method, targets, rank, lam, task, value",
    [
        ("lora", "qv", 16, 8, "mrpc", 0.8995),
        (None, None, None, None, "stsb", -0.0318),
        ("full", "qkv", 8, 1, "rte", 0.7364),  # a full fine-tune's rank means nothing
        ("full", "qv", None, 8, "mnli", 0.3544),  # the collapse of the lambda = 8 full fine-tune
        ("dora", "qv", 16, 8, "rte", 0.7726),
        ("lora", "qkv", 8, 1, "qqp", 0.8915),
    ],
)
def test_table2_cells(method, targets, rank, lam, task, value) -> None:
    assert paper.table2_value("roberta-base", task, method, targets, rank, lam) == pytest.approx(value)


def test_table2_params_and_shape() -> None:
    assert paper.table2_params("roberta-base", "lora", "qv", 16, 8) == 1.77
    assert paper.table2_params("roberta-base", "full", "qkv", None, 1) == 21.85
    assert paper.table2_value("llama3.1-8b", "mrpc", "lora", "qv", 16, 8) is None
    ref = paper.reference()
    assert ref["unit"].startswith("fraction")
    assert len(ref["table1"]["rows"]) == 16 and len(ref["table2"]["rows"]) == 21
    values = [v for row in ref["table1"]["rows"] + ref["table2"]["rows"] for v in row["values"]]
    assert all(-0.1 < v < 1 for v in values)  # one unit throughout: fractions
