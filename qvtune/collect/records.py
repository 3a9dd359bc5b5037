"""Every run record below a results folder as one pandas table: one row per (setting, seed).

The record's own config decides where a run belongs, never its file or folder name, so runs can be
moved, copied between stores or nested in sweep folders. A record that cannot be read (half-written,
not JSON, missing fields, a metric that is not a number, a finished run without its final metrics) is
reported by path and skipped: one bad file never stops a collection.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from qvtune.config.rates import GROUP_RATIOS, RATE_KEYS, rounded
from qvtune.config.schema import has_rank, parse_targets
from qvtune.status import Status
from qvtune.store.identity import IDENTITY, REQUIRED, UNKEYED, keyed_fields
from qvtune.store.record import InvalidRecord, RunRecord
from qvtune.store.store import result_files
from qvtune.train.runtime import available_cpus

# Record statuses whose row says running: not finished, so not scored. A paused run stopped at a rung
# of a search (`until`), an interrupted one was killed; both resume from their checkpoint.
AS_RUNNING = (Status.PAUSED, Status.INTERRUPTED)
# completed, diverged, running, failed: the statuses of rows, in the preference order among duplicates
STATUSES = tuple(s for s in Status if s not in (*AS_RUNNING, Status.PENDING))
SCORED = (Status.COMPLETED, Status.DIVERGED)  # a diverged run counts with what it scored, and is marked
PICKS = ("final", "best")

LORAPLUS = "optim.loraplus_ratio"  # its column: loraplus_ratio, NaN where LoRA+ is off
HARNESS = "harness:"  # the column of a harness score: harness:<task>/<metric> (arc_easy/acc)

# Keyed config fields with their own column; every other top-level one that decides a result (see
# qvtune.store.identity) goes, as JSON, into `extra` where it differs from its identity baseline
# (so a record written before a setting existed and one that leaves it at its default agree), the
# precision as the run used it.
_EXPLICIT = {"targets", "rank", "alpha", *RATE_KEYS, "epochs", "seed", LORAPLUS}
_EXTRA_PATHS = tuple(
    (path, baseline)
    for path, baseline in IDENTITY.items()
    if path.split(".", 1)[0] in keyed_fields()
    and path.split(".", 1)[0] not in _EXPLICIT
    and path not in _EXPLICIT
    and baseline is not UNKEYED
)


def task_of(task: dict[str, Any]) -> str:
    """The task's name in the tables; a task answered as text by a causal LM (task.format=text) is
    its own column, `<name>-text`, never mixed with the same data through a classification head."""
    name = str(task["name"])
    return f"{name}-text" if task.get("format", "head") == "text" else name


def _extra(cfg: dict[str, Any], ranked: bool) -> dict[str, Any]:
    """The record's keyed settings without a column of their own that differ from their baseline
    (a setting the record predates is at its baseline); dropout only where the method has a rank."""
    extra = {}
    for path, baseline in _EXTRA_PATHS:
        node: Any = cfg
        for name in path.split("."):
            node = node.get(name, baseline) if isinstance(node, dict) else baseline
        if (baseline is REQUIRED or node != baseline) and (ranked or path != "dropout"):
            extra[path] = node
    return extra


# Columns that together name a setting: everything a run's result depends on except its seed.
SETTING_COLUMNS = [
    "model",
    "task",
    "method",
    "targets",
    "rank",
    "alpha",
    "lr",
    "lr_v",
    *GROUP_RATIOS.values(),
    "loraplus_ratio",
    "head_lr",
    "epochs",
    "extra",
]
# ... and everything but the two learning rates: the runs of one (eta_QK, eta_V) grid share it.
GRID_COLUMNS = [c for c in SETTING_COLUMNS if c not in ("lr", "lr_v")]
COLUMNS = [
    "path",
    "run_key",
    "status",
    "error",
    "model",
    "task",
    "metric",
    "method",
    "targets",
    "rank",
    "alpha",
    "lr",
    "lr_v",
    "lam",
    *GROUP_RATIOS.values(),
    "loraplus_ratio",
    "head_lr",
    "epochs",
    "extra",
    "seed",
    "sweep",
    "trainable",
    "value",
    "steps",
    "budget",
    "tuned",  # False: the run takes no optimizer step (epochs = 0), a 'Before fine-tune' baseline
    "harness_tasks",  # the harness tasks the run asked for, comma-joined; "" for none
    "harness_limit",  # harness.limit (NaN: every example) and harness.num_fewshot (NaN: each task's own)
    "harness_fewshot",
    "harness_error",  # the harness's one-line error where it could not run
    "harness",  # {task/metric: score} while loading; then one HARNESS column per task/metric
]
_NUMBERS = {
    **dict.fromkeys(
        ("rank", "alpha", "lr", "lr_v", "lam", *GROUP_RATIOS.values(), "loraplus_ratio", "head_lr"),
        "float64",
    ),
    **dict.fromkeys(
        ("epochs", "trainable", "value", "budget", "harness_limit", "harness_fewshot"), "float64"
    ),
    "seed": "int64",
    "steps": "int64",
    "tuned": "bool",
}
_PARALLEL_FROM = 400  # below this many files a worker pool costs more than it saves


def _rate(x: Any) -> float:
    """A rate rounded as run keys round it, so 3 * 1e-4 and 3e-4 land in the same cell; NaN for none."""
    return math.nan if x is None else rounded(float(x))


def _rates(record: RunRecord, cfg: dict[str, Any]) -> tuple[float, float, float]:
    """(eta_QK, eta_V, lambda) from the record's rates, falling back to lr / lam / lr_v of its config."""
    rates = record.rates
    qk: Any = rates.get("qk", cfg.get("lr"))  # as read from result.json
    lr = float(qk)
    if rates.get("lam") is not None:
        lam = float(rates["lam"])
    elif cfg.get("lr_v") is not None:
        lam = float(cfg["lr_v"]) / lr
    else:
        lam = float(cfg.get("lam") or 1.0)
    lr_v = float(rates["v"]) if rates.get("v") is not None else lam * lr
    return _rate(lr), _rate(lr_v), _rate(lam)


def _loraplus(cfg: dict[str, Any]) -> float:
    """LoRA+'s ratio where it acted; NaN where it was off (null, 1) or the record predates it."""
    ratio = (cfg.get("optim") or {}).get("loraplus_ratio")
    return (
        math.nan
        if ratio is None or float(ratio) == 1 or not has_rank(cfg["method"]["name"])
        else _rate(ratio)
    )


@functools.lru_cache(maxsize=256)
def _canonical(targets: Any) -> str:
    return parse_targets(list(targets) if isinstance(targets, tuple) else targets)


def _targets(value: Any) -> str:
    """parse_targets, remembered: a store holds few distinct spellings."""
    return _canonical(tuple(value) if isinstance(value, list) else value)


def flatten(record: RunRecord, path: str, pick: str = "final") -> dict[str, Any]:
    """One record as a row of COLUMNS; `pick` chooses the `final` or the `best` evaluation."""
    try:
        cfg = record.config
        method = str(cfg["method"]["name"])
        ranked = has_rank(method)
        rank = int(cfg["rank"]) if ranked else None
        lr, lr_v, lam = _rates(record, cfg)
        metric = record.metric or cfg["task"]["metric"]
        _check_metrics(record)
        if record.status in SCORED and not record.final:
            raise InvalidRecord(f"incomplete: status {record.status} but no final metrics")
        value = getattr(record, pick).get(metric)
        if record.status in SCORED and value is None:
            raise InvalidRecord(f"incomplete: status {record.status} but no {pick} {metric}")
        extra = _extra(cfg, ranked)
        if record.precision is not None:
            extra["precision"] = record.precision
        asked = cfg.get("harness") or {}
        scores, harness_error = _harness(record.harness)
        return {
            "path": path,
            "run_key": record.run_key,
            "status": (Status.RUNNING if record.status in AS_RUNNING else record.status).value,
            "error": record.error,
            "model": str(cfg["model"]["name"]),
            "task": task_of(cfg["task"]),
            "metric": str(metric),
            "method": method,
            "targets": _targets(cfg["targets"]),
            "rank": math.nan if rank is None else float(rank),
            "alpha": float(cfg.get("alpha") or cfg["rank"]) if ranked else math.nan,
            "lr": lr,
            "lr_v": lr_v,
            "lam": lam,
            **{key: _rate(cfg.get(key, 1.0)) for key in GROUP_RATIOS.values()},  # 1 before they existed
            "loraplus_ratio": _loraplus(cfg),
            "head_lr": _rate(cfg.get("head_lr")),
            "epochs": float(cfg.get("epochs", 0) or 0),
            "extra": json.dumps(extra, sort_keys=True, default=str),
            "seed": int(cfg["seed"]),
            "sweep": cfg.get("sweep_name") or record.sweep or "",
            "trainable": float((record.params or {}).get("trainable") or math.nan),
            "value": math.nan if value is None else float(value),
            "steps": record.steps,
            "budget": _budget(record),
            "tuned": _tuned(cfg),
            "harness_tasks": ",".join(map(str, asked.get("tasks") or [])),
            "harness_limit": _number(asked.get("limit")),
            "harness_fewshot": _number(asked.get("num_fewshot")),
            "harness_error": harness_error,
            "harness": scores,
        }
    except InvalidRecord:
        raise  # its message says what is wrong already
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InvalidRecord(f"{type(e).__name__}: {e}") from None


def _tuned(cfg: dict[str, Any]) -> bool:
    """Whether the run takes an optimizer step. epochs = 0 (and max_steps = 0) evaluates the untuned
    model: the 'Before fine-tune' row, never a cell of a tuned setting, a heatmap or a verdict."""
    max_steps = cfg.get("max_steps")
    return float(max_steps) > 0 if max_steps is not None else float(cfg.get("epochs", 0) or 0) > 0


def _number(x: Any) -> float:
    return math.nan if x is None else float(x)


def _harness(section: Optional[dict[str, Any]]) -> tuple[Optional[dict[str, float]], Optional[str]]:
    """({task/metric: score}, None) from the record's harness section (qvtune.train.harness); ({},
    its one-line error) where the harness could not run; (None, None) where none was asked for.

    A score lm-eval could not give (null: N/A) is NaN, never 0; one that is not a number makes the
    record unusable, as in `_check_metrics`. Shots and sample counts are not scores."""
    if section is None:
        return None, None
    tasks = section.get("tasks")
    if tasks is None:
        return {}, str(section.get("error") or "no scores and no error in the harness section")
    if not isinstance(tasks, dict):
        raise InvalidRecord(f"harness.tasks: {_json_kind(tasks)} where an object was expected")
    scores = {}
    for task, values in tasks.items():
        if not isinstance(values, dict):
            raise InvalidRecord(f"harness.tasks.{task}: {_json_kind(values)} where an object was expected")
        for metric, value in values.items():
            if metric in ("samples", "num_fewshot"):
                continue
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InvalidRecord(
                    f"harness.tasks.{task}.{metric}: {_json_kind(value)} where a number was expected"
                )
            scores[f"{task}/{metric}"] = _number(value)
    return scores, None


def _check_metrics(record: RunRecord) -> None:
    """Raise InvalidRecord on a metric in final, best or history that is not a number: float() would
    read the string "0.9" or true as a score. NaN and inf are numbers (a diverged run's loss)."""
    places = [("final", record.final), ("best", record.best)]
    for i, entry in enumerate(record.history):
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise InvalidRecord(f"history[{i}]: not an evaluation with a metrics object")
        places.append((f"history[{i}].metrics", entry["metrics"]))
    for where, metrics in places:
        for name, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRecord(f"{where}.{name}: {_json_kind(value)} where a number was expected")


def _json_kind(value: Any) -> str:
    """A JSON value as result.json spells it, with its type: string "0.9", bool true, null, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"bool {json.dumps(value)}"
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= 40 else value[:37] + "...")
        return f"string {text}"
    if isinstance(value, dict):
        return "object"
    return "list" if isinstance(value, list) else type(value).__name__


def _budget(record: RunRecord) -> float:
    """The fraction of its planned steps a run took (below 1: paused at a rung of a search); NaN for a
    record without its plan (an earlier version's) that is not completed."""
    if record.planned_steps:
        return min(1.0, record.steps / record.planned_steps)
    return 1.0 if record.status is Status.COMPLETED else math.nan


# ---------------------------------------------------------------------------------------------
# Filters: key=value with the run config's own key names (task=mnli, model.name=roberta-base, rank=8)


@dataclass(frozen=True)
class Filter:
    """One key=value condition; commas give alternatives (Hydra's sweep syntax), [q,v] is one list value."""

    key: str
    values: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.key}={','.join(self.values)}"

    def matches(self, record: RunRecord) -> bool:
        actual = _lookup(record, self.key)
        return any(_same(actual, want, self.key) for want in self.values)


def parse_filters(items: Sequence[str]) -> list[Filter]:
    """`task=mnli rank=8` -> filters; raises ValueError on an item without '='."""
    filters = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"filter {item!r}: expected key=value with a run config key, e.g. task=mnli or rank=8"
            )
        value = value.strip()
        values = (value.strip("[]"),) if value.startswith("[") else tuple(v.strip() for v in value.split(","))
        filters.append(Filter(key.strip(), values))
    return filters


_MISSING = object()


def _lookup(record: RunRecord, key: str) -> Any:
    """A config value by dotted key; a config group (model, task, method) stands for its name."""
    cfg = record.config
    if key == "status":
        return record.status.value
    if key in ("lr", "lr_v", "lam"):
        return dict(zip(("lr", "lr_v", "lam"), _rates(record, cfg)))[key]
    if key in GROUP_RATIOS.values():
        return cfg.get(key, 1.0)  # a record before the ratio existed trained at 1
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    if isinstance(node, dict) and "name" in node:
        return node["name"]
    if key == "rank" and not has_rank((cfg.get("method") or {}).get("name")):
        return None
    return node


def _same(actual: Any, want: str, key: str) -> bool:
    if actual is _MISSING:
        return False
    if key == "targets":
        try:
            return parse_targets(actual) == parse_targets(want)
        except ValueError:
            return False
    if actual is None:
        return want.lower() in ("null", "none", "")
    if isinstance(actual, bool):
        return want.lower() in (("true", "1", "yes") if actual else ("false", "0", "no"))
    if isinstance(actual, (int, float)):
        try:
            return math.isclose(float(actual), float(want), rel_tol=1e-6, abs_tol=1e-12)
        except ValueError:
            return False
    return str(actual).lower() == want.lower()


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class Collection:
    """The runs of a results folder (deduplicated), and the files that could not be used."""

    root: Path
    runs: pd.DataFrame  # COLUMNS + `setting` and `grid` keys; one row per (setting, seed)
    problems: list[tuple[str, str]]  # (path relative to root, reason), sorted
    duplicates: int  # records dropped because another record holds the same setting and seed
    pick: str

    @property
    def trained(self) -> pd.DataFrame:
        """Runs that tune the model (they take optimizer steps): the cells, heatmaps and verdicts."""
        return self.runs[self.runs["tuned"]]

    @property
    def untuned(self) -> pd.DataFrame:
        """Runs that evaluate the untuned model (epochs = 0): the 'Before fine-tune' baselines."""
        return self.runs[~self.runs["tuned"]]

    @property
    def harness_columns(self) -> list[str]:
        """The runs' harness score columns (harness:<task>/<metric>), standard errors left out."""
        return [c for c in self.runs.columns if c.startswith(HARNESS) and not c.endswith("_stderr")]


def _read(job: tuple[str, str, tuple[Filter, ...], str]) -> tuple[str, Any]:
    """('row', values of COLUMNS) | ('problem', reason) | ('skip', None) for one file; runs in worker
    processes."""
    path, rel, filters, pick = job
    try:
        record = RunRecord.read(Path(path))  # the summary only: the curves are in their own file
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return "problem", f"unreadable ({type(e).__name__}: {e}); half-written or corrupt"
    except InvalidRecord as e:
        return "problem", f"not a usable run record ({e})"
    try:
        if not record.config:
            raise InvalidRecord("no config object")
        if filters and not all(f.matches(record) for f in filters):
            return "skip", None
        row = flatten(record, rel, pick)
        return "row", tuple(row[c] for c in COLUMNS)  # a tuple pickles back from a worker faster than a dict
    except (InvalidRecord, AttributeError, TypeError, ValueError) as e:
        return "problem", f"not a usable run record ({e})"


def setting_key(runs: pd.DataFrame, columns: Sequence[str] = SETTING_COLUMNS) -> pd.Series:
    """One string per row naming the values of `columns` (NaN-safe, unlike multi-column groupby keys)."""
    if runs.empty:
        return pd.Series([], index=runs.index, dtype=object)
    parts = [runs[c].map(repr if runs[c].dtype.kind == "f" else str).astype(object) for c in columns]
    key = parts[0]
    for p in parts[1:]:
        key = key + "|" + p
    return key


def load(
    root: str | Path,
    filters: Sequence[Filter] = (),
    pick: str = "final",
    workers: Optional[int] = None,
) -> Collection:
    """Read every result.json below `root` (recursively), keep those matching all `filters`."""
    root = Path(root).expanduser()
    if pick not in PICKS:
        raise ValueError(f"pick={pick!r}: expected one of {', '.join(PICKS)}")
    jobs = [(str(root / rel), rel, tuple(filters), pick) for rel in result_files(root)]
    workers = workers or min(available_cpus(), 8)
    if workers > 1 and len(jobs) >= _PARALLEL_FROM:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_read, jobs, chunksize=max(16, len(jobs) // (8 * workers))))
    else:
        results = [_read(job) for job in jobs]
    rows = [payload for kind, payload in results if kind == "row"]
    problems = [(job[1], payload) for job, (kind, payload) in zip(jobs, results) if kind == "problem"]
    # text stays in plain Python objects: grouping and joining them is several times faster than arrow strings
    runs = pd.DataFrame.from_records(rows, columns=COLUMNS).astype(
        {**dict.fromkeys(COLUMNS, object), **_NUMBERS}
    )
    runs["setting"] = setting_key(runs)
    runs["_order"] = runs["status"].map({s: i for i, s in enumerate(STATUSES)})
    runs = runs.sort_values(["setting", "seed", "_order", "path"], kind="stable")
    twins = runs.duplicated(["setting", "seed"], keep=False)
    if twins.any():  # the kept record belongs to every sweep its twins were run for
        joined = (
            runs[twins]
            .groupby(["setting", "seed"])["sweep"]
            .transform(lambda s: ",".join(sorted({x for x in s if x})))
        )
        runs.loc[twins, "sweep"] = joined
    deduped = runs.drop_duplicates(["setting", "seed"], keep="first")
    duplicates = len(runs) - len(deduped)
    deduped = deduped.drop(columns="_order").sort_values("path", kind="stable").reset_index(drop=True)
    deduped["grid"] = setting_key(deduped, GRID_COLUMNS)
    return Collection(root, _harness_columns(deduped), problems, duplicates, pick)


def _harness_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """The `harness` dicts as one float column per task/metric (HARNESS prefix, sorted; NaN where a
    run has no such score: not asked, failed or N/A)."""
    scores = runs.pop("harness").dropna()
    if scores.empty:
        return runs
    wide = pd.DataFrame.from_records(scores.tolist(), index=scores.index)
    wide = wide.reindex(columns=sorted(wide.columns)).astype("float64").add_prefix(HARNESS)
    return runs.join(wide)


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds


def scored(runs: pd.DataFrame) -> pd.Series:
    """The value of runs that count (completed or diverged, with a score); NaN for the others."""
    return runs["value"].where(runs["status"].isin(SCORED))


def over_seeds(runs: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and count of the scored seeds per group, with status counts,
    the largest budget reached and `partial`: the mean of the runs paused at a rung of a search.

    Constant-per-setting columns (lr, lr_v, lam, epochs, metric) come along as their first value.
    """
    frame = runs.assign(
        _v=scored(runs),
        _partial=runs["value"].where((runs["status"] == Status.RUNNING.value) & (runs["budget"] < 1)),
        **{f"_{s}": (runs["status"] == s).astype(int) for s in STATUSES},
    )
    constants = {c: (c, "first") for c in ("lr", "lr_v", "lam", "epochs", "metric") if c not in by}
    out = frame.groupby(list(by), sort=True, dropna=False).agg(
        mean=("_v", "mean"),
        std=("_v", "std"),
        n=("_v", "count"),
        completed=("_completed", "sum"),
        diverged=("_diverged", "sum"),
        running=("_running", "sum"),
        failed=("_failed", "sum"),
        budget=("budget", "max"),
        partial=("_partial", "mean"),
        trainable_min=("trainable", "min"),
        trainable_max=("trainable", "max"),
        **constants,
    )
    return out.reset_index()


def describe(chosen: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Add `seeds` (every seed with a record, any status) and `sweeps` (that ran it) to chosen settings."""
    grouped = runs[runs["setting"].isin(chosen["setting"])].groupby("setting")
    seeds = grouped["seed"].agg(lambda s: ",".join(str(x) for x in sorted(set(s))))
    sweeps = grouped["sweep"].agg(lambda s: ",".join(sorted({y for x in s for y in x.split(",") if y})))
    return chosen.assign(seeds=chosen["setting"].map(seeds), sweeps=chosen["setting"].map(sweeps))


def of_sweep(runs: pd.DataFrame, name: str) -> pd.Series:
    """Runs made by a sweep whose name starts with `name` (table1, table1-llama, ...)."""
    return runs["sweep"].map(lambda s: any(x.startswith(name) for x in s.split(",") if x))


def pick_settings(stats: pd.DataFrame, cell: Sequence[str]) -> pd.DataFrame:
    """One setting per cell when several exist (different learning rates, epochs, batch sizes, ...).

    The rule, in order: lambda = 1; the learning rates most cells of the table have runs at (so cells
    compare like with like); the most scored seeds; the highest mean; then the setting key, so the
    choice is deterministic. `alternatives` counts the settings that were left out.
    """
    if stats.empty:
        return stats.assign(alternatives=pd.Series(dtype="int64"))
    rates = stats["lr"].map(repr) + "|" + stats["lr_v"].map(repr)
    ranked = stats.assign(
        _lam1=np.isclose(stats["lam"], 1.0),
        _common=rates.map(rates.value_counts()),
        _mean=stats["mean"].fillna(-np.inf),
    ).sort_values(
        [*cell, "_lam1", "_common", "n", "_mean", "setting"],
        ascending=[True] * len(cell) + [False, False, False, False, True],
        kind="stable",
    )
    sizes = ranked.groupby(list(cell), dropna=False)["setting"].transform("size")
    chosen = ranked.assign(alternatives=sizes - 1).drop_duplicates(list(cell), keep="first")
    return chosen.drop(columns=["_lam1", "_common", "_mean"]).reset_index(drop=True)
