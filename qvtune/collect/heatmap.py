"""Figure 1: the dev metric over a grid of (eta_QK, eta_V), one heatmap per model, task, method, targets,
rank.

A grid is every run of one sweep that shares all settings but the two learning rates, with at least two
values of each, so that another experiment's runs (Table 1's lambda = 1 runs at other rates) never add
a row, a column or the best cell. Runs without a sweep name form their own grids; pooling puts every
sweep's runs in one. As in the paper, the best cell and the lambda = 1 diagonal are drawn in red, and
cells below a floor are drawn in the floor's colour (their value is still written). A cell of a search
(hydra.sweeper.search=halving) that stopped at an earlier rung shows its score there and the budget it
reached ("@0.33"), in grey. A grid whose runs fill under half of its cells (a continuous search's
trials, hydra.sweeper.search=optuna, each at its own pair of rates) is drawn as a scatter over
(eta_V, eta_QK) instead, on log axes, with the same colours, the lambda = 1 line and the best run.

A heatmap over any two other rates of AXES (`RateHeatmap`: lambda x the LoRA+ ratio R, lambda_O x
lambda_MLP, ...) is drawn the same way, for every sweep that varies exactly those two, or on request
(`find_rates`); its red dashed cells are those where its ratios are 1 (the plain run), in place of
the diagonal.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from qvtune.collect import labels
from qvtune.collect.records import SETTING_COLUMNS, Collection, over_seeds, setting_key, shared_settings
from qvtune.common.figures import save_figure
from qvtune.config.rates import GROUP_RATIOS

DEFAULT_DROP = 0.10  # default floor: this far below the best cell (in metric units)
HIGHLIGHT = "#d62728"  # the paper's red


@dataclass(frozen=True)
class Axis:
    """A rate a heatmap can be drawn over: a column of the runs."""

    name: str
    symbol: str  # in captions
    label: str  # the axis label
    neutral: Optional[float] = None  # where a ratio changes nothing (1); None for a learning rate


AXES = {
    a.name: a
    for a in (
        Axis("lr", "η_QK", "η_QK (learning rate of W_q, W_k)"),
        Axis("lr_v", "η_V", "η_V (learning rate of W_v)"),
        Axis("lam", "λ", "λ = η_V / η_QK", 1.0),
        *(
            Axis(key, f"λ_{g.upper()}", f"λ_{g.upper()} = η_{g.upper()} / η_QK", 1.0)
            for g, key in GROUP_RATIOS.items()
        ),
        Axis("loraplus_ratio", "R", "R: LoRA+ ratio, each B matrix at R x its group's rate (1: off)", 1.0),
        Axis("head_lr", "η_head", "η_head (learning rate of the head)"),
    )
}
AXIS_ALIASES = {"optim.loraplus_ratio": "loraplus_ratio"}  # the config's own key
PAPER_AXES = ("lr", "lr_v")  # Figure 1: `Heatmap`, with its diagonal and gap
# The rates that set a run, each free of the others (lr_v is lam x lr), and the setting columns that
# hold rates: a grid over two of them shares every other setting and the free rates off its axes.
_FREE = ("lr", "lam", *GROUP_RATIOS.values(), "loraplus_ratio", "head_lr")
_RATE_COLUMNS = ("lr", "lr_v", *GROUP_RATIOS.values(), "loraplus_ratio", "head_lr")


def parse_axes(text: str) -> tuple[str, str]:
    """'lam,loraplus_ratio' -> the rows' rate and the columns'; raises ValueError, one line naming
    the accepted ones."""
    names = [AXIS_ALIASES.get(n.strip(), n.strip()) for n in text.split(",")]
    accepted = f"two of {', '.join(AXES)} (rows, then columns), such as lam,loraplus_ratio"
    unknown = [n for n in names if n not in AXES]
    if unknown:
        raise ValueError(f"--axes {text}: unknown rate {unknown[0]!r}; expected {accepted}")
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"--axes {text}: expected {accepted}")
    if set(names) == {"lam", "lr_v"}:
        raise ValueError(f"--axes {text}: lr_v is lam x lr, one axis at a given lr; pair either with lr")
    return names[0], names[1]


def _neutral(axes: Sequence[Axis]) -> str:
    """Where the ratio axes change nothing, in words: 'λ = 1, R = 1'; '' where none is a ratio."""
    return ", ".join(f"{a.symbol} = {labels.num(a.neutral)}" for a in axes if a.neutral is not None)


def _at_neutral(axes: Sequence[Axis], *values: pd.Series) -> np.ndarray:
    """Which points (one series of values per axis) have every ratio axis at 1: the runs without
    those ratios; none where no axis is a ratio."""
    marked = np.full(len(values[0]), bool(_neutral(axes)))
    for axis, v in zip(axes, values):
        if axis.neutral is not None:
            marked &= np.isclose(v.to_numpy(dtype=float), axis.neutral)
    return marked


def sweeps_of(sweep: str) -> list[str]:
    """The sweeps a run belongs to: a merged twin's comma-joined names, or [''] for a run outside sweeps."""
    return [x for x in sweep.split(",") if x] or [""]


def source(sweeps: Sequence[str]) -> str:
    """Which sweep(s) runs came from, in words; '' when none has a sweep name."""
    names = sorted({s for s in sweeps if s})
    if not names:
        return ""
    text = ("sweep " if len(names) == 1 else "sweeps ") + ", ".join(names)
    return text + (" and runs outside sweeps" if "" in sweeps else "")


@dataclass(frozen=True)
class Cell:
    lr: float  # eta_QK
    lr_v: float  # eta_V
    value: float

    @property
    def lam(self) -> float:
        return self.lr_v / self.lr


@dataclass
class Heatmap:
    """One grid: mean over seeds per (eta_QK, eta_V), the best cell and the best cell with lambda = 1."""

    key: str  # the `grid` key its runs share: every setting but the two learning rates
    sweeps: tuple[str, ...]  # the sweeps its runs came from ('' for runs outside sweeps): one unless pooled
    pooled: bool  # runs of every sweep, not of sweeps[0] alone
    name: str  # file stem
    title: str
    model: str
    task: str
    method: str
    targets: str
    rank: float
    metric: str
    cells: pd.DataFrame  # over_seeds per (lr, lr_v) with n_expected
    best: Cell
    best_diagonal: Optional[Cell]
    settings: dict[str, Any] = field(default_factory=dict)  # what its runs share beyond the title

    @property
    def mean(self) -> pd.DataFrame:
        """The grid of means: rows eta_QK ascending, columns eta_V ascending (NaN: no scored seed)."""
        return self.cells.pivot(index="lr", columns="lr_v", values="mean").sort_index().sort_index(axis=1)

    def members(self, runs: pd.DataFrame) -> pd.DataFrame:
        """The runs behind this grid: its `grid` key and, unless pooled, its sweep."""
        mine = runs["grid"] == self.key
        if not self.pooled:
            mine &= runs["sweep"].map(lambda s: self.sweeps[0] in sweeps_of(s))
        return runs[mine]

    def runs_of(self, runs: pd.DataFrame, cell: Cell) -> pd.DataFrame:
        """The runs (one per seed) behind one cell of this grid."""
        mine = self.members(runs)
        return mine[np.isclose(mine["lr"], cell.lr) & np.isclose(mine["lr_v"], cell.lr_v)]

    @property
    def sparse(self) -> bool:
        """Its runs fill under half of its (eta_QK, eta_V) cells: too sparse to read as a heatmap."""
        return len(self.cells) < 0.5 * self.cells["lr"].nunique() * self.cells["lr_v"].nunique()

    @property
    def gap(self) -> Optional[float]:
        return None if self.best_diagonal is None else self.best.value - self.best_diagonal.value

    @property
    def caption(self) -> str:
        """The line under the figure: best cell, best on the diagonal, and the gap between them."""
        best = (
            f"best (η_QK, η_V) = ({labels.num(self.best.lr)}, {labels.num(self.best.lr_v)}), "
            f"λ = {labels.num(self.best.lam)}: {self.best.value:.3f}"
        )
        if self.best_diagonal is None:
            return f"{best}; no λ = 1 cell in the grid"
        d = self.best_diagonal
        return f"{best}; best with λ = 1: η = {labels.num(d.lr)}: {d.value:.3f}; gap {self.gap:+.3f}"


@dataclass(frozen=True)
class Point:
    """A cell of a RateHeatmap: its rows' rate `y`, its columns' rate `x`, its mean."""

    y: float
    x: float
    value: float


@dataclass
class RateHeatmap:
    """One grid over two rates of AXES other than Figure 1's pair: the mean over seeds per (y, x), the
    best cell and the best cell whose ratios are all 1 (`reference`: the run without them)."""

    key: str  # the key its runs share: every setting but the two rates (`_grid_columns`)
    sweeps: tuple[str, ...]
    pooled: bool
    name: str
    title: str
    model: str
    task: str
    method: str
    targets: str
    rank: float
    metric: str
    y: Axis  # the rows' rate, upwards
    x: Axis  # the columns' rate, rightwards
    cells: pd.DataFrame  # over_seeds per (y.name, x.name) with n_expected
    best: Point
    reference: Optional[Point]  # None where no axis is a ratio, or no cell has them at 1
    settings: dict[str, Any] = field(default_factory=dict)  # what its runs share beyond the title

    @property
    def mean(self) -> pd.DataFrame:
        return self.cells.pivot(index=self.y.name, columns=self.x.name, values="mean")

    @property
    def caption(self) -> str:
        """The line under the figure: best cell, best reference cell, and the gap between them."""
        y, x = self.y.symbol, self.x.symbol
        best = (
            f"best ({y}, {x}) = ({labels.num(self.best.y)}, {labels.num(self.best.x)}): {self.best.value:.3f}"
        )
        neutral = _neutral((self.y, self.x))
        if not neutral:
            return best
        if self.reference is None:
            return f"{best}; no {neutral} cell in the grid"
        r = self.reference
        where = "".join(
            f"{a.symbol} = {labels.num(v)}: " for a, v in ((self.y, r.y), (self.x, r.x)) if a.neutral is None
        )
        return f"{best}; best with {neutral}: {where}{r.value:.3f}; gap {self.best.value - r.value:+.3f}"


G = TypeVar("G", "Heatmap", RateHeatmap)


def _is_diagonal(lr: pd.Series, lr_v: pd.Series) -> np.ndarray:
    return np.isclose(lr, lr_v, rtol=1e-6, atol=0.0)


def _groups(
    runs: pd.DataFrame, pool: bool, column: str = "grid"
) -> list[tuple[str, tuple[str, ...], pd.DataFrame]]:
    """(grid key, sweeps, runs) per candidate, the key in `column`: per sweep (a merged twin joins each
    of its own) or pooled."""
    if pool:
        return [
            (key, tuple(sorted({x for s in group["sweep"] for x in sweeps_of(s)})), group)
            for key, group in runs.groupby(column, sort=True)
        ]
    exploded = runs.assign(_sweep=runs["sweep"].map(sweeps_of)).explode("_sweep")
    return [
        (key, (sweep,), group.drop(columns="_sweep"))
        for (sweep, key), group in exploded.groupby(["_sweep", column], sort=True)
    ]


def find(coll: Collection, pool: bool = False) -> list[Heatmap]:
    """Every learning-rate grid (>= 2 x 2 distinct rates) per sweep, or pooled; sorted by model, task, ..."""
    runs = coll.trained
    if runs.empty:
        return []
    found = []
    for grid_key, sweeps, group in _groups(runs, pool):
        if group["lr"].nunique() < 2 or group["lr_v"].nunique() < 2:
            continue
        cells = over_seeds(group, ["lr", "lr_v"])
        scored = cells[cells["n"] > 0]
        if scored.empty:
            continue
        cells["n_expected"] = group["seed"].nunique()
        top = scored.sort_values(["mean", "lr", "lr_v"], ascending=[False, True, True], kind="stable").iloc[0]
        diagonal = scored[_is_diagonal(scored["lr"], scored["lr_v"])]
        diag_top = (
            diagonal.sort_values(["mean", "lr"], ascending=[False, True], kind="stable").iloc[0]
            if len(diagonal)
            else None
        )
        first = group.iloc[0]
        found.append(
            Heatmap(
                key=grid_key,
                sweeps=sweeps,
                pooled=pool,
                name="",  # set by _name, which needs every grid
                title=_title(first, sweeps),
                model=first.model,
                task=first.task,
                method=first.method,
                targets=first.targets,
                rank=first["rank"],
                metric=first.metric,
                cells=cells,
                best=Cell(float(top.lr), float(top.lr_v), float(top["mean"])),
                best_diagonal=None
                if diag_top is None
                else Cell(float(diag_top.lr), float(diag_top.lr_v), float(diag_top["mean"])),
                settings=shared_settings(group, TITLED),
            )
        )
    return _ordered(found)


def _axis_values(runs: pd.DataFrame, name: str) -> pd.Series:
    """The rate a run has on an axis: LoRA+ off is R = 1; a head without head_lr trains at lr."""
    if name == "loraplus_ratio":
        return runs[name].fillna(1.0)
    if name == "head_lr":
        return runs[name].fillna(runs["lr"])
    return runs[name]


def _grid_columns(axes: tuple[str, str]) -> list[str]:
    """What the runs of one grid over `axes` share: every setting but the rates, and the free rates off
    the axes (lr_v in place of lam where lr_v is an axis)."""
    free = ["lr_v" if r == "lam" and "lr_v" in axes else r for r in _FREE]
    return [c for c in SETTING_COLUMNS if c not in _RATE_COLUMNS] + [r for r in free if r not in axes]


def find_rates(
    coll: Collection, axes: Optional[tuple[str, str]] = None, pool: bool = False
) -> list[RateHeatmap]:
    """Heatmaps over two rates of AXES, per sweep or pooled: over `axes` every grid (>= 2 x 2 distinct
    rates) whose runs share all else; without, over the two rates of each group of runs in which
    exactly two vary, where they are not Figure 1's (eta_QK with lambda or eta_V: `find`)."""
    runs = coll.trained
    if runs.empty:
        return []
    if axes is not None:
        runs = runs.assign(_key=setting_key(runs, _grid_columns(axes)))
        candidates = [(axes, key, sweeps, group) for key, sweeps, group in _groups(runs, pool, "_key")]
    else:  # the rates that vary within each group of otherwise equal runs, counted at once for speed
        runs = runs.assign(_key=setting_key(runs, [c for c in SETTING_COLUMNS if c not in _RATE_COLUMNS]))
        by_sweep = runs if pool else runs.assign(_sweep=runs["sweep"].map(sweeps_of)).explode("_sweep")
        counts = by_sweep.groupby(["_key"] if pool else ["_sweep", "_key"])[list(_FREE)].nunique(dropna=False)
        pairs = {}  # group -> its two varying rates; NaN counts as a value (LoRA+ off)
        for group, n in zip(counts.index, counts.to_numpy()):
            varying = tuple(r for r, k in zip(_FREE, n) if k > 1)
            if len(varying) == 2 and varying != ("lr", "lam"):  # (lr, lam) is Figure 1's
                pairs[group] = varying
        keys = {g if pool else g[1] for g in pairs}
        candidates = [
            (pairs[key if pool else (sweeps[0], key)], key, sweeps, group)
            for key, sweeps, group in _groups(runs[runs["_key"].isin(keys)], pool, "_key")
            if (key if pool else (sweeps[0], key)) in pairs
        ]
    found = [h for args in candidates if (h := _rate_heatmap(*args, pool)) is not None]
    return _ordered(found)


def _rate_heatmap(
    axes: tuple[str, str], key: str, sweeps: tuple[str, ...], group: pd.DataFrame, pool: bool
) -> Optional[RateHeatmap]:
    """The heatmap of one group of runs over `axes`; None unless both have 2 values and a cell scored."""
    y, x = (AXES[a] for a in axes)
    group = group.assign(**{a: _axis_values(group, a) for a in axes})
    if group[y.name].nunique() < 2 or group[x.name].nunique() < 2:
        return None
    cells = over_seeds(group, [y.name, x.name])
    scored = cells[cells["n"] > 0]
    if scored.empty:
        return None
    cells["n_expected"] = group["seed"].nunique()
    order = scored.sort_values(["mean", y.name, x.name], ascending=[False, True, True], kind="stable")
    ref = order[_at_neutral((y, x), order[y.name], order[x.name])]
    first = group.iloc[0]
    return RateHeatmap(
        key=key,
        sweeps=sweeps,
        pooled=pool,
        name="",  # set by _name, which needs every grid
        title=f"{_title(first, sweeps)} · {y.symbol} x {x.symbol}",
        model=first.model,
        task=first.task,
        method=first.method,
        targets=first.targets,
        rank=first["rank"],
        metric=first.metric,
        y=y,
        x=x,
        cells=cells,
        best=Point(*(float(order.iloc[0][c]) for c in (y.name, x.name, "mean"))),
        reference=Point(*(float(ref.iloc[0][c]) for c in (y.name, x.name, "mean"))) if len(ref) else None,
        settings=shared_settings(group, TITLED),
    )


TITLED = ("model", "task", "method", "targets", "rank")  # the settings a title names


def _title(first: pd.Series, sweeps: Sequence[str]) -> str:
    """model · task · method (targets) r = rank · sweep: what a grid's runs share."""
    where = source(sweeps)
    return (
        f"{first.model} · {labels.task_label(first.task)} · "
        f"{labels.METHOD_LABEL.get(first.method, first.method)} ({first.targets.upper()})"
        + ("" if np.isnan(first["rank"]) else f" r = {int(first['rank'])}")
        + (f" · {where}" if where else "")
    )


def _ordered(found: list[G]) -> list[G]:
    """Named (`_name`), then sorted by model, task, method, targets, name."""
    _name(found)
    _tell_apart(found)
    return sorted(
        found,
        key=lambda h: (
            labels.order(h.model, labels.MODEL_ORDER),
            labels.order(h.task, labels.GLUE),
            h.method,
            h.targets,
            h.name,
        ),
    )


def _name(heatmaps: Sequence[Heatmap | RateHeatmap]) -> None:
    """heatmap_[<sweep>_]<model>_<task>_<method>_<targets>[_r<rank>][_<rows>_x_<columns>], plus a hash
    when two grids share it; the paper's (eta_QK, eta_V) grids have no axes in their name.

    The sweep is named unless pooled or empty, so one sweep's grid never overwrites another's file.
    """
    stems: dict[str, list[tuple[Heatmap | RateHeatmap, str]]] = {}
    for h in heatmaps:
        named = not h.pooled and h.sweeps[0]
        sweep = re.sub(r"[^A-Za-z0-9._-]", "-", h.sweeps[0]) + "_" if named else ""
        stem = f"heatmap_{sweep}{h.model}_{h.task}_{h.method}_{h.targets}" + (
            "" if np.isnan(h.rank) else f"_r{int(h.rank)}"
        )
        if isinstance(h, RateHeatmap):
            stem += f"_{h.y.name}_x_{h.x.name}"
        stems.setdefault(stem, []).append((h, h.key + ("|" + h.sweeps[0] if named else "")))
    for stem, group in stems.items():
        for h, key in group:
            suffix = "" if len(group) == 1 else "_" + hashlib.sha1(key.encode()).hexdigest()[:6]
            h.name = stem + suffix


def _tell_apart(heatmaps: Sequence[Heatmap | RateHeatmap]) -> None:
    """Grids whose titles would be one (their runs differ in a setting a title does not name: the
    task's data, a training setting, the precision, ...) get what tells them apart in their titles."""
    same: dict[str, list[Heatmap | RateHeatmap]] = {}
    for h in heatmaps:
        same.setdefault(h.title, []).append(h)
    for group in same.values():
        if len(group) > 1:
            for h, text in zip(group, labels.differences([h.settings for h in group])):
                h.title += f" · {text}" if text else ""


def default_floor(h: Heatmap | RateHeatmap) -> float:
    values = h.cells.loc[h.cells["n"] > 0, "mean"]
    return max(float(values.min()), h.best.value - DEFAULT_DROP)


# the light two thirds of Blues: black and red text stay readable on every cell
CMAP = ListedColormap(matplotlib.colormaps["Blues"](np.linspace(0.0, 0.65, 256))).with_extremes(bad="#eeeeee")


def draw(h: Heatmap, floor: Optional[float] = None) -> Figure:
    """The figure (matplotlib, Agg): eta_QK up, eta_V right, values written, best and diagonal in red;
    a sparse grid as a scatter (`draw_scatter`)."""
    floor = default_floor(h) if floor is None else floor
    if h.sparse:
        return draw_scatter(h, floor)
    grid = h.mean
    stats = h.cells.set_index(["lr", "lr_v"])
    rows, cols = list(grid.index), list(grid.columns)
    fig, ax = _canvas(grid, floor, h.best.value, h.metric)
    for i, lr in enumerate(rows):
        for j, lr_v in enumerate(cols):
            if (lr, lr_v) not in stats.index:
                continue
            diagonal = bool(_is_diagonal(pd.Series([lr]), pd.Series([lr_v]))[0])
            is_best = np.isclose(lr, h.best.lr) and np.isclose(lr_v, h.best.lr_v)
            _cell(ax, i, j, stats.loc[(lr, lr_v)], is_best, diagonal)
    _label(fig, ax, rows, cols, AXES["lr"], AXES["lr_v"], h)
    return fig


def _canvas(grid: pd.DataFrame, floor: float, best: float, metric: str) -> tuple[Figure, Axes]:
    """The figure of a grid of means (rows up, columns right), coloured from `floor` to `best`."""
    rows, cols = grid.shape
    # wide enough for the caption, tall enough for the axis label, whatever the grid's size
    fig = Figure(figsize=(max(7.0, 1.6 + 0.95 * cols), max(4.0, 1.5 + 0.6 * rows)), dpi=100)
    ax = fig.add_axes((0.16, 0.2, 0.68, 0.68))
    cax = fig.add_axes((0.86, 0.2, 0.025, 0.68))
    norm = Normalize(vmin=floor, vmax=max(best, floor + 1e-6))
    values = np.ma.masked_invalid(np.clip(grid.to_numpy(dtype=float), floor, None))
    image = ax.imshow(values, cmap=CMAP, norm=norm, origin="lower", aspect="auto")
    fig.colorbar(image, cax=cax).set_label(f"{metric} (clipped at {floor:.3f})", fontsize=8)
    return fig, ax


def _cell(ax: Axes, i: int, j: int, s: pd.Series, is_best: bool, marked: bool) -> None:
    """One cell's text (its mean, a rung's score and budget, † diverged, scored/expected seeds) and,
    for the best cell (bold, solid) and the marked ones (the lambda = 1 diagonal; dashed), a red frame."""
    text = "-" if s["n"] == 0 else f"{s['mean']:.3f}"
    rung = s["n"] == 0 and s["budget"] < 1 and not np.isnan(s["partial"])
    if rung:
        text = f"{s['partial']:.3f}\n@{s['budget']:.2g}"
    if s["diverged"]:
        text += "†"
    if s["n"] < s["n_expected"] and not rung:
        text += f"\n{int(s['n'])}/{int(s['n_expected'])}"
    ax.text(
        j,
        i,
        text,
        ha="center",
        va="center",
        fontsize=8,
        color=HIGHLIGHT if marked or is_best else "dimgray" if rung else "black",
        fontweight="bold" if is_best else "normal",
    )
    if is_best or marked:
        ax.add_patch(
            Rectangle(
                (j - 0.5, i - 0.5),
                1,
                1,
                fill=False,
                edgecolor=HIGHLIGHT,
                linewidth=2.5 if is_best else 1.0,
                linestyle="-" if is_best else "--",
            )
        )


def _label(fig: Figure, ax: Axes, rows: list, cols: list, y: Axis, x: Axis, h: Heatmap | RateHeatmap) -> None:
    """Ticks, axis labels, title and caption."""
    ax.set_xticks(range(len(cols)), [labels.num(v) for v in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), [labels.num(v) for v in rows], fontsize=8)
    ax.set_xlabel(x.label)
    ax.set_ylabel(y.label)
    ax.set_title(h.title, fontsize=10)
    fig.text(0.5, 0.03, h.caption, ha="center", fontsize=8)


def draw_scatter(h: Heatmap, floor: float) -> Figure:
    """A sparse grid: one point per (eta_QK, eta_V) on log axes, coloured and labelled like a cell
    (grey: no scored seed), the lambda = 1 line dashed red, the best point ringed in red."""
    fig = Figure(figsize=(7.0, 5.0), dpi=100)
    ax = fig.add_axes((0.14, 0.17, 0.7, 0.73))
    cax = fig.add_axes((0.86, 0.17, 0.025, 0.73))
    norm = Normalize(vmin=floor, vmax=max(h.best.value, floor + 1e-6))
    cells = h.cells
    scored = cells[cells["n"] > 0]
    values = np.clip(scored["mean"].to_numpy(dtype=float), floor, None)
    points = ax.scatter(scored["lr_v"], scored["lr"], c=values, cmap=CMAP, norm=norm, s=60, edgecolors="gray")
    unscored = cells[cells["n"] == 0]
    ax.scatter(unscored["lr_v"], unscored["lr"], color=CMAP.get_bad(), s=60, edgecolors="gray")
    fig.colorbar(points, cax=cax).set_label(f"{h.metric} (clipped at {floor:.3f})", fontsize=8)
    for c in cells.itertuples():
        text = "-" if c.n == 0 else f"{c.mean:.3f}" + ("†" if c.diverged else "")
        ax.annotate(text, (c.lr_v, c.lr), xytext=(5, 4), textcoords="offset points", fontsize=7)
    ax.scatter([h.best.lr_v], [h.best.lr], s=160, facecolors="none", edgecolors=HIGHLIGHT, linewidths=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    low = min(cells["lr"].min(), cells["lr_v"].min()) / 1.5
    high = max(cells["lr"].max(), cells["lr_v"].max()) * 1.5
    ax.plot([low, high], [low, high], color=HIGHLIGHT, linestyle="--", linewidth=1, label="λ = 1")
    ax.set_xlim(cells["lr_v"].min() / 1.5, cells["lr_v"].max() * 1.5)
    ax.set_ylim(cells["lr"].min() / 1.5, cells["lr"].max() * 1.5)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(AXES["lr_v"].label)
    ax.set_ylabel(AXES["lr"].label)
    ax.set_title(h.title, fontsize=10)
    fig.text(0.5, 0.03, h.caption, ha="center", fontsize=8)
    return fig


def draw_rates(h: RateHeatmap, floor: Optional[float] = None) -> Figure:
    """A RateHeatmap as Figure 1 is drawn: rows up, columns right, values written, the best cell and
    the reference cells (ratios at 1) in red."""
    floor = default_floor(h) if floor is None else floor
    grid = h.mean
    stats = h.cells.set_index([h.y.name, h.x.name])
    rows, cols = list(grid.index), list(grid.columns)
    fig, ax = _canvas(grid, floor, h.best.value, h.metric)
    for i, y in enumerate(rows):
        for j, x in enumerate(cols):
            if (y, x) not in stats.index:
                continue
            is_best = bool(np.isclose(y, h.best.y) and np.isclose(x, h.best.x))
            reference = bool(_at_neutral((h.y, h.x), pd.Series([y]), pd.Series([x]))[0])
            _cell(ax, i, j, stats.loc[(y, x)], is_best, reference)
    _label(fig, ax, rows, cols, h.y, h.x, h)
    return fig


def save(h: Heatmap | RateHeatmap, folder: Path, floor: Optional[float] = None) -> list[Path]:
    fig = draw_rates(h, floor) if isinstance(h, RateHeatmap) else draw(h, floor)
    return save_figure(fig, folder, h.name)


# What names a heatmap in the long CSV tables, before each table's own columns
DESCRIBED = ["heatmap", "sweeps", "model", "task", "method", "targets", "rank", "metric"]
COUNTS = ["mean", "std", "n", "n_expected", "completed", "diverged", "running", "failed"]


def _described(h: Heatmap | RateHeatmap) -> dict[str, Any]:
    """The DESCRIBED columns' values of one heatmap."""
    return dict(
        heatmap=h.name,
        sweeps=",".join(h.sweeps),
        model=h.model,
        task=h.task,
        method=h.method,
        targets=h.targets,
        rank=h.rank,
        metric=h.metric,
    )


def _long(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The heatmaps' cells as one table with `columns` (an empty one when there is none)."""
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


def grid_frame(heatmaps: list[Heatmap]) -> pd.DataFrame:
    """All grids as one long table for CSV: one line per (heatmap, eta_QK, eta_V)."""
    columns = [*DESCRIBED, "lr", "lr_v", "lam", *COUNTS, "best", "diagonal", "budget", "partial"]
    frames = []
    for h in heatmaps:
        c = h.cells
        frames.append(
            c.assign(
                **_described(h),
                lam=c["lr_v"] / c["lr"],
                best=np.isclose(c["lr"], h.best.lr) & np.isclose(c["lr_v"], h.best.lr_v),
                diagonal=_is_diagonal(c["lr"], c["lr_v"]),
            )
        )
    return _long(frames, columns)


def rate_frame(heatmaps: list[RateHeatmap]) -> pd.DataFrame:
    """All heatmaps over other rates as one long table for CSV: one line per (heatmap, y, x)."""
    columns = [*DESCRIBED, "y_rate", "y", "x_rate", "x", *COUNTS, "best", "reference", "budget", "partial"]
    frames = []
    for h in heatmaps:
        c = h.cells
        y, x = c[h.y.name], c[h.x.name]
        frames.append(
            c.assign(
                **_described(h),
                y_rate=h.y.name,
                y=y,
                x_rate=h.x.name,
                x=x,
                best=np.isclose(y, h.best.y) & np.isclose(x, h.best.x),
                reference=_at_neutral((h.y, h.x), y, x),
            )
        )
    return _long(frames, columns)
