"""qvtune against TRL's SFTTrainer + PEFT on a pretrained decoder, and qvtune's batched greedy decoding
against transformers' `generate` one example at a time (docs/performance.md, "Decoders: against TRL's
SFTTrainer").

    python scripts/bench_trl.py train --glue ../shared/data/glue --out bench-out/trl
    python scripts/bench_trl.py decode --glue ../shared/data/glue --out bench-out/trl
    python scripts/bench_trl.py report bench-out/trl/train.json docs/performance/trl_loss.png

`train` runs one fine-tune both ways, every run a fresh process: SmolLM2-135M-Instruct from qvtune's
cache folder (model=smollm2), the first --samples SST-2 training sentences as text (qvtune's prompt
in the chat template, then the label word and EOS; the loss on those answer tokens only), LoRA r=8
on W_q and W_v (alpha = r, no dropout), AdamW with qvtune's settings (betas 0.9/0.99, no weight
decay, no clipping) and W_v's adapters at lam x lr, a linear schedule to zero, one epoch, fp32 on a
CPU:

- qvtune: `python -m qvtune.run model=smollm2 task=sst2 task.format=text ...` with its defaults
  (dynamic padding, length-grouped batches); it evaluates --eval-samples dev sentences at the end,
  so its wall time is reported with and without that evaluation;
- TRL: SFTTrainer (`sft` below) on a prompt-completion data set written from qvtune's own prompt and
  answer strings, so that it trains on the same token ids (checked: `same_tokens`); the optimizer
  and schedule go in through `optimizers=`; completion-only loss; no evaluation. TRL's defaults
  otherwise, but for fp32 (its default is bf16 autocast, qvtune's on a CPU fp32), no gradient
  checkpointing (on by default in TRL; qvtune does not checkpoint smollm2), no clipping (qvtune's
  default). No padding-free batches: TRL's default, and on a CPU the right one (they need
  FlashAttention to keep examples apart).

Seeds alternate the order (qvtune, TRL, TRL, qvtune, ...) so that background load falls on both.
Per run: the process's wall time (start to exit), training tokens/s (prompt + answer tokens, padding
excluded, per second of the training loop), peak RSS (os.wait4 of that child), the training loss at
every step. qvtune's tokenization cache is filled first, outside every timing.

`decode` loads the untuned model once and writes the greedy answers to --decode-samples SST-2 dev
prompts twice: qvtune's dev evaluation (qvtune.train.generate: length-sorted, left-padded batches,
KV cache) and `model.generate` one prompt at a time; same token ids, same max_new_tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qvtune.config.schema import TaskConfig
    from qvtune.data.encode import Encoded
    from qvtune.data.tasks import Split

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
}
TAIL = 5  # a run's final loss: the mean of its last TAIL steps (one batch's loss is noisy)
SYSTEMS = ("qvtune", "trl")


def trl_rows(split: Split, task: TaskConfig, tokenizer: Any) -> list[dict[str, str]]:
    """TRL's prompt-completion rows of qvtune's prompts and answers (qvtune.data.text), written so that
    TRL tokenizes them into qvtune's ids: the prompt as qvtune renders it (in the chat template with
    the generation prompt, or plain), the completion the answer after qvtune's prefix; TRL appends
    EOS, as qvtune does. The standard format, not the conversational one: TRL would render a
    conversational completion with the template's end of turn, a newline after EOS that qvtune does
    not train on."""
    from qvtune.data.text import answer_prefix, prompt_texts, uses_chat

    assert split.answers is not None, "a text split has answers"
    prompts = prompt_texts(tokenizer, split.columns[0], uses_chat(task, tokenizer))
    prefix = answer_prefix(task, tokenizer)
    return [{"prompt": p, "completion": prefix + a} for p, a in zip(prompts, split.answers)]


def same_tokens(encoded: Encoded, input_ids: list[list[int]], labels: list[list[int]]) -> int:
    """How many examples TRL tokenized as qvtune did: the same ids, and the loss on the same positions
    (qvtune's answer and its EOS), taken in order from the start of `encoded`."""
    assert encoded.prompt_lengths is not None, "a text split has prompt lengths"
    same = 0
    for i, (ids, lab) in enumerate(zip(input_ids, labels)):
        start, end = int(encoded.offsets[i]), int(encoded.offsets[i + 1])
        answer = [j for j, x in enumerate(lab) if x != -100]
        same += ids == encoded.ids[start:end].tolist() and answer == list(
            range(int(encoded.prompt_lengths[i]), end - start)
        )
    return same


def compose(overrides: list[str]) -> Any:
    """The run config qvtune composes from these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from qvtune.config.schema import config_dir, register_configs

    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return hydra_compose("run", overrides=overrides)


def overrides(opts: argparse.Namespace) -> list[str]:
    """qvtune's command line for the benchmark's fine-tune (without seed and results_dir)."""
    return [
        "model=smollm2",
        "task=sst2",
        "task.format=text",
        f"data_dir={Path(opts.glue).expanduser().resolve()}",
        "method=lora",
        "targets=qv",
        f"rank={opts.rank}",
        f"alpha={opts.rank}",
        "dropout=0.0",
        f"lr={opts.lr}",
        f"lam={opts.lam}",
        f"batch_size={opts.batch_size}",
        "epochs=1",
        f"max_train_samples={opts.samples}",
        f"max_eval_samples={opts.eval_samples}",
        "trackers=[]",
        *([f"threads={opts.threads}"] if opts.threads else []),
    ]


def load_data(cfg: Any, samples: int) -> tuple[Any, Any, Encoded, Encoded]:
    """The tokenizer, the task, and qvtune's encoded train (its first `samples`) and dev splits, from
    qvtune's tokenization cache (filled here where it is cold)."""
    from qvtune.data.encode import encode_task
    from qvtune.data.load import load_task
    from qvtune.model.load import load_tokenizer

    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir, text=True)
    task = load_task(cfg.task, cfg.data_dir)
    train, evals = encode_task(tokenizer, task, cfg.task.name, cfg.max_len, Path(cfg.cache_dir).expanduser())
    return tokenizer, task, train.subset(samples), evals[task.eval_names[0]]


def child(cmd: list[str], cwd: Path, profile: bool) -> tuple[float, float]:
    """Run `python cmd` in `cwd` to its end (output to cwd/run.log): its wall time from start to exit,
    and its peak RSS in MB (os.wait4: this child's alone). `profile`: under cProfile, its functions'
    cumulative times written to cwd/profile.txt."""
    log = cwd / "run.log"
    cmd = [sys.executable, *(["-m", "cProfile", "-o", str(cwd / "run.prof")] if profile else []), *cmd]
    with open(log, "w") as out:
        tic = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - tic
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    if profile:
        with open(cwd / "profile.txt", "w") as f:
            pstats.Stats(str(cwd / "run.prof"), stream=f).sort_stats("cumulative").print_stats(60)
    return wall, usage.ru_maxrss / 1024


def final_loss(curve: list[list[float]]) -> float:
    return statistics.fmean(loss for _, loss in curve[-TAIL:])


def run_qvtune(args: list[str], seed: int, out: Path, profile: bool) -> dict[str, Any]:
    """One `python -m qvtune.run` and what its record says."""
    from qvtune.store.record import RESULT_FILE, RunRecord

    folder = out / f"qvtune-seed{seed}"
    folder.mkdir(parents=True)
    cmd = ["-m", "qvtune.run", *args, f"seed={seed}", f"results_dir={folder / 'results'}"]
    wall, rss = child(cmd, folder, profile)
    (path,) = (folder / "results").rglob(RESULT_FILE)
    rec = RunRecord.read(path, curves=True)
    assert rec.curves is not None and rec.tokens and rec.params, f"{path}: a completed run's record"
    t = rec.timing
    train_s, eval_s = float(t["train_s"] or 0), float(t["eval_s"] or 0)
    return {
        "system": "qvtune",
        "seed": seed,
        "wall_s": wall,
        "wall_no_eval_s": wall - eval_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "tokens": rec.tokens,
        "tokens_per_s": rec.tokens / train_s,
        "peak_rss_mb": rss,
        "steps": rec.steps,
        "threads": rec.threads,
        "trainable": rec.params["trainable"],
        "train_loss": rec.curves.train_loss,
        "final_loss": final_loss(rec.curves.train_loss),
        # in the process: from the run's start (imports of torch & co. included) to the model, data ready
        "phases": {k: t[k] for k in ("load_s", "data_s", "setup_s", "wall_s")},
        "dev": rec.final,
    }


def run_trl(spec: dict[str, Any], seed: int, out: Path, profile: bool) -> dict[str, Any]:
    """One TRL run (`sft`, a fresh process) and what it reports."""
    folder = out / f"trl-seed{seed}"
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({**spec, "seed": seed, "out": str(folder)}, indent=1))
    wall, rss = child([str(Path(__file__).resolve()), "sft", str(folder / "spec.json")], folder, profile)
    r = json.loads((folder / "result.json").read_text())
    return {
        "system": "trl",
        "seed": seed,
        "wall_s": wall,
        "wall_no_eval_s": wall,  # TRL evaluates nothing
        "train_s": r["phases"]["train_s"],
        "eval_s": 0.0,
        "tokens": r["tokens"],
        "tokens_per_s": r["tokens"] / r["phases"]["train_s"],
        "peak_rss_mb": rss,
        "steps": r["steps"],
        "threads": r["threads"],
        "trainable": r["trainable"],
        "train_loss": r["train_loss"],
        "final_loss": final_loss(r["train_loss"]),
        "phases": r["phases"],
        "_ids": (r["input_ids"], r["labels"]),
    }


def sft(spec_file: str) -> None:
    """One TRL fine-tune as `train` specifies it (spec.json): writes its timings, per-step losses and the
    token ids it trained on to result.json beside the spec."""
    start = time.perf_counter()
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        TrainerCallback,
        get_linear_schedule_with_warmup,
        set_seed,
    )
    from trl import SFTConfig, SFTTrainer

    from qvtune.train.runtime import available_cpus

    spec = json.loads(Path(spec_file).read_text())
    phases = {"import_s": time.perf_counter() - start}

    tic = time.perf_counter()
    torch.set_num_threads(spec["threads"] or available_cpus())
    set_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=spec["rank"],
        lora_alpha=spec["alpha"],
        lora_dropout=spec["dropout"],
        target_modules=["q_proj", "v_proj"],
        bias="none",
    )
    model = get_peft_model(model, lora)
    phases["load_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    with open(spec["data"]) as f:
        data = Dataset.from_list([json.loads(line) for line in f])
    phases["data_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    value = [p for n, p in trainable if ".v_proj." in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in trainable if ".v_proj." not in n], "lr": spec["lr"]},
            {"params": value, "lr": spec["lr_v"]},
        ],
        betas=tuple(spec["betas"]),
        eps=spec["eps"],
        weight_decay=spec["weight_decay"],
    )
    steps = math.ceil(len(data) / spec["batch_size"])
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    args = SFTConfig(
        output_dir=str(Path(spec["out"]) / "trainer"),
        per_device_train_batch_size=spec["batch_size"],
        num_train_epochs=1,
        seed=spec["seed"],
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=torch.cuda.is_available(),  # qvtune's precision: fp32 on a CPU, bf16 autocast on a GPU
        gradient_checkpointing=False,
        max_grad_norm=0.0,  # no clipping
        completion_only_loss=True,
        padding_free=False,
        max_length=spec["max_length"],
    )

    class Clock(TrainerCallback):
        """The training loop's time: from its start to the end of its last step (no logging after)."""

        begin = end = 0.0

        def on_train_begin(self, *_: Any, **__: Any) -> None:
            Clock.begin = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            Clock.end = time.perf_counter()

    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        optimizers=(optimizer, scheduler),
        callbacks=[Clock()],
    )
    phases["init_s"] = time.perf_counter() - tic
    tic = time.perf_counter()
    trainer.train()
    phases["train_call_s"] = time.perf_counter() - tic
    phases["train_s"] = Clock.end - Clock.begin
    phases["in_process_s"] = time.perf_counter() - start
    ids, labels = list(trainer.train_dataset["input_ids"]), list(trainer.train_dataset["labels"])
    result = {
        "phases": phases,
        "steps": trainer.state.global_step,
        "threads": torch.get_num_threads(),
        "tokens": sum(len(x) for x in ids),
        "trainable": sum(p.numel() for _, p in trainable),
        "train_loss": [[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        "input_ids": ids,
        "labels": labels,
    }
    (Path(spec["out"]) / "result.json").write_text(json.dumps(result))


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}


def curve_gap(runs: list[dict[str, Any]]) -> dict[str, float]:
    """How far apart the loss curves are, per step, between two runs of different systems and between
    two runs (seeds) of the same system: where the systems train alike, the two are alike."""
    curves = {(r["system"], r["seed"]): {int(s): loss for s, loss in r["train_loss"]} for r in runs}

    def gap(a: dict[int, float], b: dict[int, float]) -> float:
        return statistics.fmean(abs(a[s] - b[s]) for s in a.keys() & b.keys())

    pairs = list(combinations(curves, 2))
    across = [gap(curves[a], curves[b]) for a, b in pairs if a[0] != b[0]]
    within = [gap(curves[a], curves[b]) for a, b in pairs if a[0] == b[0]]
    return {
        "across_systems": statistics.fmean(across),
        "within_system": statistics.fmean(within) if within else math.nan,
    }


def train(opts: argparse.Namespace) -> None:
    """The fine-tune both ways, seed by seed; writes train.json (every run, the spreads, the ratios)
    and the loss figure into --out."""
    out = Path(opts.out).resolve()
    runs_dir = out / "runs"
    shutil.rmtree(runs_dir, ignore_errors=True)  # an earlier benchmark's runs: each run starts afresh
    args = overrides(opts)
    cfg = compose(args)
    from qvtune.model.load import model_folder

    optim = cfg.optim
    assert optim.scheduler == "linear" and not optim.warmup_ratio and not optim.max_grad_norm, (
        "the TRL side mirrors qvtune's default schedule: linear, no warmup, no clipping"
    )
    print("qvtune's tokenization cache and TRL's data file ...", flush=True)
    tic = time.perf_counter()
    folder = model_folder(cfg.model, cfg.cache_dir)
    tokenizer, task, encoded, _ = load_data(cfg, opts.samples)
    prepare_s = time.perf_counter() - tic
    rows = trl_rows(task.train.head(opts.samples), cfg.task, tokenizer)
    runs_dir.mkdir(parents=True)
    data = out / f"sst2-train-{opts.samples}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "model": folder,
        "data": str(data),
        "rank": opts.rank,
        "alpha": opts.rank,
        "dropout": 0.0,
        "lr": opts.lr,
        "lr_v": opts.lr * opts.lam,
        "betas": list(optim.betas),
        "eps": optim.eps,
        "weight_decay": optim.weight_decay,
        "batch_size": cfg.batch_size,
        "max_length": cfg.max_len,
        "threads": opts.threads,
    }
    runs = []
    for i, seed in enumerate(opts.seeds):
        for system in SYSTEMS if i % 2 == 0 else SYSTEMS[::-1]:
            print(f"  {system}, seed {seed} ...", flush=True)
            load = os.getloadavg()[0]
            if system == "qvtune":
                run = run_qvtune(args, seed, runs_dir, opts.profile)
            else:
                run = run_trl(spec, seed, runs_dir, opts.profile)
            run["load_avg"] = [load, os.getloadavg()[0]]  # the machine's 1-minute load before and after
            print(
                f"    wall {run['wall_s']:.1f} s, {run['tokens_per_s']:.0f} train tok/s, "
                f"load {run['load_avg'][0]:.1f} -> {run['load_avg'][1]:.1f}",
                flush=True,
            )
            runs.append(run)
    checks = [same_tokens(encoded, *r.pop("_ids")) for r in runs if r["system"] == "trl"]
    report = {
        "settings": {
            "samples": opts.samples,
            "batch_size": cfg.batch_size,
            "steps": runs[0]["steps"],
            "rank": opts.rank,
            "lr": opts.lr,
            "lam": opts.lam,
            "eval_samples": opts.eval_samples,
            "seeds": opts.seeds,
            "profiled": opts.profile,
            "threads": runs[0]["threads"],
            "qvtune_command": "python -m qvtune.run " + " ".join(args) + " seed=S results_dir=...",
        },
        "prepare_s": prepare_s,
        "same_tokens": {"examples": len(encoded), "identical_in_each_trl_run": checks},
        "longest_example": int(encoded.lengths.max()),
        "runs": runs,
    }
    (out / "train.json").write_text(json.dumps(summarise(report), indent=1))
    figure(report, out / "trl_loss.png")
    print_train(report)
    print(f"written: {out / 'train.json'}, {out / 'trl_loss.png'}")


MEASURES = ("wall_s", "wall_no_eval_s", "train_s", "tokens_per_s", "peak_rss_mb", "final_loss")


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The report with each measure's spread over seeds, the ratios of the two systems' means and of
    each seed's two runs (run one after the other: the background load they met was alike), and how
    far apart their loss curves are."""
    runs = report["runs"]
    by = {(r["system"], r["seed"]): r for r in runs}
    s = {
        system: {k: spread([r[k] for r in runs if r["system"] == system]) for k in MEASURES}
        for system in SYSTEMS
    }

    def ratios(q: dict[str, Any], t: dict[str, Any]) -> dict[str, float]:
        return {
            "wall_trl_over_qvtune": t["wall_s"] / q["wall_s"],
            "wall_trl_over_qvtune_no_eval": t["wall_s"] / q["wall_no_eval_s"],
            "tokens_per_s_qvtune_over_trl": q["tokens_per_s"] / t["tokens_per_s"],
        }

    means = {system: {k: v["mean"] for k, v in s[system].items()} for system in SYSTEMS}
    seeds = sorted({r["seed"] for r in runs})
    return {
        **report,
        "summary": s,
        "ratios": ratios(means["qvtune"], means["trl"]),
        "ratios_per_seed": {seed: ratios(by["qvtune", seed], by["trl", seed]) for seed in seeds},
        "curve_gap": curve_gap(runs),
    }


def cell(x: dict[str, float], digits: int = 1) -> str:
    return f"{x['mean']:.{digits}f} ± {x['sd']:.{digits}f}"


def print_train(report: dict[str, Any]) -> None:
    """The report as the Markdown table of docs/performance.md."""
    report = summarise(report)
    s, settings = report["summary"], report["settings"]
    print(
        f"\n{settings['samples']} SST-2 examples, batch {settings['batch_size']}, {settings['steps']} steps, "
        f"seeds {settings['seeds']} (mean ± sd)\n"
    )
    print("| | wall s | wall s, no dev eval | train tok/s | peak RSS MB | final loss |")
    print("|---|---|---|---|---|---|")
    for system, name in (("qvtune", "qvtune"), ("trl", "TRL SFTTrainer + PEFT")):
        x = s[system]
        print(
            f"| {name} | {cell(x['wall_s'])} | {cell(x['wall_no_eval_s'])} | {cell(x['tokens_per_s'], 0)} | "
            f"{cell(x['peak_rss_mb'], 0)} | {cell(x['final_loss'], 3)} |"
        )
    gap, same = report["curve_gap"], report["same_tokens"]
    pairs = [("means", report["ratios"])] + [(f"seed {k}", v) for k, v in report["ratios_per_seed"].items()]
    print()
    for name, r in pairs:
        print(
            f"{name}: TRL wall / qvtune wall x{r['wall_trl_over_qvtune']:.2f} "
            f"(x{r['wall_trl_over_qvtune_no_eval']:.2f} without qvtune's dev evaluation); "
            f"train tokens/s qvtune / TRL x{r['tokens_per_s_qvtune_over_trl']:.2f}"
        )
    print(
        f"loss per step, mean |difference| between runs: {gap['across_systems']:.4f} across systems, "
        f"{gap['within_system']:.4f} between seeds of one system"
    )
    print(
        f"token ids identical to qvtune's: {same['identical_in_each_trl_run']} of {same['examples']} "
        "examples in each TRL run"
    )


def figure(report: dict[str, Any], path: Path) -> None:
    """The per-step training loss of every run: each system's mean over seeds with its seeds' range,
    and each run's moving average over TAIL steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    colours = {"qvtune": "tab:blue", "trl": "tab:orange"}
    names = {"qvtune": "qvtune", "trl": "TRL SFTTrainer"}
    fig, (raw, smooth) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for system in SYSTEMS:
        runs = [r for r in report["runs"] if r["system"] == system]
        steps = np.array([s for s, _ in runs[0]["train_loss"]])
        losses = np.array([[loss for _, loss in r["train_loss"]] for r in runs])
        raw.plot(
            steps, losses.mean(0), color=colours[system], label=f"{names[system]}, mean of {len(runs)} seeds"
        )
        raw.fill_between(steps, losses.min(0), losses.max(0), color=colours[system], alpha=0.25)
        kernel = np.ones(TAIL) / TAIL
        for k, (r, curve) in enumerate(zip(runs, losses if len(steps) >= TAIL else [])):
            smooth.plot(
                steps[TAIL - 1 :],
                np.convolve(curve, kernel, mode="valid"),
                color=colours[system],
                linestyle=("-", "--", ":", "-.")[k % 4],
                label=f"{names[system]}, seed {r['seed']}",
            )
    raw.set_title("training loss per step (band: range over seeds)")
    smooth.set_title(f"moving average over {TAIL} steps, each run")
    for ax in (raw, smooth):
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    raw.set_ylabel("answer-token loss")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def decode(opts: argparse.Namespace) -> None:
    """Batched against one-by-one greedy decoding of the first --decode-samples dev prompts; writes
    decode.json into --out."""
    import numpy as np
    import torch

    from qvtune.model.load import load_model
    from qvtune.train.generate import generate, prompts
    from qvtune.train.runtime import set_threads

    cfg = compose(overrides(opts))
    threads = set_threads(cfg)
    tokenizer, _, _, dev = load_data(cfg, opts.samples)
    dev = dev.subset(opts.decode_samples)
    model = load_model(cfg.model, cfg.task.num_labels, 0, cfg.attention_dropout, cfg.cache_dir, causal=True)
    model.eval()
    new, device = cfg.task.max_new_tokens, torch.device("cpu")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    @torch.inference_mode()
    def one_by_one(n: int) -> list[str]:
        """Each prompt alone through model.generate, answers cut at EOS and decoded as qvtune does."""
        answers = []
        for ids in prompts(dev, np.arange(n)):
            x = torch.from_numpy(ids.astype(np.int64))[None]
            row = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=new,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos,
                pad_token_id=pad,
            )[0, x.shape[1] :].tolist()
            answers.append(
                tokenizer.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True)
            )
        return answers

    one_by_one(2)  # warm-up of both paths: first calls pay for allocations
    generate(model, dev.subset(2), tokenizer, new, cfg, device)
    tic = time.perf_counter()
    batched = generate(model, dev, tokenizer, new, cfg, device)
    batched_s = time.perf_counter() - tic
    tic = time.perf_counter()
    single = one_by_one(len(dev))
    single_s = time.perf_counter() - tic
    same = sum(a == b for a, b in zip(batched, single))
    report = {
        "examples": len(dev),
        "max_new_tokens": new,
        "threads": threads,
        "eval_batch_size": cfg.eval_batch_size,
        "max_batch_tokens": cfg.max_batch_tokens,
        "batched_s": batched_s,
        "one_by_one_s": single_s,
        "batched_examples_per_s": len(dev) / batched_s,
        "one_by_one_examples_per_s": len(dev) / single_s,
        "speedup": single_s / batched_s,
        "identical_answers": same,
        "answers": {a: batched.count(a) for a in sorted(set(batched))},
    }
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(report, indent=1))
    print(f"\n{len(dev)} SST-2 dev prompts, greedy, at most {new} new tokens, {threads} threads\n")
    print("| decoding | s | examples/s |")
    print("|---|---|---|")
    print(f"| qvtune's dev evaluation (batched) | {batched_s:.1f} | {len(dev) / batched_s:.1f} |")
    print(f"| `model.generate`, one at a time | {single_s:.1f} | {len(dev) / single_s:.1f} |")
    print(
        f"\nx{single_s / batched_s:.2f}; identical answers: {same} of {len(dev)}; "
        f"answers: {report['answers']}"
    )
    print(f"written: {out / 'decode.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "decode"):
        p = sub.add_parser(name)
        p.add_argument(
            "--glue", required=True, help="folder in the GLUE TSV layout (SST-2/train.tsv, dev.tsv)"
        )
        p.add_argument("--out", default="bench-out/trl")
        p.add_argument("--samples", type=int, default=320, help="training examples: the first N of train.tsv")
        p.add_argument("--batch-size", type=int, default=16)
        p.add_argument("--rank", type=int, default=8)
        p.add_argument("--lr", type=float, default=2e-4, help="eta_QK")
        p.add_argument("--lam", type=float, default=4.0, help="eta_V / eta_QK")
        p.add_argument(
            "--eval-samples", type=int, default=100, help="dev sentences qvtune evaluates at the end"
        )
        p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1])
        p.add_argument("--decode-samples", type=int, default=100, help="dev prompts for `decode`")
        p.add_argument(
            "--threads", type=int, help="torch's CPU threads in every run (default: the cores it may use)"
        )
        p.add_argument(
            "--profile",
            action="store_true",
            help="`train` under cProfile (its times are then not the benchmark's)",
        )
    worker = sub.add_parser("sft", help="one TRL run (started by `train`)")
    worker.add_argument("spec")
    again = sub.add_parser("report", help="print the table of a train.json again and draw its figure to PATH")
    again.add_argument("report")
    again.add_argument("path")
    opts = parser.parse_args()
    if opts.command == "sft":
        return sft(opts.spec)
    if opts.command == "report":
        report = json.loads(Path(opts.report).read_text())
        print_train(report)
        return figure(report, Path(opts.path))
    if not (Path(opts.glue).expanduser() / "SST-2" / "train.tsv").exists():
        raise SystemExit(f"--glue {opts.glue}: no SST-2/train.tsv; expected a folder in the GLUE TSV layout")
    if opts.samples % opts.batch_size:
        raise SystemExit(f"--samples {opts.samples}: expected a multiple of --batch-size {opts.batch_size}")
    if opts.command == "train":
        train(opts)
    else:
        decode(opts)


if __name__ == "__main__":
    main()
