"""Made-up run records (qvtune.store.record.RunRecord, written as a run writes them) for the collector's
tests, its benchmark (scripts/bench_collect.py) and trying the collector without training anything.

Values follow a made-up but paper-shaped response: v beats k, qv is close to qkv, eta_V above eta_QK
helps up to a point, plus seed noise, so every table, heatmap and verdict has something to show. It
lives in the package, not in tests/, so that the benchmark (a script) can import it too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from qvtune.status import Status
from qvtune.store.record import RESULT_FILE, Curves, RunRecord

TASK_METRIC = {
    "rte": "accuracy",
    "stsb": "pearson",
    "mrpc": "accuracy",
    "cola": "matthews",
    "mnli": "accuracy",
    "sst2": "accuracy",
    "qqp": "accuracy",
    "qnli": "accuracy",
    "synthetic": "accuracy",
    "kv-recall": "exact_match",  # a text task (task.format=text) without label words
}

TASK_BASE = {
    "rte": 0.72,
    "stsb": 0.90,
    "mrpc": 0.86,
    "cola": 0.58,
    "mnli": 0.82,
    "sst2": 0.92,
    "qqp": 0.84,
    "qnli": 0.88,
    "synthetic": 0.80,
    "kv-recall": 0.60,
}

TARGET_EFFECT = {"q": -0.07, "k": -0.09, "v": -0.015, "qk": -0.05, "qv": 0.0, "kv": -0.01, "qkv": 0.002}

HEAD_PARAMS = 768 * 768 + 768 + 2 * 768 + 2  # roberta-base classification head, 2 labels

ERRORS = {Status.FAILED: "RuntimeError: CUDA out of memory", Status.DIVERGED: "loss is nan at step 120"}

WEIGHT_TYPES = ("q", "k", "v", "qk", "qv", "qkv")  # Table 1's rows


def noise(*parts: Any) -> float:
    """A deterministic number in [-1, 1) from the parts (stable across processes, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**63 - 1.0


def score(task: str, targets: str, lam: float, seed: int, lr: float = 1e-4, method: str = "lora") -> float:
    """The synthetic headline metric: best near lambda = 4, falling off for far-off eta_QK."""
    value = TASK_BASE[task] + TARGET_EFFECT[targets]
    value -= 0.004 * (math.log2(max(lam, 1e-9)) - 2.0) ** 2
    value -= 0.01 * abs(math.log10(lr / 1e-4))
    if method == "full" and lam >= 8 and task in ("mnli", "qnli"):
        value = 0.33  # the collapse of the paper's lambda = 8 full fine-tunes
    return round(value + 0.004 * noise(task, targets, lam, lr, method, seed), 6)


def trainable(method: str, targets: str, rank: Optional[int]) -> int:
    """A roberta-base-like count: adapters (or full matrices) on 12 layers plus the head once."""
    per_matrix = 768 * 768 + 768 if method == "full" else 2 * 768 * (rank or 8)
    if method == "dora":
        per_matrix += 768
    return 12 * len(targets) * per_matrix + HEAD_PARAMS


def make_record(
    *,
    model: str = "roberta-base",
    task: str = "mnli",
    method: str = "lora",
    targets: Any = "qv",
    rank: Optional[int] = 8,  # None: a full fine-tune's record
    lr: float = 1e-4,
    lam: Optional[float] = 1.0,
    lr_v: Optional[float] = None,
    seed: int = 0,
    epochs: float = 3,
    sweep: Optional[str] = None,
    status: Status = Status.COMPLETED,
    value: Optional[float] = None,
    evals: int = 4,
    loss_points: int = 20,
    extra_config: Optional[dict[str, Any]] = None,
    task_settings: Optional[dict[str, Any]] = None,
    text: bool = False,
    harness: Optional[dict[str, Any]] = None,
    harness_tasks: Optional[Sequence[str]] = None,
) -> RunRecord:
    """One record as a run writes it; `value` overrides the synthetic final headline metric. Finished
    records (completed, diverged) have curves, running and failed ones none, as with a real run.

    `extra_config` sets top-level config keys (a group such as optim as a whole), `task_settings` keys
    of the task's group beside its name and metric (kv_recall: {pairs: 8}).
    `text`: the task answered as text by a causal LM (task.format=text): exact_match and, for a task
    with label words, rank_accuracy beside the headline metric. `harness`: the record's harness
    section (`harness_section`), asked for `harness_tasks` (default: the tasks it scored)."""
    status = Status(status)
    letters = (targets if isinstance(targets, str) else "".join(targets)).lower()
    canon = "".join(t for t in "qkv" if t in letters)
    ratio = (lr_v / lr) if lr_v is not None else (1.0 if lam is None else float(lam))
    metric = TASK_METRIC[task]
    final_value = score(task, canon, ratio, seed, lr, method) if value is None else value
    if epochs == 0:
        final_value = TASK_BASE[task] - 0.35 if value is None else value
    steps = 0 if epochs == 0 else 100 * max(1, int(epochs))
    task_config = {
        "name": task,
        "metric": metric,
        "num_labels": 1 if task == "stsb" else 2,
        **(task_settings or {}),
    }
    config = {
        "model": {"name": model, "source": None, "arch": {}, "dtype": "float32"},
        "task": {**task_config, "format": "text"} if text else task_config,
        "method": {"name": method},
        "targets": targets,
        "rank": 8 if rank is None else rank,  # RunConfig keeps its default for a full fine-tune
        "alpha": None,
        "dropout": 0.0,
        "lr": lr,
        "lam": lam,
        "lr_v": lr_v,
        "head_lr": None,
        "epochs": epochs,
        "max_steps": None,
        "batch_size": 32,
        "seed": seed,
        "sweep_name": sweep,
        "results_dir": "results",
        "wandb": {"mode": "offline"},
        **(extra_config or {}),
    }
    if harness is not None:
        asked = list(harness_tasks if harness_tasks is not None else harness.get("tasks", {}))
        config["harness"] = {
            "tasks": asked,
            "include": [],
            "limit": harness.get("limit"),
            "num_fewshot": harness.get("num_fewshot"),
            "batch_size": 8,
        }
    evals = evals if steps else 1  # an epochs = 0 run evaluates once
    history: list[dict[str, Any]] = [
        {
            "step": steps * (i + 1) // evals,
            "epoch": epochs * (i + 1) / evals,
            "metrics": _metrics(metric, round(final_value - 0.05 * (evals - 1 - i) / evals, 6), text),
        }
        for i in range(evals)
    ]
    if status in (Status.FAILED, Status.RUNNING) and value is None:
        history = history[: len(history) // 2]
    final = dict(history[-1]["metrics"]) if history else {}
    best: dict[str, float] = max((h["metrics"] for h in history), key=lambda m: m[metric], default={})
    loss = [
        [
            steps * (i + 1) // loss_points,
            round(
                1.1 * math.exp(-3 * ratio**0.3 * (i + 1) / loss_points)
                + 0.2
                + 0.02 * math.sin(7.0 * i + seed + ratio),
                5,
            ),
        ]
        for i in range(loss_points if steps else 0)
    ]
    curves = Curves(loss, [[s, 0.1, 0.05, 0.3] for s, _ in loss], [[s, lr, ratio * lr, lr] for s, _ in loss])
    return RunRecord(
        status=status,
        run_key=hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12],
        error=ERRORS.get(status),
        config=config,
        rates={"qk": lr, "v": ratio * lr, "head": lr, "lam": ratio},
        params={
            "total": 124_645_632,
            "trainable": 0 if epochs == 0 else trainable(method, canon, rank),
            "groups": [],
        },
        metric=metric,
        history=history,
        final=final if status != Status.FAILED else {},
        best=best if status != Status.FAILED else {},
        steps=steps,
        samples=steps * 32,
        timing={"wall_s": 60.0, "train_s": 50.0, "eval_s": 5.0},
        peak_rss_mb=900.0,
        sweep=sweep,
        host="node",
        started_at="2025-01-01T00:00:00",
        finished_at=None if status == Status.RUNNING else "2025-01-01T01:00:00",
        qvtune_version="0.1.0",
        curves=curves if status in (Status.COMPLETED, Status.DIVERGED) else None,
        harness=harness if status in (Status.COMPLETED, Status.DIVERGED) else None,
    )


def _metrics(metric: str, value: float, text: bool) -> dict[str, float]:
    """An evaluation's metrics: a text task's exact_match (below the label ranking) and rank_accuracy."""
    if not text or metric == "exact_match":
        return {metric: value}
    return {metric: value, "exact_match": round(value - 0.02, 6), "rank_accuracy": value}


def harness_section(
    scores: Optional[dict[str, dict[str, Optional[float]]]] = None,
    limit: Optional[float] = None,
    num_fewshot: Optional[int] = None,
    error: Optional[str] = None,
) -> dict[str, Any]:
    """A record's harness section as qvtune.train.harness writes it: per task its metrics with a
    standard error, shots and samples; or, with `error`, the one-line error in place of the tasks."""
    section: dict[str, Any] = {
        "lm_eval": "0.4.9",
        "limit": limit,
        "num_fewshot": num_fewshot,
        "seconds": 12.5,
    }
    if error is not None:
        return {**section, "error": error}
    section["tasks"] = {}
    for task, metrics in (scores or {}).items():
        values: dict[str, Any] = {}
        for metric, value in metrics.items():
            values[metric] = value
            values[f"{metric}_stderr"] = None if value is None else 0.01  # lm-eval's N/A is null
        section["tasks"][task] = {**values, "num_fewshot": num_fewshot or 0, "samples": int(limit or 100)}
    return section


def write_record(root: Path, record: RunRecord, folder: Optional[str] = None) -> Path:
    """Store the record in <root>/[folder/]<run_key>/ the way the results store lays it out; returns
    the path of its result.json."""
    run_dir = Path(root) / (folder or "") / record.run_key
    record.write(run_dir)
    return run_dir / RESULT_FILE


HEATMAP_QK = (2e-5, 5e-5, 1e-4, 2e-4, 4e-4, 8e-4)

HEATMAP_V = (1e-4, 2e-4, 4e-4, 8e-4, 1e-3, 2e-3)

GLUE = ("rte", "stsb", "mrpc", "cola", "mnli", "sst2", "qqp", "qnli")


def paper_grid(seeds: tuple[int, ...] = (0, 1, 2), loss_points: int = 20) -> list[RunRecord]:
    """Records shaped like the paper's three experiments: Table 1, Table 2 and the Figure 1 heatmaps."""
    out = []
    for model, tasks, ranks in (
        ("roberta-base", ("sst2", "qnli", "qqp", "mnli"), (4, 8, 16)),
        ("llama3.1-8b", ("qqp", "mnli"), (8, 16)),
    ):
        for task, rank, targets, seed in itertools.product(tasks, ranks, WEIGHT_TYPES, seeds):
            out.append(
                make_record(
                    model=model,
                    task=task,
                    targets=targets,
                    rank=rank,
                    seed=seed,
                    sweep="table1",
                    loss_points=loss_points,
                )
            )
    for task, seed in itertools.product(GLUE, seeds):
        out.append(make_record(task=task, method="full", targets="qkv", epochs=0, seed=seed, sweep="table2"))
        for method, method_rank in (("full", None), ("lora", 8), ("lora", 16), ("dora", 8), ("dora", 16)):
            out.append(
                make_record(
                    task=task,
                    method=method,
                    targets="qkv",
                    rank=method_rank,
                    epochs=10,
                    seed=seed,
                    sweep="table2",
                    loss_points=loss_points,
                )
            )
            for lam in (2, 4, 8):
                out.append(
                    make_record(
                        task=task,
                        method=method,
                        targets="qv",
                        rank=method_rank,
                        lam=lam,
                        epochs=10,
                        seed=seed,
                        sweep="table2",
                        loss_points=loss_points,
                    )
                )
    for task in ("mnli", "qqp"):
        for qk, v, seed in itertools.product(HEATMAP_QK, HEATMAP_V, seeds):
            out.append(
                make_record(
                    task=task,
                    targets="qkv",
                    lr=qk,
                    lam=None,
                    lr_v=v,
                    seed=seed,
                    sweep="heatmap",
                    loss_points=loss_points,
                )
            )
    return out


def bench_records(n: int, loss_points: int = 200) -> list[RunRecord]:
    """`n` records: the paper's grid repeated over more seeds (realistic sizes: 200 loss points each)."""
    out: list[RunRecord] = []
    seed = 0
    while len(out) < n:
        out += paper_grid(seeds=(seed,), loss_points=loss_points)
        seed += 1
    return out[:n]


def demo_records(seeds: tuple[int, ...] = (0, 1)) -> list[RunRecord]:
    """A demo-sized store: minilm on the synthetic task, five weight types and a 2 x 2 learning-rate grid."""
    out = [
        make_record(model="minilm", task="synthetic", targets=t, rank=8, seed=s, epochs=1)
        for t in ("q", "k", "v", "qv", "qkv")
        for s in seeds
    ]
    out += [
        make_record(
            model="minilm", task="synthetic", targets="qv", rank=8, lr=qk, lam=None, lr_v=v, seed=s, epochs=1
        )
        for qk in (1e-4, 4e-4)
        for v in (1e-4, 4e-4)
        for s in seeds
        if not (qk == v == 1e-4)
    ]
    return out
