"""Figure 2 (right): training loss and dev metric against steps, mean with a +-1 std band over seeds.

By default each heatmap's best cell is compared with its best lambda = 1 cell, the comparison the paper
draws; with filters, every setting that matches them is drawn (up to MAX_SETTINGS). Curves are read
from the few records they need (their curves.json), not kept for every run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qvtune.collect import labels
from qvtune.collect.heatmap import Heatmap
from qvtune.collect.records import SCORED, SETTING_COLUMNS, Collection
from qvtune.common.figures import save_figure
from qvtune.status import Status
from qvtune.store.record import Curves, RunRecord

MAX_SETTINGS = 8
_SHOWN = {
    "model": "model",
    "task": "task",
    "method": "method",
    "targets": "targets",
    "rank": "r",
    "alpha": "alpha",
    "lr": "η_QK",
    "lr_v": "η_V",
    "lam_o": "λ_O",
    "lam_mlp": "λ_MLP",
    "loraplus_ratio": "LoRA+",
    "head_lr": "head lr",
    "epochs": "epochs",
}


@dataclass
class CurveSet:
    """Settings drawn in one figure; each setting is its runs (one per seed)."""

    name: str  # file stem
    title: str
    settings: list[tuple[str, pd.DataFrame]]  # (legend label, runs)


def _text(value: object) -> str:
    return labels.num(value) if isinstance(value, float) else str(value)


def _labels(runs: pd.DataFrame, settings: list[str]) -> dict[str, str]:
    """Legend labels naming only what differs between the settings (lambda whenever a rate differs),
    the keyed settings without a column too (task.kv_recall.pairs=8: labels.differences)."""
    firsts = runs.drop_duplicates("setting").set_index("setting").loc[settings]
    varying = [c for c in SETTING_COLUMNS if c != "extra" and firsts[c].astype(str).nunique() > 1]
    rates = bool({"lr", "lr_v"} & set(varying))
    shown = [c for c in SETTING_COLUMNS if c in varying or (rates and c in ("lr", "lr_v"))]
    others = labels.differences([json.loads(extra) for extra in firsts["extra"]])
    out = {}
    for i, ((setting, row), other) in enumerate(zip(firsts.iterrows(), others)):
        parts = [f"{_SHOWN[c]}={_text(row[c])}" for c in shown]
        if rates:
            parts.append(f"λ={labels.num(row['lam'])}")
        parts += [other] if other else []
        out[setting] = ", ".join(parts) or f"setting {i + 1}"
    return out


def for_heatmaps(coll: Collection, heatmaps: list[Heatmap]) -> list[CurveSet]:
    """Per heatmap: its best (eta_QK, eta_V) against its best cell on the lambda = 1 diagonal."""
    out = []
    runs = coll.trained
    for h in heatmaps:
        if h.best_diagonal is None or h.best_diagonal == h.best:
            continue
        both = pd.concat([h.runs_of(runs, cell) for cell in (h.best, h.best_diagonal)])
        settings = sorted(set(both["setting"]))
        names = _labels(both, settings)
        out.append(
            CurveSet(
                name=h.name.replace("heatmap_", "curves_", 1),
                title=f"{h.title}: best vs best with λ = 1",
                settings=[(names[s], both[both["setting"] == s]) for s in settings],
            )
        )
    return out


def for_runs(coll: Collection) -> CurveSet:
    """Every setting of the (filtered) collection; raises ValueError when there are too many to draw."""
    runs = coll.trained
    settings = sorted(set(runs["setting"]))
    if not settings:
        raise ValueError("no trained runs match; nothing to draw")
    if len(settings) > MAX_SETTINGS:
        raise ValueError(
            f"{len(settings)} settings match; narrow them to at most {MAX_SETTINGS} with filters such as "
            "task=mnli model.name=roberta-base targets=qkv rank=8 lr=1e-4"
        )
    names = _labels(runs, settings)
    drawn = [(names[s], runs[runs["setting"] == s]) for s in settings]
    return CurveSet("curves", "Training loss and dev metric", drawn)


def _series(root: Path, runs: pd.DataFrame) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(loss curves, dev-metric curves) as [step, value] arrays, one per run that has them."""
    loss, dev, metric = [], [], ""
    for path, status in zip(runs["path"], runs["status"]):
        if status not in SCORED and status != Status.RUNNING:
            continue
        try:
            record = RunRecord.read(root / path, curves=True)
            metric = record.metric or metric
            train_loss = (record.curves or Curves()).train_loss
            steps_loss = np.asarray(train_loss or np.empty((0, 2)), dtype=float)[:, :2]
            points = [(h["step"], h["metrics"].get(metric, np.nan)) for h in record.history]
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            continue  # rewritten since it was loaded, or curves that do not parse: draw the others
        if len(steps_loss):
            loss.append(steps_loss)
        if points:
            dev.append(np.asarray(points, dtype=float))
    return loss, dev, metric


def band(curves: list[np.ndarray]) -> pd.DataFrame:
    """Mean, std and count over runs at every logged step; a run counts only within its own step range."""
    if not curves:
        return pd.DataFrame(columns=["step", "mean", "std", "n"])
    steps = np.unique(np.concatenate([c[:, 0] for c in curves]))
    stacked = np.full((len(curves), len(steps)), np.nan)
    for i, c in enumerate(curves):
        order = np.argsort(c[:, 0], kind="stable")
        x, y = c[order, 0], c[order, 1]
        inside = (steps >= x[0]) & (steps <= x[-1])
        stacked[i, inside] = np.interp(steps[inside], x, y)
    finite = np.isfinite(stacked)
    n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = np.where(finite, stacked, 0.0).sum(axis=0)
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        sq = np.where(finite, (stacked - mean) ** 2, 0.0).sum(axis=0)
        std = np.where(n > 1, np.sqrt(sq / np.maximum(n - 1, 1)), np.nan)
    return pd.DataFrame({"step": steps, "mean": mean, "std": std, "n": n})


def compute(root: Path, curves: CurveSet) -> pd.DataFrame:
    """Long table: figure, setting, series (train_loss or the metric), step, mean, std, n."""
    frames = []
    for label, runs in curves.settings:
        loss, dev, metric = _series(root, runs)
        for series, data in (("train_loss", loss), (metric or "metric", dev)):
            frames.append(band(data).assign(figure=curves.name, setting=label, series=series))
    columns = ["figure", "setting", "series", "step", "mean", "std", "n"]
    return (
        pd.concat(frames, ignore_index=True).reindex(columns=columns)
        if frames
        else pd.DataFrame(columns=columns)
    )


def draw(curves: CurveSet, data: pd.DataFrame) -> Figure:
    """Two panels: training loss (left) and the dev metric (right) against optimizer steps."""
    fig = Figure(figsize=(10, 4), dpi=100)
    axes = fig.subplots(1, 2)
    series = [s for s in dict.fromkeys(data["series"]) if s != "train_loss"]
    for ax, name in zip(axes, ["train_loss", *series[:1]]):
        for i, (label, _) in enumerate(curves.settings):
            part = data[(data["setting"] == label) & (data["series"] == name)]
            if part.empty:
                continue
            colour = f"C{i}"
            ax.plot(part["step"], part["mean"], color=colour, label=f"{label} (n={int(part['n'].max())})")
            ax.fill_between(
                part["step"],
                part["mean"] - part["std"].fillna(0),
                part["mean"] + part["std"].fillna(0),
                color=colour,
                alpha=0.2,
                linewidth=0,
            )
        ax.set_xlabel("step")
        ax.set_ylabel("training loss" if name == "train_loss" else f"dev {name}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(curves.title, fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.88, wspace=0.22)
    return fig


def render(root: Path, curves: CurveSet, folder: Path) -> pd.DataFrame:
    """Read the runs' curves, save the figure under `folder`, return the data drawn (for CSV)."""
    data = compute(root, curves)
    save_figure(draw(curves, data), folder, curves.name)
    return data
