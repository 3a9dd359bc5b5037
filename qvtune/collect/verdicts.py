"""The paper's three claims, answered from the collected runs with paired seeds.

(1) tuning W_v beats tuning W_k; (2) tuning q,v is within noise of q,k,v (or better); (3) the best
lambda = eta_V / eta_QK is above 1. Runs are paired by seed and by every other setting, so a
difference is never between runs that differ in anything but what the claim is about.

Rule, with d the per-seed paired differences, mean m, std s and standard error se = s / sqrt(n):
    (1) supported when m - 2 se > 0;  (2) supported when m + 2 se >= 0 (qv not clearly worse);
    (3) supported when the best cell has lambda > 1 and m - 2 se > 0 against the best lambda = 1 cell.
Fewer than two pairs is "not enough runs". In (3) the best cells are chosen on the same seeds, which
flatters the best cell; the line says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qvtune.collect import labels
from qvtune.collect.heatmap import Heatmap
from qvtune.collect.records import SETTING_COLUMNS, Collection, scored, setting_key

SUPPORTED, NOT_SUPPORTED, NOT_ENOUGH = "supported", "not supported", "not enough runs"
CLAIMS = {
    "v>k": "tuning v beats tuning k",
    "qv~qkv": "qv is within noise of qkv (or better)",
    "lambda>1": "the best lambda is above 1",
}
MIN_PAIRS = 2


@dataclass(frozen=True)
class Verdict:
    claim: str  # a key of CLAIMS
    context: str  # where it was tested (model, task, method, rank, rates)
    mean: float  # mean paired difference
    std: float  # its standard deviation over seeds
    pairs: int
    status: str
    detail: str = ""

    @property
    def line(self) -> str:
        spread = f" ± {self.std:.4f}" if self.pairs > 1 else ""
        diff = "no pairs" if self.pairs == 0 else f"Δ = {self.mean:+.4f}{spread} over {self.pairs} seed(s)"
        extra = f" ({self.detail})" if self.detail else ""
        return f"{CLAIMS[self.claim]} | {self.context} | {diff} | {self.status}{extra}"


def _stats(d: np.ndarray) -> tuple[float, float, float]:
    """mean, std (ddof 1), standard error of the mean."""
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan
    s = float(np.std(d, ddof=1)) if n > 1 else math.nan
    return float(np.mean(d)), s, s / math.sqrt(n) if n > 1 else math.nan


def _context_label(row: pd.Series) -> str:
    text = (f"{labels.task_label(row.task)}({labels.model_short(row.model)}) "
            f"{labels.METHOD_LABEL.get(row.method, row.method)}")
    if not np.isnan(row["rank"]):
        text += f" r = {int(row['rank'])}"
    return text + f", η_QK = {labels.num(row.lr)}, η_V = {labels.num(row.lr_v)}, epochs = {row.epochs:g}"


def _context_order(row: pd.Series) -> tuple:
    """Contexts in the tables' order: task, model, method, rank, then rates."""
    return (labels.order(row.task, labels.TABLE1_TASKS + labels.GLUE), labels.order(row.model, labels.MODEL_ORDER),
            labels.order(row.method, labels.METHOD_ORDER), -1 if np.isnan(row["rank"]) else row["rank"],
            row.lr, row.lr_v, row.epochs, row.name)


def _unique(contexts: list[str]) -> list[str]:
    """Number repeated labels (contexts that differ only in settings the label does not show)."""
    seen: dict[str, int] = {}
    out = []
    for c in contexts:
        seen[c] = seen.get(c, 0) + 1
        out.append(c if seen[c] == 1 else f"{c} (variant {seen[c]})")
    return out


def paired_targets(coll: Collection, a: str, b: str, claim: str) -> list[Verdict]:
    """Claims (1) and (2): per context, the per-seed difference metric(targets a) - metric(targets b)."""
    runs = coll.trained
    runs = runs[runs["targets"].isin((a, b))].assign(_v=scored(runs))
    runs = runs.assign(_ctx=setting_key(runs, [c for c in SETTING_COLUMNS if c != "targets"]))
    runs = runs[runs.groupby("_ctx")["targets"].transform("nunique") == 2]  # contexts with both
    if runs.empty:
        return []
    wide = runs.pivot_table(index=["_ctx", "seed"], columns="targets", values="_v", aggfunc="first", dropna=False)
    diffs = (wide[a] - wide[b]).dropna()
    firsts = runs.drop_duplicates("_ctx").set_index("_ctx")
    contexts = sorted(firsts.index, key=lambda c: _context_order(firsts.loc[c]))
    names = _unique([_context_label(firsts.loc[c]) for c in contexts])
    by_context = {ctx: d.to_numpy() for ctx, d in diffs.groupby(level="_ctx")}
    verdicts = []
    for ctx, name in zip(contexts, names):
        d = by_context.get(ctx, np.array([]))
        mean, std, se = _stats(d)
        if len(d) < MIN_PAIRS:
            status = NOT_ENOUGH
        elif claim == "v>k":
            status = SUPPORTED if mean - 2 * se > 0 else NOT_SUPPORTED
        else:
            status = SUPPORTED if mean + 2 * se >= 0 else NOT_SUPPORTED
        verdicts.append(Verdict(claim, name, mean, std, len(d), status, f"{a} - {b}"))
    return verdicts


def best_lambda(coll: Collection, heatmaps: list[Heatmap]) -> list[Verdict]:
    """Claim (3) on every learning-rate grid: best cell against the best lambda = 1 cell, paired by seed."""
    verdicts = []
    runs = coll.trained.assign(_v=scored(coll.trained))
    for h in heatmaps:
        context = h.title
        if h.best_diagonal is None:
            verdicts.append(Verdict("lambda>1", context, math.nan, math.nan, 0, NOT_ENOUGH, "no lambda = 1 cell"))
            continue
        best, diagonal = (h.runs_of(runs, cell).groupby("seed")["_v"].first() for cell in (h.best, h.best_diagonal))
        d = (best - diagonal).dropna().to_numpy()
        mean, std, se = _stats(d)
        lam = h.best.lam
        detail = (f"best λ = {labels.num(lam)} at ({labels.num(h.best.lr)}, {labels.num(h.best.lr_v)}) vs λ = 1 at "
                  f"{labels.num(h.best_diagonal.lr)}; cells chosen on the same seeds")
        if len(d) < MIN_PAIRS:
            status = NOT_ENOUGH
        elif lam > 1 + 1e-9 and mean - 2 * se > 0:
            status = SUPPORTED
        else:
            status = NOT_SUPPORTED
        verdicts.append(Verdict("lambda>1", context, mean, std, len(d), status, detail))
    return verdicts


def all_verdicts(coll: Collection, heatmaps: list[Heatmap]) -> list[Verdict]:
    return [
        *paired_targets(coll, "v", "k", "v>k"),
        *paired_targets(coll, "qv", "qkv", "qv~qkv"),
        *best_lambda(coll, heatmaps),
    ]


def overall(verdicts: list[Verdict]) -> list[str]:
    """One line per claim: in how many contexts it held."""
    lines = []
    for claim, text in CLAIMS.items():
        mine = [v for v in verdicts if v.claim == claim]
        counts = {s: sum(v.status == s for v in mine) for s in (SUPPORTED, NOT_SUPPORTED, NOT_ENOUGH)}
        tested = counts[SUPPORTED] + counts[NOT_SUPPORTED]
        if not mine:
            summary = f"{NOT_ENOUGH}: no paired runs in the results"
        elif tested == 0:
            summary = f"{NOT_ENOUGH} in all {len(mine)} context(s)"
        else:
            verdict = SUPPORTED if counts[SUPPORTED] == tested else NOT_SUPPORTED if counts[SUPPORTED] == 0 else "mixed"
            summary = (f"{verdict} (holds in {counts[SUPPORTED]} of {tested} tested context(s)"
                       + (f"; {counts[NOT_ENOUGH]} more without enough runs)" if counts[NOT_ENOUGH] else ")"))
        lines.append(f"{text}: {summary}")
    return lines


def frame(verdicts: list[Verdict]) -> pd.DataFrame:
    """The verdicts as a table for CSV."""
    columns = ["claim", "context", "mean_diff", "std_diff", "pairs", "status", "detail"]
    return pd.DataFrame(
        [(v.claim, v.context, v.mean, v.std, v.pairs, v.status, v.detail) for v in verdicts], columns=columns
    )


def to_markdown(verdicts: list[Verdict]) -> str:
    lines = ["### Verdicts on the paper's claims", ""]
    lines += [f"- **{line}**" for line in overall(verdicts)]
    lines += ["", "| claim | context | paired difference | verdict |", "|:---|:---|---:|:---|"]
    for v in verdicts:
        diff = "-" if v.pairs == 0 else f"{v.mean:+.4f} (n=1)" if v.pairs == 1 else (
            f"{v.mean:+.4f} ± {v.std:.4f} (n={v.pairs})"
        )
        detail = f" ({v.detail})" if v.detail else ""
        lines.append(f"| {CLAIMS[v.claim]} | {v.context} | {diff} | {v.status}{detail} |")
    lines += ["", "Paired by seed and every other setting; supported means the mean difference clears twice its "
              "standard error (claim 2: qv is not worse by more than that)."]
    return "\n".join(lines) + "\n"
