"""Every run record below a results folder as one pandas table: one row per (setting, seed).

The record's own config decides where a run belongs, never its file or folder name, so runs can be
moved, copied between stores or nested in sweep folders. A record that cannot be read (half-written,
not JSON, missing fields, a metric that is not a number, a finished run without its final metrics) is
reported by path and skipped: one bad file never stops a collection.

What a run is comes from the one definition of it, the run's identity (qvtune.store.identity): its
setting is the identity without the seed, so two runs that differ in any keyed setting (the kv-recall
task's pairs, max_train_samples, a method's option, the precision used, ...) are never one setting,
and two records of one identity are duplicates. A setting a record predates is at its identity
baseline. Besides the setting, each row carries its `variant` (what tells cells of one table apart)
and its `base` (what an untuned model's score depends on: the Before Fine-tune row it stands beside).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional, cast

import numpy as np
import pandas as pd

from qvtune.config.rates import GROUP_RATIOS, rounded
from qvtune.config.schema import RunConfig, has_rank, parse_targets
from qvtune.status import Status
from qvtune.store.identity import IDENTITY, REQUIRED, UNKEYED, run_identity
from qvtune.store.record import InvalidRecord, RunRecord
from qvtune.store.store import result_files
from qvtune.train.runtime import PRECISIONS_USED, available_cpus

# Record statuses whose row says running: not finished, so not scored. A paused run stopped at a rung
# of a search (`until`), an interrupted one was killed; both resume from their checkpoint.
AS_RUNNING = (Status.PAUSED, Status.INTERRUPTED)
# completed, diverged, running, failed: the statuses of rows, in the preference order among duplicates
STATUSES = tuple(s for s in Status if s not in (*AS_RUNNING, Status.PENDING))
SCORED = (Status.COMPLETED, Status.DIVERGED)  # a diverged run counts with what it scored, and is marked
PICKS = ("final", "best")

LORAPLUS = "optim.loraplus_ratio"  # its column: loraplus_ratio, NaN where LoRA+ is off
HARNESS = "harness:"  # the column of a harness score: harness:<task>/<metric> (arc_easy/acc)

# Identity settings (dotted paths of qvtune.store.identity.IDENTITY; a name stands for the path and
# every path below it) that have a column of their own in the runs table, the task's naming its format
# too; `extra` holds every other keyed setting that is not at its baseline, as JSON.
OWN_COLUMNS = (
    "task.name",
    "task.format",
    "method.name",
    "targets",
    "rank",
    "alpha",
    "lr",
    "lam",
    *GROUP_RATIOS.values(),
    "head_lr",
    LORAPLUS,
    "epochs",
    "seed",
)
# What the tables lay out as their rows and columns (model, task, method, targets, rank), what they
# average over (seed) or choose between within a cell (pick_settings: the learning rates, then the
# training length), and the harness settings, which decide only the harness's own scores. Every other
# keyed setting that differs makes another `variant`: another cell, its label naming the setting.
TABLE_CHOICES = (
    "seed",
    "lr",
    "lam",
    "epochs",
    "max_steps",
    "task.name",
    "task.format",
    "method.name",
    "targets",
    "rank",
    "harness",
)
# The settings that cannot change the score of a run that takes no optimizer step (epochs = 0), which
# evaluates once the model as loaded, with the method's adapters at their start: LoRA's B = 0, DoRA's
# magnitude = |W|, IA3's l = 1, AdaLoRA's E = 0, PiSSA's and OLoRA's residual plus their adapters = W
# (to rounding). So a 'Before Fine-tune' row is matched to the tuned cells whose identity is its own
# but for these (`base`). Everything else counts: the model, its dtype and the precision used, the
# task's data and metric (a synthetic task's train_size moves its dev set: one generator draws both),
# max_len, padding, max_eval_samples. A keyed setting added later counts too until it is listed here.
TRAINING_ONLY = (
    "seed",  # what cells average over (a classifier's fresh head is drawn from it)
    "epochs",
    "max_steps",
    "method",  # which method, and its options: each starts at the model it adapts
    "targets",
    "layers",
    "rank",
    "alpha",
    "dropout",
    "attention_dropout",  # dropout is off when the model is evaluated
    "lr",
    "lam",
    "head_lr",
    *GROUP_RATIOS.values(),
    "optim",
    "batch_size",  # the training batches (the dev set is evaluated in eval_batch_size, unkeyed)
    "grad_accum",
    "group_by_length",
    "max_train_samples",
    "eval_every",  # when a run evaluates: a run without steps evaluates once
    "eval_at_start",
    "diverge_factor",
    "harness",  # the harness's scores are its own columns, never the headline metric
)


def _under(path: str, names: Sequence[str]) -> bool:
    """Whether a dotted path is one of `names` or lies below one."""
    return any(path == n or path.startswith(n + ".") for n in names)


def task_of(task: dict[str, Any]) -> str:
    """The task's name in the tables; a task answered as text by a causal LM (task.format=text) is
    its own column, `<name>-text`, never mixed with the same data through a classification head."""
    name = str(task["name"])
    return f"{name}-text" if task.get("format", "head") == "text" else name


# The schema's nested configs (model, task, task.kv_recall, optim, ...) and the fields of each, by
# dotted path ("" for the top level): IDENTITY classifies every field of the schema.
_NESTED = {path.rsplit(".", 1)[0] for path in IDENTITY if "." in path}
_FIELDS: dict[str, list[str]] = {}
for _path in dict.fromkeys([*IDENTITY, *sorted(_NESTED)]):
    _parent, _, _name = _path.rpartition(".")
    _FIELDS.setdefault(_parent, []).append(_name)
# What a field a record lacks holds: a keyed field its baseline, a nested config without a row of its
# own (model, optim) its fields' baselines, anything else (unkeyed: never read) None.
_ABSENT: dict[str, Any] = {
    path: {} if path not in IDENTITY else None if IDENTITY[path] in (UNKEYED, REQUIRED) else IDENTITY[path]
    for path in (*IDENTITY, *_NESTED)
}
_KEYED_TOP = {path.split(".", 1)[0] for path, baseline in IDENTITY.items() if baseline is not UNKEYED}
# The paths `extra`, `variant` and `base` leave out (Identity)
_LEFT_OUT = [{p for p in IDENTITY if _under(p, left)} for left in (OWN_COLUMNS, TABLE_CHOICES, TRAINING_ONLY)]


class _Config:
    """A record's config dict as run_identity reads a RunConfig: by attribute, every field of the
    schema there, one the record predates at its identity baseline. Built at once into plain
    attributes, which read several times faster than a __getattr__ that looks each one up."""

    def __init__(self, values: Any, prefix: str = "") -> None:
        given = values if isinstance(values, dict) else {}
        fields = self.__dict__
        for name in _FIELDS[prefix]:
            path = f"{prefix}.{name}" if prefix else name
            value = given.get(name, _ABSENT[path])
            fields[name] = _Config(value, path) if path in _NESTED and isinstance(value, dict) else value


class Identity(NamedTuple):
    """What a record's identity gives its row: the columns taken from it and, as sorted JSON of the
    settings not at their baseline ({dotted path: value}), its `extra`, `variant` and `base`."""

    columns: dict[str, Any]  # targets, rank, alpha, the rate ratios, head_lr, loraplus_ratio
    extra: str  # every keyed setting without a column (OWN_COLUMNS): with the columns, the setting
    variant: str  # every keyed setting the tables neither lay out nor choose between (TABLE_CHOICES)
    base: str  # every keyed setting an untuned model's score depends on (all but TRAINING_ONLY)


def record_identity(cfg: dict[str, Any], precision: Optional[str]) -> Identity:
    """The identity of a record's config run at `precision` (None: an earlier version's record that
    did not say; a setting of its own). Remembered by the config's keyed part: the seeds of a setting,
    and the many settings of a store that share a config but for their seed, cost one computation."""
    keyed = {k: v for k, v in cfg.items() if k in _KEYED_TOP and k != "seed"}
    return _identity(json.dumps(keyed, sort_keys=True, default=str), precision)


@functools.lru_cache(maxsize=4096)
def _identity(keyed: str, precision: Optional[str]) -> Identity:
    known = precision if precision in PRECISIONS_USED else PRECISIONS_USED[0]  # run_identity checks it
    ident = run_identity(cast(RunConfig, _Config(json.loads(keyed))), known)
    ident["precision"] = precision  # an unknown one is a setting of its own, never another's
    changed = {p: _canonical(v) for p, v in ident.items() if v != IDENTITY[p] or IDENTITY[p] is REQUIRED}
    rank = ident.get("rank")
    alpha = ident.get("alpha")
    columns = {
        "targets": ident["targets"],
        "rank": _number(rank),
        "alpha": _number(rank if alpha is None else alpha) if "alpha" in ident else math.nan,
        **{key: ident[key] for key in GROUP_RATIOS.values()},
        "head_lr": _number(ident["head_lr"]),
        "loraplus_ratio": _number(ident[LORAPLUS]),
    }

    extra, variant, base = (
        json.dumps({p: v for p, v in changed.items() if p not in leave_out}, sort_keys=True)
        for leave_out in _LEFT_OUT
    )
    return Identity(columns, extra, variant, base)


def _canonical(value: Any) -> Any:
    """A value as one JSON spelling: 3.0 and 3 (a float field a record wrote as an int) are one."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


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
    "variant",  # the identity's settings that tell cells of a table apart, as JSON (Identity)
    "base",  # ... that an untuned model's score depends on: its Before Fine-tune row's
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


def flatten(record: RunRecord, path: str, pick: str = "final") -> dict[str, Any]:
    """One record as a row of COLUMNS; `pick` chooses the `final` or the `best` evaluation."""
    try:
        cfg = record.config
        ident = record_identity(cfg, record.precision)
        lr, lr_v, lam = _rates(record, cfg)
        metric = record.metric or cfg["task"]["metric"]
        _check_metrics(record)
        if record.status in SCORED and not record.final:
            raise InvalidRecord(f"incomplete: status {record.status} but no final metrics")
        value = getattr(record, pick).get(metric)
        if record.status in SCORED and value is None:
            raise InvalidRecord(f"incomplete: status {record.status} but no {pick} {metric}")
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
            "method": str(cfg["method"]["name"]),
            "lr": lr,
            "lr_v": lr_v,
            "lam": lam,
            **ident.columns,
            "epochs": float(cfg.get("epochs", 0) or 0),
            "extra": ident.extra,
            "variant": ident.variant,
            "base": ident.base,
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
    runs: pd.DataFrame  # COLUMNS + `setting` and `grid` keys; one row per (setting, seed): per identity
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


def shared_settings(runs: pd.DataFrame, named: Sequence[str]) -> dict[str, Any]:
    """The settings all of `runs` have alike that a label naming the columns `named` leaves out, as
    labels.differences takes them: each setting column with one value among them (NaN as None) and the
    keyed settings of their `extra`."""
    shared: dict[str, Any] = {}
    extra = runs["extra"].unique()
    if len(extra) == 1:
        shared.update(json.loads(extra[0]))
    for column in [c for c in SETTING_COLUMNS if c not in (*named, "extra")]:
        values = runs[column].unique()
        if len(values) == 1:
            value = values[0].item() if isinstance(values[0], np.generic) else values[0]
            shared[column] = None if isinstance(value, float) and math.isnan(value) else value
    return shared


def describe(chosen: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Add `seeds` (every seed with a record, any status) and `sweeps` (that ran it) to chosen settings."""
    grouped = runs[runs["setting"].isin(chosen["setting"])].groupby("setting")
    seeds = grouped["seed"].agg(lambda s: ",".join(str(x) for x in sorted(set(s))))
    sweeps = grouped["sweep"].agg(lambda s: ",".join(sorted({y for x in s for y in x.split(",") if y})))
    return chosen.assign(seeds=chosen["setting"].map(seeds), sweeps=chosen["setting"].map(sweeps))


def sweeps_named(sweeps: str, name: str) -> list[str]:
    """The sweeps of a run's `sweep` field ("a,b": every sweep that ran it) whose name starts with `name`."""
    return [x for x in sweeps.split(",") if x and x.startswith(name)]


def of_sweep(runs: pd.DataFrame, name: str) -> pd.Series:
    """Runs made by a sweep whose name starts with `name` (table1, table1-llama, ...)."""
    return runs["sweep"].map(lambda s: bool(sweeps_named(s, name)))


def pick_settings(stats: pd.DataFrame, cell: Sequence[str]) -> pd.DataFrame:
    """One setting per cell when several exist. A table's cell holds one `variant` (a Before Fine-tune
    cell one `base`), so its settings differ only in what the tables choose between (TABLE_CHOICES:
    the learning rates, the training length, the harness settings), or for an untuned cell in what
    training would change (TRAINING_ONLY).

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
