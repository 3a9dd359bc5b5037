"""Speed benchmark: qvtune's defaults against the paper's recipe (every input padded to max_len).

Runs `python -m qvtune.run` as a user would (one process per run) with the packaged MiniLM, LoRA on
QV with r = 8, batch 32, on real GLUE files, and reports what it measured:

- train samples/s and real (non-pad) tokens/s, defaults vs padding=max, and their ratio;
- the dev metric of both (they should agree within seed noise);
- wall time split into fixed cost (process start, imports, model load, data ready), train and eval;
- the fixed cost with a cold and with a warm tokenization cache;
- achieved training FLOP/s on real tokens as a fraction of this machine's fp32 matmul peak, measured
  in the same run. FLOPs per real token: forward 2 * (non-embedding weights) + attention
  4 * layers * length * hidden, and as much again for the backward pass, which with frozen base
  weights computes input gradients only (the LoRA matrices add < 1 %);
- peak resident memory of each run.

    python scripts/bench.py --glue ../shared/data/glue [--tasks sst2,rte] [--samples 1000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"sst2": "SST-2", "rte": "RTE", "mrpc": "MRPC"}


def matmul_peak(threads: int, size: int = 2048, reps: int = 10) -> float:
    """Best fp32 matmul rate (FLOP/s) over a few repetitions, with the threads a run gets."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = 0.0
    for _ in range(reps):
        tic = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - tic))
    return best


def flops_per_token(arch: dict, mean_len: float) -> float:
    hidden, layers, inter = arch["hidden_size"], arch["num_hidden_layers"], arch["intermediate_size"]
    weights = layers * (4 * hidden * hidden + 2 * hidden * inter)
    forward = 2 * weights + 4 * layers * mean_len * hidden
    return 2 * forward


def run(args: list[str], results: Path, cache: Path) -> tuple[dict, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "qvtune.run", *args, f"results_dir={results}", f"cache_dir={cache}", "wandb.mode=disabled"]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=results.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    newest = max(results.rglob("result.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text()), wall


def summarize(rec: dict, wall: float, peak: float, arch: dict) -> dict:
    t = rec["timing"]
    mean_len = rec["tokens"] / rec["samples"]
    fps = t["tokens_per_s"] * flops_per_token(arch, mean_len)
    return {
        "samples_per_s": round(t["samples_per_s"], 2),
        "real_tokens_per_s": round(t["tokens_per_s"], 1),
        "mean_real_tokens": round(mean_len, 1),
        "dev_metric": round(rec["final"][rec["metric"]], 4),
        "wall_s": round(wall, 2),
        "fixed_s": round(wall - t["train_s"] - t["eval_s"], 2),
        "load_s": round(t["load_s"], 2),
        "data_s": round(t["data_s"], 2),
        "train_s": round(t["train_s"], 2),
        "eval_s": round(t["eval_s"], 2),
        "flops_per_s": round(fps / 1e9, 2),
        "flop_utilisation": round(fps / peak, 3),
        "peak_rss_mb": round(rec["peak_rss_mb"]),
        "status": rec["status"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue", required=True, help="folder in the GLUE TSV layout (RTE/, SST-2/, ...)")
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out")
    opts = parser.parse_args()
    glue = Path(opts.glue).expanduser().resolve()
    tasks = opts.tasks.split(",")
    for task in tasks:
        if not (glue / TASKS[task] / "train.tsv").exists():
            raise SystemExit(f"--glue {glue}: no {TASKS[task]}/train.tsv; expected a folder in the GLUE TSV layout")

    from omegaconf import OmegaConf

    from qvtune.config import available_cpus, config_dir

    arch = OmegaConf.to_container(OmegaConf.load(config_dir() / "model" / "minilm.yaml").arch)
    threads = available_cpus()
    peak = matmul_peak(threads)
    report: dict = {"peak_gflops": round(peak / 1e9, 1), "threads": threads, "samples": opts.samples, "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for task in tasks:
            base = ["model=minilm", f"task={task}", f"data_dir={glue}", "method=lora", "targets=qv", "rank=8",
                    "lr=1e-3", "epochs=1", "batch_size=32", f"max_train_samples={opts.samples}", f"seed={opts.seed}"]
            cold_cache = work / f"cache-cold-{task}"
            cold, cold_wall = run(base, work / f"results-cold-{task}", cold_cache)
            warm, warm_wall = run(base, work / f"results-warm-{task}", cold_cache)
            padded, padded_wall = run(base + ["padding=max", "group_by_length=false"], work / f"results-pad-{task}", cold_cache)
            row = {
                "defaults": summarize(warm, warm_wall, peak, arch),
                "padded_to_max_len": summarize(padded, padded_wall, peak, arch),
                "fixed_cost_cold_cache_s": summarize(cold, cold_wall, peak, arch)["fixed_s"],
                "data_ready_cold_cache_s": round(cold["timing"]["data_s"], 2),
            }
            row["throughput_ratio"] = round(row["defaults"]["samples_per_s"] / row["padded_to_max_len"]["samples_per_s"], 2)
            row["wall_ratio"] = round(row["padded_to_max_len"]["wall_s"] / row["defaults"]["wall_s"], 2)
            report["tasks"][task] = row
            d, p = row["defaults"], row["padded_to_max_len"]
            print(f"\n{task}: {opts.samples} samples, LoRA QV r=8, batch 32")
            print(f"  {'':22}{'samples/s':>10}{'tokens/s':>10}{'metric':>8}{'wall s':>8}{'fixed':>7}{'train':>7}{'eval':>6}{'FLOP util':>10}{'RSS MB':>8}")
            for name, r in (("defaults", d), ("padded to max_len", p)):
                print(f"  {name:22}{r['samples_per_s']:>10}{r['real_tokens_per_s']:>10}{r['dev_metric']:>8}{r['wall_s']:>8}"
                      f"{r['fixed_s']:>7}{r['train_s']:>7}{r['eval_s']:>6}{r['flop_utilisation']:>10.1%}{r['peak_rss_mb']:>8}")
            print(f"  throughput x{row['throughput_ratio']}, whole run x{row['wall_ratio']} shorter; fixed cost "
                  f"{row['fixed_cost_cold_cache_s']} s with a cold tokenization cache, {d['fixed_s']} s warm")
    peak_end = matmul_peak(threads)  # measured again: the best of both is the machine's peak
    print(f"\nfp32 matmul peak: {peak / 1e9:.1f} GFLOP/s before the runs, {peak_end / 1e9:.1f} after, on {threads} threads;"
          " FLOP utilisation above is relative to the one before")
    report["peak_gflops_after"] = round(peak_end / 1e9, 1)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"\nwritten: {out / 'bench.json'}")


if __name__ == "__main__":
    main()
