"""How models, tasks, methods and weight types are named in the tables, the order rows follow, the
settings that tell otherwise equally named rows apart, and text as LaTeX writes it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from qvtune.common.formatting import num  # noqa: F401  (labels.num: how the tables write learning rates and ratios)

MODEL_SHORT = {"roberta-base": "R", "llama3.1-8b": "L"}  # the paper's "MNLI(R)", "QQP(L)"
MODEL_ORDER = ("roberta-base", "llama3.1-8b")
TASK_LABEL = {
    "rte": "RTE",
    "stsb": "STS-B",
    "mrpc": "MRPC",
    "cola": "CoLA",
    "mnli": "MNLI",
    "sst2": "SST-2",
    "qqp": "QQP",
    "qnli": "QNLI",
    "synthetic": "Synthetic",
    "kv-recall": "KV-recall",
    "arithmetic": "Arithmetic",
    "gsm8k": "GSM8K",
    "alpaca": "Alpaca",
}
GLUE = ("rte", "stsb", "mrpc", "cola", "mnli", "sst2", "qqp", "qnli")  # Table 2's column order
TABLE1_TASKS = ("sst2", "qnli", "qqp", "mnli")  # Table 1's row order
METHOD_LABEL = {"full": "Full Fine-tune", "lora": "LoRA", "dora": "DoRA"}
METHOD_ORDER = ("full", "lora", "dora")


def model_short(model: str) -> str:
    return MODEL_SHORT.get(model, model)


def task_label(task: str) -> str:
    """A task's label; a task answered as text (qvtune.collect.records.task_of) is "SST-2 (text)"."""
    if task.endswith("-text"):
        return f"{task_label(task.removesuffix('-text'))} (text)"
    return TASK_LABEL.get(task, task)


def order(value: str, known: tuple[str, ...]) -> tuple[int, str]:
    """Sort key: known names in the paper's order first, then the rest alphabetically."""
    return (known.index(value), "") if value in known else (len(known), value)


def latex_escape(text: str) -> str:
    """Text as LaTeX writes it: its special characters escaped, λ ± Δ in math mode."""
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("#", "\\#"),
        ("_", "\\_"),
        ("{", "\\{"),
        ("}", "\\}"),
        ("λ", "$\\lambda$"),
        ("±", "$\\pm$"),
        ("Δ", "$\\Delta$"),
    ):
        text = text.replace(a, b)
    return text


def differences(settings: Sequence[dict[str, Any]]) -> list[str]:
    """What tells settings apart, for each: 'path=value, ...' of the settings that differ among them
    and that it holds. Each setting is {dotted path: value} of those not at their identity baseline
    (qvtune.collect.records.Identity), so one at the baseline of every differing setting gets ''; no
    two distinct settings get the same text."""
    spelled = [{path: json.dumps(value, sort_keys=True) for path, value in s.items()} for s in settings]
    differing = sorted({p for s in spelled for p in s if len({t.get(p) for t in spelled}) > 1})
    return [", ".join(f"{p}={_value(s[p])}" for p in differing if p in s) for s in settings]


def _value(value: Any) -> str:
    """A setting's value as a label writes it: a string bare, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)
