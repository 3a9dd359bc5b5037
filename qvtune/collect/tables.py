"""Table 1 (weight types x rank, LoRA) and Table 2 (methods x GLUE tasks) built from the runs, the
weight-type comparison, and the lm-evaluation-harness scores. Table 1's columns are the paper's target
sets and every other one the runs have (qvo, qkvo+mlp, ...: any set of qvtune.config.weight_types),
ordered by size, then by the registry. Each table has a 'Before Fine-tune' row per model and task
(and `base`): the runs that take no optimizer step (epochs = 0), for a classifier its fresh head, for
a text task the untuned model answering zero-shot.

Cells never mix runs that differ in a setting that decides their result (records.Identity): runs of
one model and task whose `variant` differs are other rows, each named by the settings it has that the
others do not ("MNLI(R) r = 8 [max_train_samples=1000]"; the runs at every such setting's baseline keep
the plain name), and a 'Before Fine-tune' row stands beside the tuned rows of its own `base` only, named
likewise where a model and task have several. Where nothing differs the tables are what they always were.

A table is kept long (one row per cell, every number the cell rests on) so that CSV, Markdown, LaTeX
and the terminal all render the same data; the wide layout is only a rendering.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from qvtune.collect import labels, paper
from qvtune.collect.records import (
    HARNESS,
    SCORED,
    STATUSES,
    Collection,
    describe,
    of_sweep,
    over_seeds,
    pick_settings,
    sweeps_named,
)
from qvtune.config.weight_types import target_label, target_order
from qvtune.status import Status

TABLE1_COLUMNS = ("q", "k", "v", "qk", "qv", "qkv")
COMPARE_COLUMNS = ("q", "k", "v", "qv", "qkv")  # the demo summary's comparison
TABLE2_TARGETS = ("qkv", "qv")
BEFORE = "Before Fine-tune"  # the paper's row for the untuned model (its Table 2)
HARNESS_PROTOCOL = ["harness_limit", "harness_fewshot"]  # runs the harness scored otherwise: other rows
CELL_COLUMNS = [
    "row",
    "column",
    "model",
    "task",
    "method",
    "targets",
    "rank",
    "lam",
    "lr",
    "lr_v",
    "epochs",
    "metric",
    "mean",
    "std",
    "n",
    "n_expected",
    *(s.value for s in STATUSES),
    "seeds",
    "sweeps",
    "alternatives",
    "trainable_min",
    "trainable_max",
    "paper",
    "diff",
    "place",
]


@dataclass
class Table:
    """A table as long cells plus the order and labels of its rows and columns."""

    name: str  # file stem
    title: str
    row_header: str
    rows: list[str]
    columns: list[str]
    column_labels: dict[str, str]
    latex_labels: dict[str, str]
    cells: pd.DataFrame  # CELL_COLUMNS
    scale: float  # 1 for fractions (Table 1), 100 for percentages (Table 2)
    digits: int
    marks: int  # how many places are marked: 3 per row (Table 1), 2 per column (Table 2)
    lead: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # extra leading columns: header -> row -> text
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.cells.empty


def _expected(chosen: pd.DataFrame) -> int:
    """Seeds a complete cell should have: every seed any chosen setting of the table has a record for."""
    seeds = {s for text in chosen["seeds"] for s in text.split(",") if s}
    return len(seeds)


def _places(
    cells: pd.DataFrame, by: Sequence[str], marks: int, scale: float, digits: int, skip: Sequence[str] = ()
) -> pd.Series:
    """1, 2, 3 for the best, second and third value (as displayed, so ties share a place) within each
    group of the columns `by`."""
    eligible = (cells["n"] > 0) & ~cells["row"].isin(skip)
    shown = (cells["mean"] * scale).round(digits).where(eligible)
    place = shown.groupby([cells[c] for c in by]).rank(method="dense", ascending=False)
    return place.where(place <= marks, 0).astype(int)


def _sorted(frame: pd.DataFrame, keys: dict[str, Optional[Callable[[Any], Any]]]) -> pd.DataFrame:
    """Sort by the columns of `keys`, each mapped through its sort-key function (None: the value itself)."""
    return frame.sort_values(
        list(keys), key=lambda s: s.map(keys[s.name]) if keys[s.name] else s, kind="stable"
    )


def _known(order: tuple[str, ...]) -> Callable[[Any], Any]:
    return lambda v: labels.order(v, order)


def _names(frames: Sequence[pd.DataFrame], column: str, by: Sequence[str]) -> dict[tuple[Any, ...], str]:
    """(*by, its `column`: a variant or base) -> what tells it apart from the others the frames hold
    under the same `by` (labels.differences); '' where it is the only one."""
    rows = pd.concat([f[[*by, column]] for f in frames if not f.empty]).drop_duplicates()
    out: dict[tuple[Any, ...], str] = {}
    for key, group in rows.groupby(list(by), sort=False):
        texts = list(group[column])
        named = labels.differences([json.loads(t) for t in texts]) if len(texts) > 1 else [""]
        out.update({(*key, text): name for text, name in zip(texts, named)})
    return out


def _name_of(
    frame: pd.DataFrame, names: dict[tuple[Any, ...], str], by: Sequence[str], column: str
) -> list[str]:
    """Each row's name in `names` (from `_names` with the same `by` and `column`)."""
    return [names[key] for key in zip(*(frame[c] for c in (*by, column)))]


def _suffix(name: str) -> str:
    return f" [{name}]" if name else ""


NAMED_NOTE = (
    "A row named [setting=value, ...] holds runs that differ from the other rows of its model and task "
    "in those settings (each row at the baseline of those it does not name)."
)

PLACES_NOTE = (
    "Each column ranks a row only against the rows of the same data and evaluation (one Before Fine-tune)."
)


def _finish(cells: pd.DataFrame, rows: list[str], columns: list[str]) -> pd.DataFrame:
    """The cells in reading order (rows, then columns), with the difference to the paper."""
    cells = cells.assign(diff=cells["mean"] - cells["paper"])
    cells = _sorted(cells, {"row": rows.index, "column": columns.index})
    return cells.reindex(columns=CELL_COLUMNS).reset_index(drop=True)


def _notes_for(cells: pd.DataFrame, rule: list[str]) -> list[str]:
    notes = list(rule)
    partial = cells[(cells["n"] < cells["n_expected"]) & (cells["n"] > 0)]
    if len(partial):
        expected = int(cells["n_expected"].max())
        notes.append(f"{len(partial)} cell(s) have fewer scored seeds than the {expected} the table holds.")
    diverged = int(cells[Status.DIVERGED.value].sum())
    if diverged:
        notes.append(f"{diverged} diverged run(s) count with the score they reached (marked 'diverged').")
    chosen_from_many = int((cells["alternatives"] > 0).sum())
    if chosen_from_many:
        notes.append(
            f"{chosen_from_many} cell(s) had runs at several settings: shown is the one with lambda = 1, "
            "then at the learning rates most cells use, then with the most seeds, then the best mean; "
            "the CSV names it (lr, lr_v, epochs) and counts the alternatives."
        )
    return notes


def _own_sweep(runs: pd.DataFrame, name: str) -> tuple[pd.DataFrame, str]:
    """The runs of the table's own sweep when the store has any, else all of them; and a note saying which."""
    own = of_sweep(runs, name)
    if own.any():
        left = int((~own).sum())
        others = f" ({left} run(s) of other sweeps left out)." if left else "."
        names = sorted({x for s in runs.loc[own, "sweep"] for x in sweeps_named(s, name)})
        sweeps = f"the {names[0]} sweep" if len(names) == 1 else f"the {', '.join(names)} sweeps"
        return runs[own], f"Only runs of {sweeps} are used{others}"
    return runs, f"No run belongs to a {name} sweep, so every matching run is used."


def _before_what(tasks: pd.Series) -> str:
    """What a 'Before Fine-tune' score is, for the formats of `tasks` (text tasks are <name>-text)."""
    text = {str(t).endswith("-text") for t in tasks}
    if text == {True}:
        return "the untuned model answering zero-shot"
    if text == {True, False}:
        return "the untuned model: a fresh head for a classifier, zero-shot for a text task"
    return "the fresh head"


def _before(
    coll: Collection, sweep: Optional[str], beside: pd.DataFrame, alone: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """The 'Before Fine-tune' settings, one per model, task and `base`, from the runs that take no
    optimizer step; of the table's own `sweep` where it has any. Each stands beside the tuned cells
    `beside` with its model, task, metric and base (the untuned model they start from, scored alike);
    with `alone`, also every one of a model and task without tuned cells. Returns them with their seeds
    and counts (as `describe` gives), and a note when they come from other sweeps."""
    runs, notes = coll.untuned, []
    if sweep is not None and not runs.empty:
        own = of_sweep(runs, sweep)
        if own.any():
            runs = runs[own]
        elif of_sweep(coll.runs, sweep).any():
            notes.append(
                f"The {sweep} sweep has no epochs = 0 run: '{BEFORE}' rows take those of other sweeps."
            )
    match = ["model", "task", "metric", "base"]
    stats = over_seeds(runs, [*match, "setting"])
    tuned = beside[match].drop_duplicates()
    same = stats.merge(tuned, on=match) if not stats.empty else stats
    if alone:
        tasks = pd.MultiIndex.from_frame(tuned[["model", "task"]])
        same = pd.concat([same, stats[~pd.MultiIndex.from_frame(stats[["model", "task"]]).isin(tasks)]])
    chosen = describe(pick_settings(same, ["model", "task", "base"]), runs)
    if chosen.empty:
        return chosen, []
    chosen = chosen.assign(
        method="",
        targets="",
        rank=np.nan,
        lam=np.nan,
        trainable_min=0.0,
        trainable_max=0.0,
        n_expected=_expected(chosen),
        _before=True,
    )
    return chosen, notes


def _table1_like(
    coll: Collection, name: str, title: str, columns: Sequence[str], methods: Optional[Sequence[str]]
) -> Table:
    """Weight types as columns, (task, model[, method], rank) as rows; `methods` None: every method."""
    runs, sweep = coll.trained, None
    if methods is not None:  # Table 1 proper: LoRA at lambda = 1, from the table1 sweep when there is one
        runs = runs[runs["method"].isin(methods) & np.isclose(runs["lam"], 1.0)]
        runs, sweep_note = _own_sweep(runs, name)
        rule = [sweep_note, "Cells are LoRA runs with lambda = 1 (eta_V = eta_QK)."]
        sweep = name
    else:
        rule = [
            "Cells prefer lambda = 1 runs, at the learning rates most cells use, when a cell has several."
        ]
    wanted = sorted({*columns, *runs["targets"]}, key=target_order)  # the others where the runs have them
    cell = ["model", "task", "method", "rank", "targets", "variant"]
    chosen = describe(pick_settings(over_seeds(runs, [*cell, "base", "setting"]), cell), runs)
    if chosen.empty:
        return _empty(name, title)
    chosen["n_expected"] = _expected(chosen)
    with_method = methods is None
    variants = _names([chosen], "variant", ["model", "task"])
    chosen["_variant"] = _name_of(chosen, variants, ["model", "task"], "variant")

    def row_label(r: pd.Series) -> str:
        head = f"{labels.task_label(r.task)}({labels.model_short(r.model)})"
        if with_method:
            head += f" {labels.METHOD_LABEL.get(r.method, r.method)}"
        head = head if np.isnan(r["rank"]) else f"{head} r = {int(r['rank'])}"
        return head + _suffix(r["_variant"])

    chosen["row"] = chosen.apply(row_label, axis=1)
    chosen["column"] = chosen["targets"]
    chosen["paper"] = [
        paper.table1_value(r.model, r.task, r.method, r.targets, r["rank"], r.lam)
        for _, r in chosen.iterrows()
    ]
    # beside the tuned rows of its model and task, with their metric, under each weight type they fill
    before, before_notes = _before(coll, sweep, chosen)
    if not before.empty:
        rule += [
            *before_notes,
            f"'{BEFORE}' rows are the epochs = 0 evaluation of {_before_what(before['task'])}, "
            "repeated under each weight type of its model and task; their [paper] value is the paper's "
            f"Table 2 {BEFORE} row.",
        ]
    beside = before.merge(
        chosen[["model", "task", "base", "column"]].drop_duplicates(), on=["model", "task", "base"]
    )
    bases = _names([chosen, beside], "base", ["model", "task"])
    chosen["_base"] = _name_of(chosen, bases, ["model", "task"], "base")
    beside = beside.assign(_base=_name_of(beside, bases, ["model", "task"], "base"), _variant="")
    beside["row"] = [
        f"{labels.task_label(t)}({labels.model_short(m)}) {BEFORE}{_suffix(b)}"
        for m, t, b in zip(beside.model, beside.task, beside._base)
    ]
    beside["paper"] = [
        paper.table2_value(m, t, None, None, None, None) for m, t in zip(beside.model, beside.task)
    ]
    cells = pd.concat(
        [df for df in (beside, chosen.assign(_before=False)) if not df.empty], ignore_index=True
    )
    cells["paper"] = cells["paper"].astype("float64")
    cells = _sorted(
        cells,
        {
            "task": _known(labels.TABLE1_TASKS + labels.GLUE),
            "model": _known(labels.MODEL_ORDER),
            "_base": None,
            "_before": lambda b: not b,
            "method": _known(labels.METHOD_ORDER),
            "rank": None,
            "_variant": None,
        },
    )
    if (cells["_variant"] != "").any() or (cells["_base"] != "").any():
        rule.append(NAMED_NOTE)
    cells["place"] = _places(cells, ["row"], 3, 1.0, 3, skip=tuple(beside["row"]))
    present = [c for c in wanted if c in set(chosen["column"])] if with_method else wanted
    rows = list(dict.fromkeys(cells["row"]))
    return Table(
        name=name,
        title=title,
        row_header="Task(model) method rank" if with_method else "Task(model) rank",
        rows=rows,
        columns=present,
        column_labels={c: c for c in present},
        latex_labels={c: target_label(c) for c in present},
        cells=_finish(cells, rows, present),
        scale=1.0,
        digits=3,
        marks=3,
        notes=_notes_for(pd.concat([chosen, before], ignore_index=True), rule),
    )


def _empty(name: str, title: str) -> Table:
    return Table(name, title, "", [], [], {}, {}, pd.DataFrame(columns=CELL_COLUMNS), 1.0, 3, 3)


def table1(coll: Collection) -> Table:
    """The paper's Table 1: LoRA, one row per (task, model, rank), one column per weight-type subset."""
    return _table1_like(
        coll,
        "table1",
        "Table 1: LoRA fine-tuning of different weight types (mean ± std over seeds, headline metric)",
        TABLE1_COLUMNS,
        ("lora",),
    )


def compare(coll: Collection) -> Table:
    """Table-1-style comparison of q, k, v, qv, qkv and every other target set the runs have (qvo,
    qkvo+mlp, ...), for whatever model, task, method and rank they hold."""
    return _table1_like(
        coll,
        "compare",
        "Weight types compared (mean ± std over seeds, headline metric)",
        COMPARE_COLUMNS,
        None,
    )


def _table2_label(method: str, targets: str, rank: float, lam: float) -> str:
    base = f"{labels.METHOD_LABEL.get(method, method)} ({targets.upper()})"
    parts = [] if np.isnan(rank) else [f"r = {int(rank)}"]
    if targets != "qkv" or not np.isclose(lam, 1.0):
        parts.append(f"λ = {labels.num(lam)}")
    return f"{base} {', '.join(parts)}".strip()


def table2(coll: Collection) -> Table:
    """The paper's Table 2: methods (QKV and QV, with lambda) x GLUE tasks, with the trainable parameters."""
    title = "Table 2: fine-tuning methods across tasks (mean ± std over seeds, in %)"
    row_key = ["model", "method", "targets", "rank", "lam"]
    runs, sweep_note = _own_sweep(coll.runs, "table2")
    trained_runs = runs[runs["tuned"] & runs["targets"].isin(TABLE2_TARGETS)]
    cell = [*row_key, "task", "variant"]
    trained = describe(pick_settings(over_seeds(trained_runs, [*cell, "base", "setting"]), cell), runs)
    before, before_notes = _before(coll, "table2", trained, alone=True)
    if trained.empty and before.empty:
        return _empty("table2", title)
    group = ["model", "task"]
    if not trained.empty:
        variants = _names([trained], "variant", group)
        trained = trained.assign(
            n_expected=_expected(trained), _before=False, _name=_name_of(trained, variants, group, "variant")
        )
    if not before.empty:
        bases = _names([trained, before], "base", group)
        before = before.assign(_name=_name_of(before, bases, group, "base"))
    cells = pd.concat([df for df in (before, trained) if not df.empty], ignore_index=True)
    cells["row"] = [
        (BEFORE if b else _table2_label(m, t, r, lam)) + _suffix(name)
        for b, m, t, r, lam, name in zip(
            cells["_before"], cells["method"], cells["targets"], cells["rank"], cells["lam"], cells["_name"]
        )
    ]
    if cells["model"].nunique() > 1:
        cells["row"] = cells["model"].map(labels.model_short) + ": " + cells["row"]
    cells["column"] = cells["task"]
    cells["paper"] = [
        paper.table2_value(r.model, r.task, None if r._before else r.method, r.targets, r["rank"], r.lam)
        for _, r in cells.iterrows()
    ]
    cells["paper"] = cells["paper"].astype("float64")
    cells = _sorted(
        cells,
        {
            "model": _known(labels.MODEL_ORDER),
            "_before": lambda b: not b,
            "targets": _known(("",) + TABLE2_TARGETS),
            "method": _known(("",) + labels.METHOD_ORDER),
            "rank": lambda r: -1 if np.isnan(r) else r,
            "lam": lambda lam: -1 if np.isnan(lam) else lam,
            "_name": None,
            "column": _known(labels.GLUE),
        },
    )
    # ranked against the rows of its column on the same data and evaluation (base), never another's
    before_rows = tuple(cells.loc[cells["_before"], "row"])
    cells["place"] = _places(cells, ["column", "base"], 2, 100.0, 2, skip=before_rows)
    rows = list(dict.fromkeys(cells["row"]))
    columns = sorted(set(cells["column"]), key=lambda t: labels.order(t, labels.GLUE))
    rule = [
        sweep_note,
        f"Rows are QKV and QV runs; '{BEFORE}' is the epochs = 0 evaluation of "
        f"{_before_what(cells['task'])}. "
        "Trainable parameters are the records' true counts (head included once); "
        "the paper's LoRA rows count the head twice.",
        *before_notes,
        *([NAMED_NOTE, PLACES_NOTE] if (cells["_name"] != "").any() else []),
    ]
    return Table(
        name="table2",
        title=title,
        row_header="Method",
        rows=rows,
        columns=columns,
        column_labels={c: labels.task_label(c) for c in columns},
        latex_labels={c: labels.task_label(c) for c in columns},
        cells=_finish(cells.drop(columns="_before"), rows, columns),
        scale=100.0,
        digits=2,
        marks=2,
        lead={"Trainable #Param (M)": _params(cells)},
        notes=_notes_for(cells, rule),
    )


def _params(cells: pd.DataFrame) -> dict[str, str]:
    """Trainable parameters per row in millions (a range when tasks differ), with the paper's figure."""
    out = {}
    for row, group in cells.groupby("row", sort=False):
        lo, hi = group["trainable_min"].min() / 1e6, group["trainable_max"].max() / 1e6
        text = "-" if np.isnan(lo) else f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"
        first = group.iloc[0]
        ref = paper.table2_params(
            first.model, None if first._before else first.method, first.targets, first["rank"], first.lam
        )
        out[row] = text if ref is None else f"{text} [paper {ref:.2f}]"
    return out


def _model_settings(base: str) -> str:
    """The settings of a `base` that the untuned model's harness scores depend on: the model's own
    and the precision (its task and the data are not the harness's)."""
    settings = json.loads(base)
    kept = {p: v for p, v in settings.items() if p.split(".", 1)[0] in ("model", "precision")}
    return json.dumps(kept, sort_keys=True)


def _protocol(limit: float, fewshot: float) -> str:
    """How the harness scored: 'limit 200, 0-shot'; NaN: every example, each task's own shots."""
    return ", ".join(
        [
            "every example" if np.isnan(limit) else f"limit {labels.num(limit)}",
            "each task's shots" if np.isnan(fewshot) else f"{int(fewshot)}-shot",
        ]
    )


def harness(coll: Collection) -> Table:
    """The lm-evaluation-harness scores (the record's `harness` section): one column per harness task
    and metric, one row per model, task trained on, method, targets, rank and lambda (one setting per
    row, chosen as in Table 1), and a 'Before Fine-tune' row per model: the harness on the base model,
    from its epochs = 0 runs. Runs scored with another limit or number of shots are rows of their own.
    A harness that failed is a missing score ('-'), its one-line reason in the notes, never a 0."""
    title = "lm-evaluation-harness scores (mean ± std over seeds)"
    runs = coll.runs[coll.runs["harness_tasks"] != ""]
    columns = [c.removeprefix(HARNESS) for c in coll.harness_columns]
    if runs.empty or not columns:
        return _empty("harness", title)
    row_key = ["model", *HARNESS_PROTOCOL, "task", "method", "targets", "rank", "lam", "variant"]
    tuned, untuned = runs[runs["tuned"]], runs[~runs["tuned"]]
    untuned = untuned.assign(_model=untuned["base"].map(_model_settings))
    chosen = describe(pick_settings(over_seeds(tuned, [*row_key, "setting"]), row_key), tuned)
    if not chosen.empty:
        variants = _names([chosen], "variant", ["model", "task"])
        chosen["_name"] = _name_of(chosen, variants, ["model", "task"], "variant")
    before_key = ["model", *HARNESS_PROTOCOL, "_model"]
    before = describe(pick_settings(over_seeds(untuned, [*before_key, "setting"]), before_key), untuned)
    if not before.empty:  # the base model's: no task trained on, no method
        models = _names([before], "_model", ["model"])
        before = before.assign(
            task="",
            method="",
            targets="",
            rank=np.nan,
            lam=np.nan,
            _name=_name_of(before, models, ["model"], "_model"),
        )
    frames = [
        df.assign(n_expected=_expected(df), _before=is_before)
        for df, is_before in ((before, True), (chosen, False))
        if not df.empty
    ]
    settings = pd.concat(frames, ignore_index=True)
    several = settings[HARNESS_PROTOCOL].drop_duplicates().shape[0] > 1

    def row_label(r: pd.Series) -> str:
        if r._before:
            label = f"{BEFORE} ({labels.model_short(r.model)})"
        else:
            label = (
                f"{labels.task_label(r.task)}({labels.model_short(r.model)}) "
                f"{_table2_label(r.method, r.targets, r['rank'], r.lam)}"
            )
        label += _suffix(r["_name"])
        return f"{label} [{_protocol(r.harness_limit, r.harness_fewshot)}]" if several else label

    settings["row"] = settings.apply(row_label, axis=1)
    settings = _sorted(
        settings,
        {
            "model": _known(labels.MODEL_ORDER),
            "harness_limit": lambda x: -1 if np.isnan(x) else x,
            "harness_fewshot": lambda x: -1 if np.isnan(x) else x,
            "_before": lambda b: not b,
            "task": _known(labels.TABLE1_TASKS + labels.GLUE),
            "method": _known(labels.METHOD_ORDER),
            "targets": lambda t: target_order(t) if t else (),
            "rank": lambda r: -1 if np.isnan(r) else r,
            "lam": lambda lam: -1 if np.isnan(lam) else lam,
            "_name": None,
        },
    )
    members = runs[runs["setting"].isin(settings["setting"])]
    counted = members["status"].isin([s.value for s in SCORED])  # failed and running runs: no score
    scores = members[[HARNESS + c for c in columns]].where(counted, np.nan, axis=0)
    stats = scores.groupby(members["setting"]).agg(["mean", "std", "count"])
    asked = members.groupby("setting")["harness_tasks"].first().str.split(",")
    cells = pd.DataFrame(
        [
            {
                **r,
                "column": c,
                "metric": c,
                "mean": stats.loc[r["setting"], (HARNESS + c, "mean")],
                "std": stats.loc[r["setting"], (HARNESS + c, "std")],
                "n": stats.loc[r["setting"], (HARNESS + c, "count")],
                "paper": np.nan,
            }
            for r in settings.to_dict("records")
            for c in columns
            if c.split("/", 1)[0] in asked[r["setting"]]  # a task the run did not ask for stays blank
        ]
    )
    cells["place"] = _places(
        cells, ["column"], 2, 1.0, 3, skip=tuple(settings.loc[settings["_before"], "row"])
    )
    rows = list(dict.fromkeys(settings["row"]))
    present = [c for c in columns if c in set(cells["column"])]
    rule = [] if several else [f"The harness scored {_protocol(*settings[HARNESS_PROTOCOL].iloc[0])}."]
    if not before.empty:
        rule.append(f"'{BEFORE}' rows are the harness on the base model, from its epochs = 0 runs.")
    if (settings["_name"] != "").any():
        rule.append(NAMED_NOTE)
    failed = members.loc[counted & members["harness_error"].notna(), "harness_error"]
    for error, count in failed.value_counts(sort=False).sort_index().items():
        rule.append(f"{count} run(s) have no harness scores ('-'): {error}")
    return Table(
        name="harness",
        title=title,
        row_header="Model, task trained on, method",
        rows=rows,
        columns=present,
        column_labels={c: c for c in present},
        latex_labels={c: labels.latex_escape(c) for c in present},
        cells=_finish(cells, rows, present),
        scale=1.0,
        digits=3,
        marks=2,
        notes=_notes_for(settings, rule),
    )
