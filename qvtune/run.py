"""`python -m qvtune.run`: one fine-tuning run (or, with -m, a sweep of them) from a Hydra config.

    python -m qvtune.run task=mnli targets=qv lam=8
    python -m qvtune.run model=minilm task=rte data_dir=../glue targets=v lam=4 epochs=2
    python -m qvtune.run -m +sweep=demo

The config is validated before torch is imported. A run is keyed by a hash of what changes its
result: a finished key is skipped, an interrupted one resumes from its checkpoint, and a failure is
recorded in result.json instead of stopping a sweep.
"""
from __future__ import annotations

import logging
import os
import platform
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from qvtune import __version__
from qvtune.config import (
    available_cpus,
    config_dir,
    learning_rates,
    parse_targets,
    register_configs,
    run_key,
    validate,
)
from qvtune.record import CHECKPOINT_FILE, SCHEMA_VERSION, ResultsStore

log = logging.getLogger("qvtune")
register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="run")
def main(cfg: DictConfig) -> Optional[dict[str, Any]]:
    errors = validate(cfg)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    key = run_key(cfg)
    store = ResultsStore(Path(cfg.results_dir).expanduser().absolute())
    if cfg.dry_run:
        return dry_run(cfg)
    if cfg.plan:
        print(f"{key}  {store.state(key).state}")
        return None
    with store.claim(key) as mine:
        if not mine:
            log.info(f"run {key} is running in another process: skipped")
            return None
        state = store.state(key)
        if state.finished:
            log.info(f"run {key} is already {state.state} ({store.run_dir(key)}): skipped")
            return state.record
        # we hold the lock now, so a record that says "running" was left by a killed run
        record = execute(cfg, key, store, resume=state.state in ("running", "interrupted"))
    if record["status"] == "failed" and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(1)  # a single run says so; in a sweep the failure is a recorded result
    return record


def dry_run(cfg: DictConfig) -> dict[str, Any]:
    """The parameter groups and exact counts of this config, from the model's structure alone."""
    from qvtune.methods import apply_method, format_group_table, group_table, param_groups
    from qvtune.models import build_on_meta

    model = apply_method(build_on_meta(cfg.model, cfg.task.num_labels), cfg)
    table = group_table(model, param_groups(model, learning_rates(cfg)))
    targets = parse_targets(cfg.targets)
    rank = "" if cfg.method.name == "full" else f" r={cfg.rank}"
    print(f"{cfg.model.name} {cfg.method.name} {targets.upper()}{rank}, {cfg.task.num_labels} labels")
    print(format_group_table(table))
    return table


def execute(cfg: DictConfig, key: str, store: ResultsStore, resume: bool) -> dict[str, Any]:
    """Run one configuration and write its record; exceptions become a "failed" record."""
    run_dir = store.run_dir(key)
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    log.addHandler(handler)
    rates = learning_rates(cfg)
    record: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "run_key": key,
        "status": "running",
        "error": None,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "rates": {"qk": rates.qk, "v": rates.v, "head": rates.head, "lam": rates.lam},
        "metric": cfg.task.metric,
        "sweep": cfg.sweep_name,
        "host": socket.gethostname(),
        "started_at": now(),
        "qvtune_version": __version__,
    }
    store.write(key, record)
    log.info(f"run {key} -> {run_dir}" + (" (resuming)" if resume else ""))
    tracker = None
    exit_code = 1
    if threading.current_thread() is threading.main_thread():  # scancel, time limits: save, then stop
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        from qvtune.tracking import Tracker

        tracker = Tracker(cfg, key, rates, run_dir)
        record.update(fine_tune(cfg, run_dir, tracker.log))
        exit_code = 0
    except Exception as e:  # recorded, never raised: one bad run must not stop a sweep
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    finally:
        log.removeHandler(handler)
        handler.close()
    record["finished_at"] = now()
    store.write(key, record)
    if tracker is not None:
        tracker.finish({k: record.get(k) for k in ("status", "best", "final", "steps")}, exit_code)
    if record["status"] == "failed":
        log.error(f"run {key} failed: {record['error']} -> {run_dir / 'result.json'}")
    else:
        log.info(f"run {key} {record['status']}: {cfg.task.metric} = {record['final'][cfg.task.metric]:.4f}"
                 f" -> {run_dir / 'result.json'}")
    return record


def fine_tune(cfg: DictConfig, run_dir: Path, log_fn: Any) -> dict[str, Any]:
    """Model -> method and groups -> data -> training loop; returns the record's result fields."""
    wall = time.perf_counter()  # imports included: the first run of a process pays for them
    import torch

    from qvtune.data import encode_cached, tokenizer_fingerprint
    from qvtune.methods import apply_method, format_group_table, group_table, param_groups
    from qvtune.models import build_on_meta, load_model, load_tokenizer
    from qvtune.tasks import load_task
    from qvtune.train import train

    torch.set_num_threads(cfg.threads or available_cpus())
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    rates = learning_rates(cfg)
    apply_method(build_on_meta(cfg.model, cfg.task.num_labels), cfg)  # structure errors before any weights load

    tic = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    model = apply_method(load_model(cfg.model, cfg.task.num_labels, cfg.seed, cfg.attention_dropout), cfg).to(device)
    groups = param_groups(model, rates)
    table = group_table(model, groups)
    log.info("\n" + format_group_table(table))
    load_s = time.perf_counter() - tic

    tic = time.perf_counter()
    task = load_task(cfg.task, cfg.data_dir)
    cache = Path(cfg.cache_dir).expanduser()
    prefix = f"{cfg.task.name}-{tokenizer_fingerprint(tokenizer)[:16]}-{task.fingerprint[:16]}"
    train_data = encode_cached(tokenizer, lambda: task.train, cfg.max_len, cache, f"{prefix}-train").subset(cfg.max_train_samples)
    evals = {
        name: encode_cached(tokenizer, lambda name=name: task.evals[name], cfg.max_len, cache, f"{prefix}-{name}")
        .subset(cfg.max_eval_samples)
        for name in task.eval_names
    }
    data_s = time.perf_counter() - tic
    setup_s = time.perf_counter() - wall

    state = train(model, groups, train_data, evals, cfg.task, cfg, pad_id=tokenizer.pad_token_id, device=device,
                  checkpoint=run_dir / CHECKPOINT_FILE, log=log_fn)
    if cfg.output_dir:
        model.save_pretrained(Path(cfg.output_dir).expanduser() / run_dir.name)
    (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)

    metric = cfg.task.metric
    final = state.history[-1]["metrics"]
    best = max(state.history, key=lambda h: h["metrics"][metric])["metrics"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "status": state.status,
        "error": state.error,
        "params": table,
        "history": state.history,
        "final": final,
        "best": best,
        "train_loss": state.train_loss,
        "update_norms": state.update_norms,
        "lr_trace": state.lr_trace,
        "steps": state.step,
        "samples": state.samples,
        "timing": {
            "wall_s": time.perf_counter() - wall,
            "setup_s": setup_s,
            "load_s": load_s,
            "data_s": data_s,
            "train_s": state.train_s,
            "eval_s": state.eval_s,
            "samples_per_s": state.samples / state.train_s if state.train_s else None,
            "tokens_per_s": state.tokens / state.train_s if state.train_s else None,
        },
        "tokens": state.tokens,
        "peak_rss_mb": peak if platform.system() == "Linux" else peak / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
