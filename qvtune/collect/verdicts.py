"""The paper's three claims, decided from the collected runs by tests whose error rates hold.

(1) tuning W_v beats tuning W_k; (2) tuning q,v matches q,k,v within a margin (or beats it); (3) the
best lambda = eta_V / eta_QK is above 1. Runs are paired by seed, by every other setting and, unless
pooled, by sweep, so a difference is never between runs that differ in more than the claim is about.

With d the paired differences (n of them), se their standard error and t = t_{1-ALPHA, n-1}, the
interval is [mean - t se, mean + t se]; its ends are one-sided (1 - ALPHA) bounds:
    (1) d = v - k; supported when the lower end is above 0 (one-sided paired t-test at level ALPHA);
    (2) d = qv - qkv; supported when the interval lies inside (-margin, +margin) (equivalence by two
        one-sided tests) or its lower end is above 0 (qv significantly better);
    (3) leave-one-seed-out over the grid: per held-out seed, d = best cell - best lambda = 1 cell, both
        chosen on the other seeds; supported when every choice has lambda > 1 and (1)'s test holds.
docs/verdicts.md says this in words, and what a verdict does not tell you.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd

from qvtune.collect import labels
from qvtune.collect.heatmap import Heatmap, source, sweeps_of
from qvtune.collect.records import SETTING_COLUMNS, Collection, scored, setting_key, shared_settings

SUPPORTED, NOT_SUPPORTED, NOT_ENOUGH = "supported", "not supported", "not enough runs"
CLAIMS = {
    "v>k": "tuning v beats tuning k",
    "qv~qkv": "qv matches qkv (or is better)",
    "lambda>1": "the best lambda is above 1",
}
ALPHA = 0.05  # one-sided significance level of every test
DEFAULT_MARGIN = 0.01  # claim 2's equivalence margin in metric units: 1 point of accuracy
MIN_PAIRS = 2  # a t interval needs a standard deviation
MIN_SEEDS = 3  # claim 3: each fold chooses on >= 2 seeds and the test has >= 2 degrees of freedom
LEVEL = f"{1 - 2 * ALPHA:.0%}"  # the interval's two-sided coverage, for labels
# claim 2's outcomes; the first two support it
BETTER, EQUIVALENT, WORSE, UNCLEAR = "better", "equivalent", "worse", "unclear"


@dataclass(frozen=True)
class Verdict:
    claim: str  # a key of CLAIMS
    context: str  # where it was tested (model, task, method, rank, rates, sweep)
    mean: float  # mean paired difference
    std: float  # its standard deviation over seeds
    pairs: int
    status: str
    detail: str = ""
    low: float = math.nan  # the interval mean ± t se (NaN below MIN_PAIRS)
    high: float = math.nan
    margin: Optional[float] = None  # claim 2's equivalence margin

    @property
    def interval(self) -> str:
        return "-" if math.isnan(self.low) else f"[{self.low:+.4f}, {self.high:+.4f}]"

    @property
    def line(self) -> str:
        spread = f" ± {self.std:.4f}" if self.pairs > 1 else ""
        tested = self.pairs > 0 and not math.isnan(self.mean)
        diff = (
            f"Δ = {self.mean:+.4f}{spread} over {self.pairs} seed(s)" if tested else "no difference measured"
        )
        if not math.isnan(self.low):
            diff += f", {LEVEL} interval {self.interval}"
        extra = f" ({self.detail})" if self.detail else ""
        return f"{CLAIMS[self.claim]} | {self.context} | {diff} | {self.status}{extra}"


# ---------------------------------------------------------------------------------------------
# The tests: pure functions on arrays of paired differences, cheap enough to simulate thousands of times


@functools.lru_cache(maxsize=256)
def t_quantile(n: int, alpha: float = ALPHA) -> float:
    """t_{1-alpha, n-1}, the one-sided critical value for a mean of n differences (cached: simulations)."""
    from scipy import stats  # here, not at the top: it adds a second or two to every collect command

    return float(stats.t.ppf(1 - alpha, n - 1))


def interval(d: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """mean(d) ± t_{1-alpha, n-1} se: the (1 - 2 alpha) interval, whose ends are one-sided bounds."""
    n = len(d)
    if n < MIN_PAIRS:
        raise ValueError(f"{n} difference(s): a t interval needs at least {MIN_PAIRS}")
    mean = float(np.mean(d))
    half = t_quantile(n, alpha) * float(np.std(d, ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def beats(d: np.ndarray, alpha: float = ALPHA) -> bool:
    """Claims 1 and 3: a one-sided paired t-test that the mean difference is above 0."""
    return interval(d, alpha)[0] > 0


def matches(d: np.ndarray, margin: float = DEFAULT_MARGIN, alpha: float = ALPHA) -> str:
    """Claim 2 by two one-sided tests: BETTER or EQUIVALENT support it, WORSE or UNCLEAR do not.

    EQUIVALENT needs the whole interval inside (-margin, +margin), so noise cannot make it hold.
    """
    if not margin > 0:
        raise ValueError(f"margin {margin}: expected a positive number (metric units)")
    low, high = interval(d, alpha)
    if low > 0:
        return BETTER
    if low > -margin and high < margin:
        return EQUIVALENT
    return WORSE if high < 0 else UNCLEAR


@dataclass(frozen=True)
class Folds:
    """Claim 3's choices (row indices of the grid's cells) and the differences on held-out seeds."""

    best: int  # the best cell by the mean over all seeds
    best_diagonal: int  # the best lambda = 1 cell by the same
    fold_best: np.ndarray  # per held-out seed: the best cell by the mean over the other seeds
    fold_diagonal: np.ndarray  # ... and the best lambda = 1 cell
    d: np.ndarray  # per held-out seed: its value in fold_best minus its value in fold_diagonal


def cross_validate(values: np.ndarray, diagonal: np.ndarray) -> Folds:
    """Leave-one-seed-out choice of the best cell and best diagonal cell, so choice and test share no seed.

    values: (cells, seeds), every cell scored on every seed; diagonal: which cells have lambda = 1.
    Ties go to the first cell, as in the heatmap (cells ordered by eta_QK, then eta_V).
    """
    n = values.shape[1]
    if n < MIN_SEEDS or not diagonal.any():
        raise ValueError(f"{n} seed(s) and {int(diagonal.sum())} lambda = 1 cell(s): need {MIN_SEEDS} and 1")
    on_diagonal = np.flatnonzero(diagonal)

    def choose(means: np.ndarray) -> tuple[int, int]:
        return int(np.argmax(means)), int(on_diagonal[np.argmax(means[on_diagonal])])

    best, best_diagonal = choose(values.mean(axis=1))
    fold_best, fold_diagonal = (
        np.array(x) for x in zip(*(choose(np.delete(values, s, axis=1).mean(axis=1)) for s in range(n)))
    )
    held_out = np.arange(n)
    d = values[fold_best, held_out] - values[fold_diagonal, held_out]
    return Folds(best, best_diagonal, fold_best, fold_diagonal, d)


def is_one(lam: np.ndarray) -> np.ndarray:
    """lambda = 1 up to the rounding of the learning rates (the heatmap's diagonal)."""
    return np.isclose(lam, 1.0, rtol=0.0, atol=1e-6)


def lambda_failures(folds: Folds, lam: np.ndarray, alpha: float = ALPHA) -> list[str]:
    """The conditions of claim 3 that fail, in words; none: supported."""
    above = (lam > 1) & ~is_one(lam)
    failed = []
    if not above[folds.best]:
        failed.append(f"the cell chosen on all seeds has λ = {labels.num(float(lam[folds.best]))}")
    if not above[folds.fold_best].all():
        failed.append("a fold chose a cell with λ <= 1")
    if not beats(folds.d, alpha):
        failed.append("the held-out differences do not clear 0")
    return failed


def lambda_supported(folds: Folds, lam: np.ndarray, alpha: float = ALPHA) -> bool:
    """Claim 3: every choice (on all seeds, in each fold) has lambda > 1 and the held-out d beat 0."""
    return not lambda_failures(folds, lam, alpha)


# ---------------------------------------------------------------------------------------------
# The verdicts on collected runs


def _stats(d: np.ndarray) -> tuple[float, float]:
    """mean and std (ddof 1) of the differences; NaN where there are too few."""
    mean = float(np.mean(d)) if len(d) else math.nan
    return mean, float(np.std(d, ddof=1)) if len(d) > 1 else math.nan


def _context_label(row: pd.Series, sweeps: Sequence[str]) -> str:
    text = (
        f"{labels.task_label(row.task)}({labels.model_short(row.model)}) "
        f"{labels.METHOD_LABEL.get(row.method, row.method)}"
    )
    if not np.isnan(row["rank"]):
        text += f" r = {int(row['rank'])}"
    text += f", η_QK = {labels.num(row.lr)}, η_V = {labels.num(row.lr_v)}, epochs = {row.epochs:g}"
    where = source(sweeps)
    return f"{text}, {where}" if where else text


def _context_order(row: pd.Series) -> tuple:
    """Contexts in the tables' order: task, model, method, rank, then rates, then sweep."""
    return (
        labels.order(row.task, labels.TABLE1_TASKS + labels.GLUE),
        labels.order(row.model, labels.MODEL_ORDER),
        labels.order(row.method, labels.METHOD_ORDER),
        -1 if np.isnan(row["rank"]) else row["rank"],
        row.lr,
        row.lr_v,
        row.epochs,
        row["_sweep"],
        row.name,
    )


# The settings a context's label names (_context_label), and those the two sides of a pair differ in
_LABELLED = ("model", "task", "method", "rank", "lr", "lr_v", "epochs", "targets")


def _unique(names: list[str], settings: list[dict[str, Any]]) -> list[str]:
    """Labels told apart: contexts that share one get the settings that differ between them (the
    task's data, a training setting, ...: labels.differences); any still repeated (rates the label
    rounds alike), a number."""
    same: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        same.setdefault(name, []).append(i)
    out = list(names)
    for where in same.values():
        if len(where) > 1:
            for i, text in zip(where, labels.differences([settings[i] for i in where])):
                out[i] += f" [{text}]" if text else ""
    seen: dict[str, int] = {}
    for i, label in enumerate(out):
        seen[label] = seen.get(label, 0) + 1
        out[i] = label if seen[label] == 1 else f"{label} (variant {seen[label]})"
    return out


def _by_sweep(runs: pd.DataFrame, pool: bool) -> pd.DataFrame:
    """`_sweep`: one row per sweep a run belongs to (a merged twin to each of its own); '' when pooled."""
    if pool:
        return runs.assign(_sweep="")
    return runs.assign(_sweep=runs["sweep"].map(sweeps_of)).explode("_sweep")


_MATCH_TEXT = {
    BETTER: "qv significantly better",
    EQUIVALENT: "interval inside the margin",
    WORSE: "qv worse: the interval is below 0",
    UNCLEAR: "too noisy to tell: the interval reaches past the margin",
}


def _decide(d: np.ndarray, claim: str, margin: float) -> tuple[str, str]:
    """(status, why) for claims 1 and 2 from the paired differences."""
    if len(d) < MIN_PAIRS:
        return NOT_ENOUGH, f"{len(d)} pair(s); a test needs {MIN_PAIRS}"
    if claim == "v>k":
        return (SUPPORTED, "lower end above 0") if beats(d) else (NOT_SUPPORTED, "lower end not above 0")
    outcome = matches(d, margin)
    return SUPPORTED if outcome in (BETTER, EQUIVALENT) else NOT_SUPPORTED, _MATCH_TEXT[outcome]


def paired_targets(
    coll: Collection, a: str, b: str, claim: str, margin: float = DEFAULT_MARGIN, pool: bool = False
) -> list[Verdict]:
    """Claims (1) and (2): per context, the per-seed difference metric(targets a) - metric(targets b).

    A context is every setting but the targets, within one sweep unless `pool`.
    """
    runs = coll.trained
    runs = runs[runs["targets"].isin((a, b))]
    runs = _by_sweep(runs.assign(_v=scored(runs)), pool)
    context = setting_key(runs, [c for c in SETTING_COLUMNS if c != "targets"]) + "|" + runs["_sweep"]
    runs = runs.assign(_ctx=context)
    runs = runs[runs.groupby("_ctx")["targets"].transform("nunique") == 2]  # contexts with both
    if runs.empty:
        return []
    wide = runs.pivot_table(
        index=["_ctx", "seed"], columns="targets", values="_v", aggfunc="first", dropna=False
    )
    diffs = (wide[a] - wide[b]).dropna()
    firsts = runs.drop_duplicates("_ctx").set_index("_ctx")
    if pool:
        sweeps = runs.groupby("_ctx")["sweep"].agg(lambda s: sorted({x for v in s for x in sweeps_of(v)}))
    else:  # the context's own sweep, not the others its twins were also run for
        sweeps = firsts["_sweep"].map(lambda s: [s])
    contexts = sorted(firsts.index, key=lambda c: _context_order(firsts.loc[c]))
    names = _unique(
        [_context_label(firsts.loc[c], sweeps[c]) for c in contexts],
        [shared_settings(firsts.loc[[c]], _LABELLED) for c in contexts],
    )
    by_context = {ctx: d.to_numpy() for ctx, d in diffs.groupby(level="_ctx")}
    verdicts = []
    for ctx, name in zip(contexts, names):
        d = by_context.get(ctx, np.array([]))
        mean, std = _stats(d)
        low, high = interval(d) if len(d) >= MIN_PAIRS else (math.nan, math.nan)
        status, why = _decide(d, claim, margin)
        what = f"{a} - {b}" + (f", margin ±{margin:g}" if claim == "qv~qkv" else "")
        verdicts.append(
            Verdict(
                claim,
                name,
                mean,
                std,
                len(d),
                status,
                f"{what}: {why}",
                low,
                high,
                margin if claim == "qv~qkv" else None,
            )
        )
    return verdicts


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(str(s) for s in seeds)


def _lambda_verdict(context: str, grid: pd.DataFrame) -> Verdict:
    """Claim (3) on one grid: `grid` holds the scores, rows (eta_QK, eta_V) ascending, columns seeds."""
    notes = []
    scored_cells = grid.dropna(how="all")
    if len(scored_cells) < len(grid):
        notes.append(f"{len(grid) - len(scored_cells)} cell(s) without a scored run left out")
    shared = scored_cells.dropna(axis=1, how="any")
    if shared.shape[1] < scored_cells.shape[1]:
        notes.append(
            f"only seeds {_seeds(shared.columns)} are scored in all {len(shared)} cells, so only "
            "they are used"
        )
    rates = shared.index.to_frame(index=False)
    lam = (rates["lr_v"] / rates["lr"]).to_numpy()
    n = shared.shape[1]
    if not is_one(lam).any():
        return Verdict("lambda>1", context, math.nan, math.nan, 0, NOT_ENOUGH, "no scored λ = 1 cell")
    if is_one(lam).all():
        return Verdict("lambda>1", context, math.nan, math.nan, 0, NOT_ENOUGH, "every scored cell has λ = 1")
    if n < MIN_SEEDS:
        why = f"{n} seed(s) scored in every cell; the cross-validation needs {MIN_SEEDS}"
        return Verdict("lambda>1", context, math.nan, math.nan, n, NOT_ENOUGH, "; ".join([why, *notes]))
    folds = cross_validate(shared.to_numpy(dtype=float), is_one(lam))

    def cell(i: int) -> str:
        return f"λ = {labels.num(lam[i])} at ({labels.num(rates.lr[i])}, {labels.num(rates.lr_v[i])})"

    failed = lambda_failures(folds, lam)
    detail = (
        f"best {cell(folds.best)} vs λ = 1 at {labels.num(rates.lr[folds.best_diagonal])}, chosen on "
        f"seeds {_seeds(shared.columns)}; each fold chose on the other seeds and tested on the "
        f"held-out one (disjoint seeds), choosing λ = "
        f"{', '.join(labels.num(x) for x in lam[folds.fold_best])}"
    )
    mean, std = _stats(folds.d)
    low, high = interval(folds.d)
    return Verdict(
        "lambda>1",
        context,
        mean,
        std,
        n,
        NOT_SUPPORTED if failed else SUPPORTED,
        "; ".join([detail, *failed, *notes]),
        low,
        high,
    )


def best_lambda(coll: Collection, heatmaps: list[Heatmap]) -> list[Verdict]:
    """Claim (3) on every learning-rate grid, by leave-one-seed-out cross-validation of the chosen cells."""
    verdicts = []
    runs = coll.trained.assign(_v=scored(coll.trained))
    for h in heatmaps:
        grid = h.members(runs).groupby(["lr", "lr_v", "seed"])["_v"].first().unstack("seed")  # cells present
        verdicts.append(_lambda_verdict(h.title, grid.sort_index().sort_index(axis=1)))
    return verdicts


def all_verdicts(
    coll: Collection, heatmaps: list[Heatmap], margin: float = DEFAULT_MARGIN, pool: bool = False
) -> list[Verdict]:
    """Every claim in every context; `pool` pairs runs across sweeps (the heatmaps carry their own choice)."""
    return [
        *paired_targets(coll, "v", "k", "v>k", pool=pool),
        *paired_targets(coll, "qv", "qkv", "qv~qkv", margin, pool),
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
            held = counts[SUPPORTED]
            verdict = SUPPORTED if held == tested else NOT_SUPPORTED if held == 0 else "mixed"
            summary = f"{verdict} (holds in {counts[SUPPORTED]} of {tested} tested context(s)" + (
                f"; {counts[NOT_ENOUGH]} more without enough runs)" if counts[NOT_ENOUGH] else ")"
            )
        margins = sorted({v.margin for v in mine if v.margin is not None})
        if margins:
            text += f" within ±{', '.join(f'{m:g}' for m in margins)}"
        lines.append(f"{text}: {summary}")
    return lines


def frame(verdicts: list[Verdict]) -> pd.DataFrame:
    """The verdicts as a table for CSV."""
    columns = [
        "claim",
        "context",
        "mean_diff",
        "std_diff",
        "pairs",
        "ci_low",
        "ci_high",
        "margin",
        "status",
        "detail",
    ]
    rows = [
        (
            v.claim,
            v.context,
            v.mean,
            v.std,
            v.pairs,
            v.low,
            v.high,
            math.nan if v.margin is None else v.margin,
            v.status,
            v.detail,
        )
        for v in verdicts
    ]
    return pd.DataFrame(rows, columns=columns)


def rules(margin: float = DEFAULT_MARGIN, pool: bool = False) -> str:
    """How the verdicts were decided, for the reader of verdicts.md."""
    where = "across sweeps (pooled)" if pool else "within one sweep"
    return " ".join(
        [
            f"Differences are paired by seed and every other setting, {where}.",
            f"The interval is mean ± t se, with t the one-sided {1 - ALPHA:.0%} quantile "
            "of Student's t at n - 1",
            f"degrees of freedom (α = {ALPHA:g}). Claim 1: supported when its lower end is above 0.",
            f"Claim 2: supported when it lies inside ±{margin:g} (equivalence by two one-sided tests) or its",
            "lower end is above 0 (qv better). Claim 3: each seed in turn is held out, the best cell and the",
            "best λ = 1 cell are chosen on the other seeds and compared on the held-out one; supported when",
            "every chosen cell has λ > 1 and the interval of the held-out differences "
            "has its lower end above 0.",
            f"Not enough runs: fewer than {MIN_PAIRS} pairs (claims 1, 2), "
            f"or than {MIN_SEEDS} seeds scored in",
            "every cell of the grid (claim 3).",
        ]
    )


def to_markdown(verdicts: list[Verdict], margin: float = DEFAULT_MARGIN, pool: bool = False) -> str:
    lines = ["### Verdicts on the paper's claims", ""]
    lines += [f"- **{line}**" for line in overall(verdicts)]
    lines += [
        "",
        f"| claim | context | paired difference | {LEVEL} interval | verdict |",
        "|:---|:---|---:|---:|:---|",
    ]
    for v in verdicts:
        if v.pairs == 0 or math.isnan(v.mean):
            diff = "-"
        elif v.pairs == 1:
            diff = f"{v.mean:+.4f} (n=1)"
        else:
            diff = f"{v.mean:+.4f} ± {v.std:.4f} (n={v.pairs})"
        detail = f" ({v.detail})" if v.detail else ""
        lines.append(f"| {CLAIMS[v.claim]} | {v.context} | {diff} | {v.interval} | {v.status}{detail} |")
    lines += ["", rules(margin, pool)]
    return "\n".join(lines) + "\n"
