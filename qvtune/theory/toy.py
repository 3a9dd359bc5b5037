"""Theorem 2 as a simulation: gradient descent on the toy model f(x) = x(W* + a^T b), W* = 0.

a is r x n, b is r x 1, x has n standard-normal coordinates (Theta(1) each), targets y = +-1; the
paper's case is one sample and r = 1, and we also run m samples (full-batch GD on
1/(2m) sum_j (f(x_j) - y_j)^2) and r > 1, which the paper says changes nothing.
One step of GD changes the outputs f = X a^T b (X is m x n) by

    Delta f_t = - delta^1_t - delta^2_t + delta^3_t,
    delta^1 = eta_a (X X^T U) |b|^2 / m             (a moves, b held)
    delta^2 = eta_b (F F^T U) / m,  F = X a^T         (b moves, a held)
    delta^3 = eta_a eta_b (X X^T U) (b^T F^T U) / m^2 (both move),

with U = f - y taken before the step. For m = r = 1 these are the paper's terms, except that the
exact delta^3 carries U^2 where the paper prints U (a typo that does not change any scaling while
U = Theta(1); the tests check the identity above to machine precision).

GD touches a only through F = X a^T (the gradient of a lies in the row space of X), so we step
(F, b) with K = X X^T instead of the n-wide a: the same iterates, at a cost independent of n, which
is what lets a fine learning-rate grid run at width 8192 in seconds. Draws are nested across widths
(width n uses the first n coordinates of one long draw), so the widths differ by n, not by luck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator

from qvtune.common.figures import save_figure
from qvtune.theory.report import loglog_slope, text_table, write_csv, write_json

INITS = {"a": "a~N(0,1/n), b=0", "b": "a=0, b~N(0,1)"}  # "a" is the paper's (LoRA) initialisation


@dataclass
class Config:
    """`toy`: Theorem 2 on f(x) = x(W* + a^T b) across widths."""

    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048, 4096, 8192])
    # (alpha, beta): eta_a = c_a n^alpha, eta_b = c_b n^beta; (-1, 0) is the theorem's choice
    settings: list[list[float]] = field(
        default_factory=lambda: [[-1, 0], [0, 0], [-1, -1], [-0.5, -0.5], [0, -1]]
    )
    c_a: float = 0.5
    c_b: float = 0.5
    step: int = 3  # the step t at which |delta_t^i| is compared across widths
    steps: int = 5  # T: GD steps of every run (the lambda search ranks final losses after T)
    seeds: int = 128  # draws of (x, y, init) per width; |delta| is their median
    samples: int = 8  # m of the multi-sample variants
    rank: int = 4  # r of the rank variant
    log2_eta_a: list[float] = field(default_factory=lambda: [-18.0, 2.0])  # search range of eta_a
    log2_eta_b: list[float] = field(default_factory=lambda: [-6.0, 4.0])  # search range of eta_b
    grid_step: float = 1.0  # log2 spacing of the coarse search grid (refined 4x around its best)
    near: float = 0.25  # best rates = centre of the refined points within (1 + near) x the best loss
    search_pairs: int = 1024  # (x, y) pairs whose final loss is averaged: search_pairs // m draws
    out: Optional[str] = None
    seed: int = 0


@dataclass
class Trajectory:
    """GD on a batch of G learning-rate pairs x S draws."""

    loss: np.ndarray  # (steps + 1, G, S)
    f: Optional[np.ndarray] = None  # (steps + 1, G, S, m) outputs, if recorded
    deltas: Optional[np.ndarray] = None  # (steps, 3, G, S, m): delta^1..3 of steps 1..T, if recorded


def variants(cfg: Config) -> list[tuple[str, int, int]]:
    """(name, samples m, rank r): the paper's case and the two generalisations it claims."""
    m, r = cfg.samples, cfg.rank
    return [("single", 1, 1), (f"m={m}", m, 1), (f"m={m},r={r}", m, r)]


@dataclass
class Draw:
    """One width's data and initialisation for S draws: X (S, m, n), y (S, m), a0 (S, r, n), b0 (S, r)."""

    X: np.ndarray
    y: np.ndarray
    a0: np.ndarray
    b0: np.ndarray


def draw(n: int, samples: int, rank: int, init: str, seeds: int, seed: int) -> Draw:
    """x ~ N(0, I_n), y = +-1, and (init "a") a0 ~ N(0, 1/n), b0 = 0 or (init "b") a0 = 0, b0 ~ N(0, 1).
    The n-wide parts are nested across n: width n gets the first n coordinates of the same stream."""

    def wide(stream: int) -> np.ndarray:  # (n, S, k) filled row by row, so any n is a prefix
        return np.random.default_rng([seed, stream]).standard_normal((n, seeds, max(samples, rank)))

    X = wide(1)[:, :, :samples].transpose(1, 2, 0)
    scalars = np.random.default_rng([seed, 0])
    y = scalars.choice([-1.0, 1.0], size=(seeds, samples))
    b_random = scalars.standard_normal((seeds, rank))
    if init == "a":
        return Draw(X, y, wide(2)[:, :, :rank].transpose(1, 2, 0) / math.sqrt(n), np.zeros((seeds, rank)))
    return Draw(X, y, np.zeros((seeds, rank, n)), b_random)


def simulate(
    d: Draw, eta_a: np.ndarray, eta_b: np.ndarray, steps: int = 10, record: bool = False
) -> Trajectory:
    """Exact full-batch GD from d, batched over the learning-rate pairs (eta_a[g], eta_b[g])."""
    ea = np.asarray(eta_a, float).reshape(-1, 1, 1)
    eb = np.asarray(eta_b, float).reshape(-1, 1, 1)
    (S, m, _), r, G = d.X.shape, d.b0.shape[1], ea.shape[0]
    K = d.X @ d.X.transpose(0, 2, 1)  # (S, m, m)
    F = np.broadcast_to(d.X @ d.a0.transpose(0, 2, 1), (G, S, m, r)).copy()
    b = np.broadcast_to(d.b0, (G, S, r)).copy()
    losses, outputs, deltas = [], [], []
    with np.errstate(all="ignore"):  # divergent learning rates overflow to inf/nan on purpose
        for t in range(steps + 1):
            f = np.einsum("gsmr,gsr->gsm", F, b)
            U = f - d.y
            losses.append(0.5 * np.mean(U**2, axis=-1))
            outputs.append(f)
            if t == steps:
                break
            KU = np.einsum("smk,gsk->gsm", K, U)
            FtU = np.einsum("gsmr,gsm->gsr", F, U)
            if record:
                deltas.append(
                    np.stack(
                        [
                            ea * KU * np.sum(b * b, -1, keepdims=True) / m,
                            eb * np.einsum("gsmr,gsr->gsm", F, FtU) / m,
                            ea * eb * KU * np.sum(b * FtU, -1, keepdims=True) / m**2,
                        ]
                    )
                )
            F = F - (ea / m)[..., None] * KU[..., :, None] * b[..., None, :]
            b = b - eb / m * FtU
    if not record:
        return Trajectory(np.array(losses))
    return Trajectory(np.array(losses), np.array(outputs), np.array(deltas))


def delta_study(cfg: Config, samples: int, rank: int, init: str) -> np.ndarray:
    """Typical |delta_t^i| (RMS over samples, median over draws): (widths, steps, 3, settings)."""
    alpha, beta = np.array(cfg.settings, float).T
    out = []
    for n in cfg.widths:
        d = draw(n, samples, rank, init, cfg.seeds, cfg.seed)
        traj = simulate(d, cfg.c_a * n**alpha, cfg.c_b * n**beta, cfg.steps, record=True)
        assert traj.deltas is not None  # record=True records them
        with np.errstate(all="ignore"):
            rms = np.sqrt(np.mean(traj.deltas**2, axis=-1))
        out.append(np.median(np.where(np.isnan(rms), np.inf, rms), axis=-1))
    return np.array(out)


def _mean_final_loss(d: Draw, log2_a: np.ndarray, log2_b: np.ndarray, steps: int) -> np.ndarray:
    """Mean over draws of the loss after T steps; a pair where any draw diverges scores inf."""
    final = simulate(d, 2.0**log2_a, 2.0**log2_b, steps).loss[-1]
    return np.where(np.isfinite(final), final, np.inf).mean(axis=-1)


def best_rates(n: int, cfg: Config, samples: int, rank: int, init: str) -> dict:
    """The best (eta_a, eta_b) at width n for the mean final loss after T steps.

    A log2 grid of step grid_step over the whole range, then step grid_step/4 around its best point.
    The loss is nearly flat along a valley (for one sample, eta_a * eta_b * n ~ const), so a bare
    argmin wanders along it from width to width; we take the centre (in log2) of all refined points
    within a factor 1 + near of the best loss instead.
    """
    ka = np.arange(cfg.log2_eta_a[0], cfg.log2_eta_a[1] + 1e-9, cfg.grid_step)
    kb = np.arange(cfg.log2_eta_b[0], cfg.log2_eta_b[1] + 1e-9, cfg.grid_step)
    A, B = (g.ravel() for g in np.meshgrid(ka, kb, indexing="ij"))
    d = draw(n, samples, rank, init, max(cfg.search_pairs // samples, 1), cfg.seed)
    i = int(np.argmin(_mean_final_loss(d, A, B, cfg.steps)))
    edge = A[i] in (ka[0], ka[-1]) or B[i] in (kb[0], kb[-1])
    fine = np.linspace(-cfg.grid_step, cfg.grid_step, 9)
    A, B = (g.ravel() for g in np.meshgrid(A[i] + fine, B[i] + fine, indexing="ij"))
    score = _mean_final_loss(d, A, B, cfg.steps)
    near = score <= score.min() * (1 + cfg.near)
    la, lb = A[near].mean(), B[near].mean()
    return dict(
        n=n, eta_a=2.0**la, eta_b=2.0**lb, lam=2.0 ** (lb - la), loss=float(score.min()), at_edge=bool(edge)
    )


def check(cfg: Config) -> None:
    """Reject values that make no sense before any work is done."""
    if len(cfg.widths) < 2 or min(cfg.widths) < 1:
        raise ValueError(f"widths={cfg.widths} needs at least two positive widths to fit a slope")
    if not cfg.settings or any(len(s) != 2 for s in cfg.settings):
        raise ValueError(f"settings={cfg.settings} must be a list of [alpha, beta] pairs")
    if not 1 <= cfg.step <= cfg.steps:
        raise ValueError(f"step={cfg.step} must be in 1..steps={cfg.steps}")
    for key in ("seeds", "samples", "rank", "search_pairs"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be a positive integer")
    for key in ("log2_eta_a", "log2_eta_b"):
        lo_hi = getattr(cfg, key)
        if len(lo_hi) != 2 or lo_hi[0] >= lo_hi[1]:
            raise ValueError(f"{key}={lo_hi} must be [low, high] with low < high")
    if min(cfg.grid_step, cfg.c_a, cfg.c_b) <= 0 or cfg.near < 0:
        raise ValueError("grid_step, c_a and c_b must be positive and near non-negative")


def _lambda_slopes(widths: list[int], rows: list[dict]) -> dict[str, float]:
    """Log-log slopes of the best lambda, eta_a and eta_b against n."""
    return {v: loglog_slope(widths, [row[v] for row in rows]) for v in ("lam", "eta_a", "eta_b")}


def _label(setting: list[float]) -> str:
    return f"eta_a~n^{setting[0]:g}, eta_b~n^{setting[1]:g}"


def _delta_figure(cfg: Config, mags: dict) -> Figure:
    n_set = len(cfg.settings)
    fig = Figure(figsize=(3.1 * n_set, 5.6))
    axes = fig.subplots(2, n_set, sharex=True, squeeze=False)
    for row, init in enumerate(INITS):
        for j, setting in enumerate(cfg.settings):
            ax = axes[row, j]
            for i in range(3):
                y = mags["single", init][:, cfg.step - 1, i, j]
                s = loglog_slope(cfg.widths, y)
                ax.loglog(
                    cfg.widths,
                    np.where(np.isfinite(y) & (y > 0), y, np.nan),
                    "o-",
                    ms=3,
                    label=f"delta{i + 1}: slope {s:+.2f}",
                )
            ax.yaxis.set_major_locator(LogLocator(numticks=5))
            ax.minorticks_off()  # ranges span up to 40 decades; minor labels only cost drawing time
            ax.set_title(f"{_label(setting)}\n{INITS[init]}", fontsize=8)
            ax.legend(fontsize=7)
            if row == 1:
                ax.set_xlabel("width n")
        axes[row, 0].set_ylabel(f"|delta_t^i|, t={cfg.step}")
    fig.suptitle(
        "Theorem 2, one sample, r=1: only eta_a~1/n, eta_b~1 keeps all three terms Theta(1)", fontsize=10
    )
    fig.tight_layout()
    return fig


def _slope_figure(cfg: Config, slopes: dict) -> Figure:
    keys = list(slopes)
    grid = np.array(
        [
            [
                np.nanmax(np.abs(slopes[k][j])) if np.any(np.isfinite(slopes[k][j])) else 9.0
                for j in range(len(cfg.settings))
            ]
            for k in keys
        ]
    )
    fig = Figure(figsize=(2.2 * len(cfg.settings) + 2, 0.55 * len(keys) + 1.5))
    ax = fig.subplots()
    ax.imshow(np.minimum(grid, 2.0), cmap="Reds", vmin=0, vmax=2, aspect="auto")
    for r, k in enumerate(keys):
        for j in range(len(cfg.settings)):
            text = " / ".join("div" if not np.isfinite(s) else f"{s:+.2f}" for s in slopes[k][j])
            ax.text(
                j,
                r,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if grid[r, j] > 1.2 else "black",
            )
    ax.set_xticks(range(len(cfg.settings)), [_label(s) for s in cfg.settings], fontsize=7, rotation=15)
    ax.set_yticks(range(len(keys)), [f"{v}, {INITS[i]}" for v, i in keys], fontsize=7)
    ax.set_title(
        f"log-log slope of |delta^1| / |delta^2| / |delta^3| vs n at t={cfg.step} (white: all ~0)", fontsize=9
    )
    return fig


def _lambda_figure(cfg: Config, best: dict) -> Figure:
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    n = np.array(cfg.widths, float)
    for key, rows in best.items():
        fit = _lambda_slopes(cfg.widths, rows)
        left.loglog(
            n,
            [r["lam"] for r in rows],
            "o-",
            ms=3,
            label=f"{key[0]}, {INITS[key[1]]}: slope {fit['lam']:.2f}",
        )
    ref = best[next(iter(best))][0]["lam"]
    left.loglog(n, ref * n / n[0], "k:", lw=1, label="slope 1")
    left.set(
        xlabel="width n",
        ylabel="best lambda = eta_b / eta_a",
        title=f"best final loss after T={cfg.steps} steps",
    )
    left.legend(fontsize=7)
    paper = best["single", "a"]
    for name, key in (("eta_a", "eta_a"), ("eta_b", "eta_b")):
        v = [r[key] for r in paper]
        right.loglog(n, v, "o-", ms=3, label=f"best {name}: slope {loglog_slope(n, v):+.2f}")
    right.set(xlabel="width n", title="the paper's case (one sample, r=1, a random, b=0)")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _rows(cfg: Config, mags: dict, slopes: dict, best: dict) -> tuple[list[dict], ...]:
    """The CSV tables: every |delta_t^i|, the fitted slopes, and the best rates per width."""
    deltas, slope_rows, lam_rows = [], [], []
    for (name, init), mag in mags.items():
        for j, (al, be) in enumerate(cfg.settings):
            tag = dict(variant=name, init=init, alpha=al, beta=be)
            slope_rows.append(
                dict(
                    **tag,
                    step=cfg.step,
                    **{f"slope_delta{i + 1}": slopes[name, init][j][i] for i in range(3)},
                )
            )
            deltas += [
                dict(**tag, n=n, step=t + 1, **{f"delta{i + 1}": mag[w, t, i, j] for i in range(3)})
                for w, n in enumerate(cfg.widths)
                for t in range(cfg.steps)
            ]
        lam_rows += [dict(variant=name, init=init, **row) for row in best[name, init]]
    return deltas, slope_rows, lam_rows


def _text(cfg: Config, slopes: dict, fit: dict, edge: list[dict]) -> list[str]:
    """The terminal report: slopes of the paper's case, the theorem's scaling everywhere, lambda fits."""
    paper = slopes["single", "a"]
    lines = [
        f"Theorem 2 toy, widths {cfg.widths[0]}..{cfg.widths[-1]}: log-log slope of |delta_t^i| vs n "
        f"at t={cfg.step} (one sample, r=1, {INITS['a']}; 0 = Theta(1))",
        text_table(
            ["alpha", "beta", "delta1", "delta2", "delta3"],
            [[s[0], s[1], *paper[j]] for j, s in enumerate(cfg.settings)],
        ),
    ]
    if [-1, 0] in cfg.settings:
        j = cfg.settings.index([-1, 0])
        lines += [
            "",
            "theorem's scaling (alpha, beta) = (-1, 0) in every variant (max |slope| over the 3 terms):",
            text_table(
                ["variant", "init", "max |slope|"],
                [[k[0], INITS[k[1]], max(abs(x) for x in v[j])] for k, v in slopes.items()],
            ),
        ]
    lines += [
        "",
        f"best lambda = eta_b/eta_a on a log2 grid refined to {cfg.grid_step / 4:g} "
        f"(mean final loss after T={cfg.steps}); expected slope ~1:",
        text_table(
            ["variant", "init", "slope lambda", "slope eta_a", "slope eta_b"],
            [[k[0], INITS[k[1]], *f.values()] for k, f in fit.items()],
        ),
    ]
    if edge:
        lines.append(f"warning: {len(edge)} best points lie on the grid edge; widen log2_eta_a/b")
    return lines


def run(cfg: Config, out: Path) -> str:
    """Delta scaling and best-lambda studies for every variant and initialisation; return the report."""
    mags, slopes, best = {}, {}, {}
    for name, m, r in variants(cfg):
        for init in INITS:
            mags[name, init] = mag = delta_study(cfg, m, r, init)
            slopes[name, init] = [
                [loglog_slope(cfg.widths, mag[:, cfg.step - 1, i, j]) for i in range(3)]
                for j in range(len(cfg.settings))
            ]
            best[name, init] = [best_rates(n, cfg, m, r, init) for n in cfg.widths]
    fit = {k: _lambda_slopes(cfg.widths, rows) for k, rows in best.items()}
    deltas, slope_rows, lam_rows = _rows(cfg, mags, slopes, best)
    edge = [row for row in lam_rows if row["at_edge"]]
    summary = dict(
        config=vars(cfg),
        inits=INITS,
        delta_slopes={f"{k[0]}|{k[1]}": dict(zip(map(str, cfg.settings), v)) for k, v in slopes.items()},
        best_lambda_slopes={f"{k[0]}|{k[1]}": v for k, v in fit.items()},
        best_at_grid_edge=edge,
    )
    files = [
        write_csv(out / "toy_deltas.csv", deltas),
        write_csv(out / "toy_slopes.csv", slope_rows),
        write_csv(out / "toy_lambda.csv", lam_rows),
        write_json(out / "toy.json", summary),
    ]
    files += save_figure(_delta_figure(cfg, mags), out, "toy_deltas", compact=True)
    files += save_figure(_slope_figure(cfg, slopes), out, "toy_slopes", compact=True)
    files += save_figure(_lambda_figure(cfg, best), out, "toy_lambda", compact=True)
    return "\n".join(_text(cfg, slopes, fit, edge) + ["files: " + ", ".join(str(f) for f in files)])
