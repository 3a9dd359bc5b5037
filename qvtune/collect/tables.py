"""Table 1 (weight types x rank, LoRA) and Table 2 (methods x GLUE tasks) built from the runs. Table 1's
columns are the paper's target sets and every other one the runs have (qvo, qkvo+mlp, ...: any set of
qvtune.config.weight_types), ordered by size, then by the registry.

A table is kept long (one row per cell, every number the cell rests on) so that CSV, Markdown, LaTeX
and the terminal all render the same data; the wide layout is only a rendering.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from qvtune.collect import labels, paper
from qvtune.collect.records import STATUSES, Collection, describe, of_sweep, over_seeds, pick_settings
from qvtune.config.weight_types import target_label, target_order
from qvtune.status import Status

TABLE1_COLUMNS = ("q", "k", "v", "qk", "qv", "qkv")
COMPARE_COLUMNS = ("q", "k", "v", "qv", "qkv")  # the demo summary's comparison
TABLE2_TARGETS = ("qkv", "qv")
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
    cells: pd.DataFrame, by: str, marks: int, scale: float, digits: int, skip: Sequence[str] = ()
) -> pd.Series:
    """1, 2, 3 for the best, second and third value (as displayed, so ties share a place) within `by`."""
    eligible = (cells["n"] > 0) & ~cells["row"].isin(skip)
    shown = (cells["mean"] * scale).round(digits).where(eligible)
    place = shown.groupby(cells[by]).rank(method="dense", ascending=False)
    return place.where(place <= marks, 0).astype(int)


def _sorted(frame: pd.DataFrame, keys: dict[str, Optional[Callable[[Any], Any]]]) -> pd.DataFrame:
    """Sort by the columns of `keys`, each mapped through its sort-key function (None: the value itself)."""
    return frame.sort_values(
        list(keys), key=lambda s: s.map(keys[s.name]) if keys[s.name] else s, kind="stable"
    )


def _known(order: tuple[str, ...]) -> Callable[[Any], Any]:
    return lambda v: labels.order(v, order)


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
        return runs[own], f"Only runs of the {name} sweep are used{others}"
    return runs, f"No run belongs to a {name} sweep, so every matching run is used."


def _table1_like(
    coll: Collection, name: str, title: str, columns: Sequence[str], methods: Optional[Sequence[str]]
) -> Table:
    """Weight types as columns, (task, model[, method], rank) as rows; `methods` None: every method."""
    runs = coll.trained
    if methods is not None:  # Table 1 proper: LoRA at lambda = 1, from the table1 sweep when there is one
        runs = runs[runs["method"].isin(methods) & np.isclose(runs["lam"], 1.0)]
        runs, sweep_note = _own_sweep(runs, name)
        rule = [sweep_note, "Cells are LoRA runs with lambda = 1 (eta_V = eta_QK)."]
    else:
        rule = [
            "Cells prefer lambda = 1 runs, at the learning rates most cells use, when a cell has several."
        ]
    wanted = sorted({*columns, *runs["targets"]}, key=target_order)  # the others where the runs have them
    cell = ["model", "task", "method", "rank", "targets"]
    chosen = describe(pick_settings(over_seeds(runs, [*cell, "setting"]), cell), runs)
    if chosen.empty:
        return _empty(name, title)
    chosen["n_expected"] = _expected(chosen)
    chosen = _sorted(
        chosen,
        {
            "task": _known(labels.TABLE1_TASKS + labels.GLUE),
            "model": _known(labels.MODEL_ORDER),
            "method": _known(labels.METHOD_ORDER),
            "rank": None,
        },
    )
    with_method = methods is None

    def row_label(r: pd.Series) -> str:
        head = f"{labels.task_label(r.task)}({labels.model_short(r.model)})"
        if with_method:
            head += f" {labels.METHOD_LABEL.get(r.method, r.method)}"
        return head if np.isnan(r["rank"]) else f"{head} r = {int(r['rank'])}"

    chosen["row"] = chosen.apply(row_label, axis=1)
    chosen["column"] = chosen["targets"]
    chosen["paper"] = [
        paper.table1_value(r.model, r.task, r.method, r.targets, r["rank"], r.lam)
        for _, r in chosen.iterrows()
    ]
    chosen["paper"] = chosen["paper"].astype("float64")
    chosen["place"] = _places(chosen, "row", 3, 1.0, 3)
    present = [c for c in wanted if c in set(chosen["column"])] if with_method else wanted
    rows = list(dict.fromkeys(chosen["row"]))
    return Table(
        name=name,
        title=title,
        row_header="Task(model) method rank" if with_method else "Task(model) rank",
        rows=rows,
        columns=present,
        column_labels={c: c for c in present},
        latex_labels={c: target_label(c) for c in present},
        cells=_finish(chosen, rows, present),
        scale=1.0,
        digits=3,
        marks=3,
        notes=_notes_for(chosen, rule),
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
    trained_runs = runs[(runs["epochs"] > 0) & runs["targets"].isin(TABLE2_TARGETS)]
    cell = [*row_key, "task"]
    trained = describe(pick_settings(over_seeds(trained_runs, [*cell, "setting"]), cell), runs)
    untrained = runs[runs["epochs"] == 0]
    before = describe(
        pick_settings(over_seeds(untrained, ["model", "task", "setting"]), ["model", "task"]), untrained
    )
    if trained.empty and before.empty:
        return _empty("table2", title)
    before = before.assign(
        method="", targets="", rank=np.nan, lam=np.nan, trainable_min=0.0, trainable_max=0.0
    )
    cells = pd.concat([df for df in (before, trained) if not df.empty], ignore_index=True)
    cells["n_expected"] = _expected(cells)
    cells["_before"] = cells["method"] == ""
    cells["row"] = [
        "Before Fine-tune" if b else _table2_label(m, t, r, lam)
        for b, m, t, r, lam in zip(
            cells["_before"], cells["method"], cells["targets"], cells["rank"], cells["lam"]
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
            "column": _known(labels.GLUE),
        },
    )
    cells["place"] = _places(cells, "column", 2, 100.0, 2, skip=tuple(cells.loc[cells["_before"], "row"]))
    rows = list(dict.fromkeys(cells["row"]))
    columns = sorted(set(cells["column"]), key=lambda t: labels.order(t, labels.GLUE))
    rule = [
        sweep_note,
        "Rows are QKV and QV runs; 'Before Fine-tune' is the epochs = 0 evaluation of the fresh head. "
        "Trainable parameters are the records' true counts (head included once); "
        "the paper's LoRA rows count the head twice.",
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
