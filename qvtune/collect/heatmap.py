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
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from qvtune.collect import labels
from qvtune.collect.records import Collection, over_seeds
from qvtune.common.figures import save_figure

DEFAULT_DROP = 0.10  # default floor: this far below the best cell (in metric units)
HIGHLIGHT = "#d62728"  # the paper's red


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


def _is_diagonal(lr: pd.Series, lr_v: pd.Series) -> np.ndarray:
    return np.isclose(lr, lr_v, rtol=1e-6, atol=0.0)


def _groups(runs: pd.DataFrame, pool: bool) -> list[tuple[str, tuple[str, ...], pd.DataFrame]]:
    """(grid key, sweeps, runs) per candidate: per sweep (a merged twin joins each of its own) or pooled."""
    if pool:
        return [
            (key, tuple(sorted({x for s in group["sweep"] for x in sweeps_of(s)})), group)
            for key, group in runs.groupby("grid", sort=True)
        ]
    exploded = runs.assign(_sweep=runs["sweep"].map(sweeps_of)).explode("_sweep")
    return [
        (key, (sweep,), group.drop(columns="_sweep"))
        for (sweep, key), group in exploded.groupby(["_sweep", "grid"], sort=True)
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
        where = source(sweeps)
        found.append(
            Heatmap(
                key=grid_key,
                sweeps=sweeps,
                pooled=pool,
                name="",  # set by _name, which needs every grid
                title=(
                    f"{first.model} · {labels.task_label(first.task)} · "
                    f"{labels.METHOD_LABEL.get(first.method, first.method)} ({first.targets.upper()})"
                    + ("" if np.isnan(first["rank"]) else f" r = {int(first['rank'])}")
                    + (f" · {where}" if where else "")
                ),
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
            )
        )
    _name(found)
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


def _name(heatmaps: list[Heatmap]) -> None:
    """heatmap_[<sweep>_]<model>_<task>_<method>_<targets>[_r<rank>], plus a hash when two grids share it.

    The sweep is named unless pooled or empty, so one sweep's grid never overwrites another's file.
    """
    stems: dict[str, list[tuple[Heatmap, str]]] = {}
    for h in heatmaps:
        named = not h.pooled and h.sweeps[0]
        sweep = re.sub(r"[^A-Za-z0-9._-]", "-", h.sweeps[0]) + "_" if named else ""
        stem = f"heatmap_{sweep}{h.model}_{h.task}_{h.method}_{h.targets}" + (
            "" if np.isnan(h.rank) else f"_r{int(h.rank)}"
        )
        stems.setdefault(stem, []).append((h, h.key + ("|" + h.sweeps[0] if named else "")))
    for stem, group in stems.items():
        for h, key in group:
            suffix = "" if len(group) == 1 else "_" + hashlib.sha1(key.encode()).hexdigest()[:6]
            h.name = stem + suffix


def default_floor(h: Heatmap) -> float:
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
    # wide enough for the caption, tall enough for the axis label, whatever the grid's size
    fig = Figure(figsize=(max(7.0, 1.6 + 0.95 * len(cols)), max(4.0, 1.5 + 0.6 * len(rows))), dpi=100)
    ax = fig.add_axes((0.16, 0.2, 0.68, 0.68))
    cax = fig.add_axes((0.86, 0.2, 0.025, 0.68))
    norm = Normalize(vmin=floor, vmax=max(h.best.value, floor + 1e-6))
    values = np.ma.masked_invalid(np.clip(grid.to_numpy(dtype=float), floor, None))
    image = ax.imshow(values, cmap=CMAP, norm=norm, origin="lower", aspect="auto")
    fig.colorbar(image, cax=cax).set_label(f"{h.metric} (clipped at {floor:.3f})", fontsize=8)
    for i, lr in enumerate(rows):
        for j, lr_v in enumerate(cols):
            if (lr, lr_v) not in stats.index:
                continue
            s = stats.loc[(lr, lr_v)]
            diagonal = bool(_is_diagonal(pd.Series([lr]), pd.Series([lr_v]))[0])
            is_best = np.isclose(lr, h.best.lr) and np.isclose(lr_v, h.best.lr_v)
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
                color=HIGHLIGHT if diagonal or is_best else "dimgray" if rung else "black",
                fontweight="bold" if is_best else "normal",
            )
            if is_best or diagonal:
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
    ax.set_xticks(range(len(cols)), [labels.num(v) for v in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), [labels.num(v) for v in rows], fontsize=8)
    ax.set_xlabel("η_V (learning rate of W_v)")
    ax.set_ylabel("η_QK (learning rate of W_q, W_k)")
    ax.set_title(h.title, fontsize=10)
    fig.text(0.5, 0.03, h.caption, ha="center", fontsize=8)
    return fig


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
    ax.set_xlabel("η_V (learning rate of W_v)")
    ax.set_ylabel("η_QK (learning rate of W_q, W_k)")
    ax.set_title(h.title, fontsize=10)
    fig.text(0.5, 0.03, h.caption, ha="center", fontsize=8)
    return fig


def save(h: Heatmap, folder: Path, floor: Optional[float] = None) -> list[Path]:
    return save_figure(draw(h, floor), folder, h.name)


def grid_frame(heatmaps: list[Heatmap]) -> pd.DataFrame:
    """All grids as one long table for CSV: one line per (heatmap, eta_QK, eta_V)."""
    columns = [
        "heatmap",
        "sweeps",
        "model",
        "task",
        "method",
        "targets",
        "rank",
        "metric",
        "lr",
        "lr_v",
        "lam",
        "mean",
        "std",
        "n",
        "n_expected",
        "completed",
        "diverged",
        "running",
        "failed",
        "best",
        "diagonal",
        "budget",
        "partial",
    ]
    frames = []
    for h in heatmaps:
        c = h.cells
        frames.append(
            c.assign(
                heatmap=h.name,
                sweeps=",".join(h.sweeps),
                model=h.model,
                task=h.task,
                method=h.method,
                targets=h.targets,
                rank=h.rank,
                metric=h.metric,
                lam=c["lr_v"] / c["lr"],
                best=np.isclose(c["lr"], h.best.lr) & np.isclose(c["lr_v"], h.best.lr_v),
                diagonal=_is_diagonal(c["lr"], c["lr_v"]),
            )
        )
    return (
        pd.concat(frames, ignore_index=True).reindex(columns=columns)
        if frames
        else pd.DataFrame(columns=columns)
    )
