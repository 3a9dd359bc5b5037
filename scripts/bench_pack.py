"""Packed runs against the same runs one after another: `make bench-pack`.

A learning-rate grid (LoRA on QV, r = 8, one seed) runs as one sweep process per pack size K:
K = 1 is every run alone, through PEFT, one after another in one process (a pack of one is a lone
run); K > 1 packs up to K runs into one job (`hydra.sweeper.pack=K`). The tokenization cache is
warmed first so that no mode pays for it. Per task and K it reports the sweep's wall time (process
start, model loads, data, training and dev evaluations of all runs) and its speed-up over K = 1,
each run's training samples/s (median over runs: a packed run trains at its pack's pace), the
grid's aggregate training samples/s, real-token FLOP utilisation (scripts/bench.py's FLOPs per
real token over the matmul peak measured here), peak memory, and every run's dev metric in every
mode side by side: a packed run draws its lone run's dropout masks, so they agree to rounding
(docs/packing.md). Last, it times one lone run's training step per sample at K times its batch:
about the most a pack's taller batch can give per sample here, a rough bound on the speed-up
(fixed-length random tokens, where real batches are padded each to its own longest input).
This machine's speed drifts between minutes, so the modes run `--repeats` times, interleaved
(K = 1, 3, 9, then 9, 3, 1, ...), and each figure is the median over repeats, the wall times of
every repeat beside it.

    python scripts/bench_pack.py --glue ../shared/data/glue                   # CPU: SST-2, RTE
    python scripts/bench_pack.py --device cuda --packs 1,4,8,16               # GPU: roberta-base-sized
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import flops_per_token, matmul_peak, timed  # noqa: E402

from qvtune.store.record import RESULT_FILE, RunRecord  # noqa: E402

CPU_GRID = ("2.5e-4,5e-4,1e-3", "5e-4,1e-3,2e-3")  # the demo's 3 x 3 (eta_QK, eta_V) grid
GPU_GRID = ("1e-4,2e-4,4e-4,8e-4", "2e-4,4e-4,8e-4,1.6e-3")  # 16 runs: up to K = 16
# roberta-base's shapes with random weights and qvtune's small built-in vocabulary: no download
ROBERTA_BASE = [
    "model=tiny-roberta",
    "model.arch.hidden_size=768",
    "model.arch.num_hidden_layers=12",
    "model.arch.num_attention_heads=12",
    "model.arch.intermediate_size=3072",
]


def gpu_peak() -> float:
    """Best bf16 matmul rate (FLOP/s) of this GPU, the precision its runs use."""
    import time

    import torch

    best = 0.0
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(10):
        torch.cuda.synchronize()
        tic = time.perf_counter()
        a @ a
        torch.cuda.synchronize()
        best = max(best, 2 * 8192**3 / (time.perf_counter() - tic))
    return best


def sweep(args: list[str], results: Path) -> tuple[list[dict[str, Any]], float]:
    """The records of one sweep process and its wall time."""
    results.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "qvtune.run",
        "-m",
        *args,
        f"results_dir={results}",
        f"hydra.sweep.dir={results.parent / ('sweep-' + results.name)}",
        "wandb.mode=disabled",
    ]
    wall = timed(cmd, results)
    return [RunRecord.read(p).to_dict() for p in sorted(results.rglob(RESULT_FILE))], wall


def batch_scaling(overrides: list[str], length: int, packs: list[int], device: str) -> dict[int, float]:
    """Milliseconds per sample of one lone run's training step (forward, backward, AdamW; the
    model's dropout on) at batch K x batch_size of random `length`-token sequences, median of 5:
    a pack's base runs at K times a lone run's batch, so this is about the most its taller batch
    can give per sample on this machine, before the shared setup and dropout draws."""
    import time

    import torch
    from hydra import compose, initialize_config_dir

    from qvtune.config.rates import learning_rates
    from qvtune.config.schema import config_dir, register_configs
    from qvtune.model.load import load_model
    from qvtune.model.methods import apply_method, param_groups
    from qvtune.train.runtime import set_threads

    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("run", overrides=[o for o in overrides if not o.startswith("hydra.")])
    set_threads(cfg)
    net = load_model(cfg.model, cfg.task.num_labels, cfg.seed, cfg.attention_dropout, cfg.cache_dir)
    vocab = net.config.vocab_size
    net = apply_method(net, cfg).to(device)
    groups = param_groups(net, learning_rates(cfg), cfg.optim.grouping)
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in g.params], "lr": g.lr} for g in groups if g.params]
    )
    net.train()

    def step(batch: int) -> None:
        ids = torch.randint(vocab // 10, vocab, (batch, length), device=device)  # no special tokens
        labels = torch.randint(0, max(cfg.task.num_labels, 2), (batch,), device=device)
        net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    out = {}
    for k in packs:
        batch, steps = k * cfg.batch_size, max(1, max(packs) // k)  # about as many samples per K
        step(batch)
        times = []
        for _ in range(5):
            tic = time.perf_counter()
            for _ in range(steps):
                step(batch)
            times.append((time.perf_counter() - tic) / (steps * batch))
        out[k] = 1000 * statistics.median(times)
    return out


def summary(records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """One mode's figures in one repeat: a pack's members share its training time, counted once."""
    packs: dict[frozenset[str], float] = {}
    for r in records:
        packs[frozenset([r["run_key"], *(r.get("packed_with") or [])])] = r["timing"]["train_s"]
    train_s = sum(packs.values())
    samples = sum(r["samples"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    mean_len = tokens / samples  # real tokens per sample
    arch = records[0]["config"]["model"]["arch"]  # the shapes, as the run resolved them
    memory = [r["peak_gpu_mb"] or r["peak_rss_mb"] for r in records]
    return {
        "runs": len(records),
        "jobs": len(packs),
        "wall_s": round(wall, 1),
        "train_s": round(train_s, 1),
        "per_run_samples_per_s": round(statistics.median(r["timing"]["samples_per_s"] for r in records), 1),
        "grid_samples_per_s": round(samples / train_s, 1),
        "train_flops_per_s": tokens / train_s * flops_per_token(arch, mean_len),
        "peak_memory_mb": round(max(memory), 0),
        "mean_len": mean_len,
        "metrics": {(r["rates"]["qk"], r["rates"]["v"]): r["final"][r["metric"]] for r in records},
        "statuses": sorted({r["status"] for r in records}),
    }


def bench_task(task: str, opts: argparse.Namespace, work: Path, peak: float) -> dict[int, dict[str, Any]]:
    lr, lr_v = GPU_GRID if opts.device == "cuda" else CPU_GRID
    model = ROBERTA_BASE if opts.model == "roberta-base-random" else [f"model={opts.model}"]
    data = [f"task={task}"] + ([f"data_dir={opts.glue}"] if task != "synthetic" else [])
    common = [
        *model,
        "method=lora",
        "targets=qv",
        "rank=8",
        *data,
        f"max_train_samples={opts.samples}",
        "seed=0",
        f"device={opts.device}",
        f"cache_dir={work / 'cache'}",
        *opts.extra,
    ]
    sweep([*common, "epochs=0", "lr=1e-3"], work / f"{task}-warm")  # tokenizes: no mode pays for it
    repeats: dict[int, list[dict[str, Any]]] = {k: [] for k in opts.packs}
    for r in range(opts.repeats):
        for k in opts.packs if r % 2 == 0 else opts.packs[::-1]:
            grid = [*common, "epochs=1", f"lr={lr}", f"lr_v={lr_v}", f"hydra.sweeper.pack={k}"]
            records, wall = sweep(grid, work / f"{task}-k{k}-r{r}")
            repeats[k].append(summary(records, wall))
            print(f"  {task} K={k} repeat {r}: {round(wall, 1)} s, {repeats[k][-1]['jobs']} jobs", flush=True)
    modes = {k: median_of(runs, peak) for k, runs in repeats.items()}
    length = round(modes[min(modes)]["mean_len"])
    for k, ms in batch_scaling([*common, f"lr={lr.split(',')[0]}"], length, opts.packs, opts.device).items():
        modes[k]["lone_step_ms_per_sample"] = ms
    return modes


def median_of(repeats: list[dict[str, Any]], peak: float) -> dict[str, Any]:
    """The median of each figure over the repeats of one mode, every repeat's wall time, and the dev
    metrics of the first repeat (the same in every repeat: one seed, deterministic on a CPU)."""
    figures = ("wall_s", "train_s", "per_run_samples_per_s", "grid_samples_per_s", "train_flops_per_s")
    out = {**repeats[0], **{f: statistics.median(r[f] for r in repeats) for f in figures}}
    out["walls_s"] = [r["wall_s"] for r in repeats]
    out["peak_memory_mb"] = max(r["peak_memory_mb"] for r in repeats)
    out["flop_utilisation"] = out["train_flops_per_s"] / peak
    return out


def print_task(task: str, modes: dict[int, dict[str, Any]]) -> None:
    base = modes[min(modes)]
    print(f"\n{task}: {base['runs']} runs")
    print(
        f"{'K':>3} {'jobs':>5} {'wall s':>8} {'speed-up':>9} {'run smp/s':>10} {'grid smp/s':>11}"
        f" {'util':>6} {'peak MB':>8}  wall s of each repeat"
    )
    for k, m in modes.items():
        print(
            f"{k:>3} {m['jobs']:>5} {m['wall_s']:>8.1f} {base['wall_s'] / m['wall_s']:>8.2f}x "
            f"{m['per_run_samples_per_s']:>10.1f} {m['grid_samples_per_s']:>11.1f} "
            f"{m['flop_utilisation']:>6.1%} "
            f"{m['peak_memory_mb']:>8.0f}  {' '.join(f'{w:.1f}' for w in m['walls_s'])}"
        )
    print("dev metric per run (eta_QK, eta_V): " + " ".join(f"K={k}" for k in modes))
    for cell in sorted(base["metrics"]):
        print(
            f"  {cell[0]:g}, {cell[1]:g}: "
            + " ".join(f"{m['metrics'].get(cell, float('nan')):.4f}" for m in modes.values())
        )
    gap = max(abs(m["metrics"][c] - base["metrics"][c]) for m in modes.values() for c in base["metrics"])
    print(f"largest difference of a run's dev metric from its lone run: {gap:.2g}")
    print(
        f"a lone run's step per sample at K x its batch ({round(base['mean_len'])}-token sequences): "
        + ", ".join(
            f"K={k} {m['lone_step_ms_per_sample']:.2f} ms"
            f" ({base['lone_step_ms_per_sample'] / m['lone_step_ms_per_sample']:.2f}x)"
            for k, m in modes.items()
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glue", type=Path, help="a GLUE TSV folder (CPU mode)")
    parser.add_argument("--tasks", default=None, help="default: sst2,rte on a CPU, synthetic on a GPU")
    parser.add_argument("--samples", type=int, default=None, help="max_train_samples (1000 CPU, 3000 GPU)")
    parser.add_argument("--packs", default=None, help="pack sizes K (default 1,3,9 CPU; 1,4,8,16 GPU)")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per K, interleaved (default 2)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--model", default=None, help="minilm on a CPU, roberta-base-random on a GPU")
    parser.add_argument("--out", type=Path, default=None, help="where results go (default: a temp dir)")
    parser.add_argument("extra", nargs="*", help="more overrides for every run, e.g. threads=2")
    opts = parser.parse_args()
    gpu = opts.device == "cuda"
    opts.tasks = (opts.tasks or ("synthetic" if gpu else "sst2,rte")).split(",")
    opts.samples = opts.samples or (3000 if gpu else 1000)
    opts.model = opts.model or ("roberta-base-random" if gpu else "minilm")
    opts.packs = [int(k) for k in (opts.packs or ("1,4,8,16" if gpu else "1,3,9")).split(",")]
    if not gpu and "synthetic" not in opts.tasks and opts.glue is None:
        parser.error("--glue FOLDER is needed for GLUE tasks")
    work = (opts.out or Path(tempfile.mkdtemp(prefix="bench-pack-"))).absolute()
    opts.glue = opts.glue.absolute() if opts.glue else None  # the sweeps run in their own folders
    if gpu:
        peak = gpu_peak()
    else:
        import os

        peak = matmul_peak(len(os.sched_getaffinity(0)))
    report = {}
    for task in opts.tasks:
        report[task] = bench_task(task, opts, work, peak)
        print_task(task, report[task])
    print(f"\nmatmul peak: {peak / 1e9:.1f} GFLOP/s ({'bf16 GPU' if gpu else 'fp32 CPU'}); results in {work}")
    plain = {
        t: {
            k: {**m, "metrics": {f"{c[0]:g},{c[1]:g}": v for c, v in m["metrics"].items()}}
            for k, m in modes.items()
        }
        for t, modes in report.items()
    }
    (work / "bench-pack.json").write_text(json.dumps({"peak_flops": peak, "tasks": plain}, indent=1))


if __name__ == "__main__":
    main()
