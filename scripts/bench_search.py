"""Successive halving and Optuna's TPE against the full grid: do the searches find the grid's best
cell, for how much?

Runs, each as one sweep process with W&B disabled, into one fresh store under --out:

1. the halving search on the (eta_QK, eta_V) grid on qv x seeds (`hydra.sweeper.search=halving`);
2. the full grid (`-m lr=... lr_v=... seed=...`) into the same store: the cells the search finished
   are skipped and the ones it paused go on from their checkpoints, so every cell ends at the full
   budget for the grid's compute, not the grid's plus the search's. A resumed run is the run that
   was never paused (tests/test_resume.py), so these are the fresh grid's records.
3. the continuous search (`hydra.sweeper.search=optuna`) over the grid's ranges of log eta_QK and
   log lambda: --optuna-trials trials on the first --optuna-seeds seeds, its pick then on every seed
   (0 trials: not run). Its trials are their own sweep, so they never join the grid's cells.

Then prints the grid's best cell and its seed-mean, each search's pick and its seed-mean at the full
budget, their paired difference over seeds with its standard error, and each search's training
samples and wall time as fractions of the grid's (the grid's wall time: the halving search's plus
the completion's, which includes the pauses and resumes a fresh grid would not pay for). Each
step's wall time is kept in --out/timings.json, and a re-run skips the steps it holds, so a
benchmark stopped part-way goes on where it stopped.

    python scripts/bench_search.py --glue ../shared/data/glue --task sst2 --samples 3000 --epochs 2
    python scripts/bench_search.py --model tiny-bert --lr 1e-2,3e-2 --lr-v 3e-2,1e-1 --seeds 0,1   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qvtune.status import Status
from qvtune.store.record import RESULT_FILE, RunRecord

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
Cell = tuple[float, float]


def sweep(args: argparse.Namespace, results: Path, *extra: str) -> float:
    """One sweep process over the grid into `results`; returns its wall time in seconds."""
    data = [f"task={args.task}"] + ([f"data_dir={args.glue}"] if args.glue else [])
    if args.samples:
        data.append(f"max_train_samples={args.samples}")
    cmd = [
        sys.executable,
        "-m",
        "qvtune.run",
        "-m",
        f"model={args.model}",
        "method=lora",
        "targets=qv",
        *data,
        f"epochs={args.epochs}",
        f"lr={args.lr}",
        f"lr_v={args.lr_v}",
        f"seed={args.seeds}",
        "wandb.mode=disabled",
        f"results_dir={results}",
        f"cache_dir={args.out / 'cache'}",
        f"hydra.sweep.dir={results.parent / ('sweep-' + results.name)}",
        *args.extra,
        *extra,
    ]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():  # the search's answer, as it prints it
        if line.startswith(("search ", "  rung ", "  trial ", "  pick: ", "  no pick")):
            print(line)
    return time.perf_counter() - tic


def records(results: Path) -> list[RunRecord]:
    return [RunRecord.read(p) for p in sorted(results.glob(f"*/{RESULT_FILE}"))]


def full_budget(recs: list[RunRecord], metric: str) -> dict[Cell, dict[int, float]]:
    """(eta_QK, eta_V) -> seed -> the headline metric of the runs that finished the whole budget."""
    out: dict[Cell, dict[int, float]] = {}
    for r in recs:
        if r.status in (Status.COMPLETED, Status.DIVERGED):
            out.setdefault((r.rates["qk"], r.rates["v"]), {})[int(r.config["seed"])] = r.final[metric]
    return out


def timed(out: Path, step: str, run: Callable[[], float]) -> float:
    """The wall time of a step of the benchmark: measured now, or kept from the run that measured it."""
    path = out / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    if step not in timings:
        timings[step] = run()
        path.write_text(json.dumps(timings, indent=1))
    return float(timings[step])


def answer_of(results: Path, search: str) -> dict[str, Any]:
    found = [
        p for p in (results / "searches").glob("*.json") if p.stem.endswith("-optuna") == (search == "optuna")
    ]
    (path,) = found
    return json.loads(path.read_text())


def compare(
    name: str, pick: Cell, best: Cell, grid: dict[Cell, dict[int, float]], seeds: list[int], metric: str
) -> None:
    means = statistics.mean(grid[pick][s] for s in seeds)
    diffs = [grid[best][s] - grid[pick][s] for s in seeds]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    print(
        f"{name} pick: eta_QK={pick[0]:g} eta_V={pick[1]:g} (lambda {pick[1] / pick[0]:.3g}): "
        f"{metric} {means:.4f} at the full budget"
    )
    print(
        f"  grid best - {name} pick: {statistics.mean(diffs):+.4f} +- {se:.4f} "
        "(paired over seeds, standard error)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue", type=Path, help="a GLUE TSV folder (default: the synthetic task)")
    parser.add_argument(
        "--task", default=None, help="sst2, rte, ... (default: sst2 with --glue, else synthetic)"
    )
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--samples", type=int, default=None, help="max_train_samples")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--lr", default="2.5e-4,5e-4,1e-3,2e-3", help="eta_QK values")
    parser.add_argument("--lr-v", default="5e-4,1e-3,2e-3,4e-3", help="eta_V values")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--eta", type=float, default=3)
    parser.add_argument("--min-fraction", type=float, default=1 / 9)
    parser.add_argument("--optuna-trials", type=int, default=12, help="0: no continuous search")
    parser.add_argument("--optuna-batch", type=int, default=4)
    parser.add_argument("--optuna-seeds", type=int, default=1, help="the seeds of a trial")
    parser.add_argument("--out", type=Path, default=None, help="where the store goes (default: a temp dir)")
    parser.add_argument("extra", nargs="*", help="more overrides for every run, e.g. batch_size=16")
    args = parser.parse_args()
    args.task = args.task or ("sst2" if args.glue else "synthetic")
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="bench-search-"))).absolute()
    args.out.mkdir(parents=True, exist_ok=True)

    results = args.out / "results"
    halving = [
        "hydra.sweeper.search=halving",
        f"hydra.sweeper.halving.eta={args.eta}",
        f"hydra.sweeper.halving.min_fraction={args.min_fraction}",
    ]
    search_s = timed(args.out, "halving", lambda: sweep(args, results, *halving))
    answer = answer_of(results, "halving")
    metric = answer["metric"]
    (group,) = answer["groups"]
    seeds = [int(s) for s in args.seeds.split(",")]
    completion_s = timed(args.out, "completion", lambda: sweep(args, results))

    recs = [r for r in records(results) if not (r.sweep or "").endswith("-optuna")]
    grid = full_budget(recs, metric)
    means = {c: statistics.mean(v.values()) for c, v in grid.items() if len(v) == len(seeds)}
    best = max(sorted(means), key=lambda c: means[c])
    pick: Cell = (group["pick"]["lr"], group["pick"]["lr_v"]) if group["pick"] else best
    spread = statistics.stdev(grid[best].values()) if len(seeds) > 1 else math.nan
    grid_samples = sum(r.samples for r in recs)
    grid_s = search_s + completion_s
    print("seed-mean of every cell at the full budget (eta_QK \\ eta_V):")
    for qk in sorted({c[0] for c in means}, reverse=True):
        row = "  ".join(f"{means[(qk, v)]:.4f}" for v in sorted({c[1] for c in means}))
        print(f"  {qk:g}: {row}")
    print(
        f"grid best: eta_QK={best[0]:g} eta_V={best[1]:g}: {metric} {means[best]:.4f} "
        f"(mean of {len(seeds)} seeds, sd {spread:.4f}); {grid_samples} training samples, {grid_s:.0f} s"
    )
    compare("halving", pick, best, grid, seeds, metric)
    print(
        f"  halving compute: {answer['samples']:.0f} training samples "
        f"({answer['samples'] / grid_samples:.1%}); "
        f"wall {search_s:.0f} s ({search_s / grid_s:.1%})"
    )
    if args.optuna_trials:
        optuna = [
            "hydra.sweeper.search=optuna",
            f"hydra.sweeper.optuna.trials={args.optuna_trials}",
            f"hydra.sweeper.optuna.batch={args.optuna_batch}",
            f"hydra.sweeper.optuna.seeds={args.optuna_seeds}",
        ]
        optuna_s = timed(args.out, "optuna", lambda: sweep(args, results, *optuna))
        tpe = answer_of(results, "optuna")
        (tpe_group,) = tpe["groups"]
        found = full_budget(records(results), metric)
        picked: Cell = (tpe_group["pick"]["lr"], tpe_group["pick"]["lr_v"])
        # the pick's runs, by the rates its records hold (eta_V = lambda * eta_QK, as the run computes it)
        (cell,) = [c for c in found if c[0] == picked[0] and math.isclose(c[1], picked[1], rel_tol=1e-9)]
        compare("optuna", cell, best, {**grid, cell: found[cell]}, seeds, metric)
        print(
            f"  optuna compute: {tpe['samples']:.0f} training samples ({tpe['samples'] / grid_samples:.1%}); "
            f"wall {optuna_s:.0f} s ({optuna_s / grid_s:.1%}); {len(tpe_group['trials'])} trials on "
            f"{len(tpe['trial_seeds'])} seed(s), ranges eta_QK {tpe_group['lr_range']}, "
            f"lambda {tpe_group['lam_range']}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
