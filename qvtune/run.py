"""`python -m qvtune.run`: one fine-tuning run (or, with -m, a sweep of them) from a Hydra config.

    python -m qvtune.run task=mnli targets=qv lam=8
    python -m qvtune.run model=minilm task=rte data_dir=../glue targets=v lam=4 epochs=2
    python -m qvtune.run -m +sweep=demo

The config is validated before torch is imported. A run is keyed by a hash of what changes its
result: a finished key is skipped, an interrupted one resumes from its checkpoint, and a failure is
recorded in result.json instead of stopping a sweep.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qvtune.config import (
    RunConfig,
    config_dir,
    has_rank,
    learning_rates,
    parse_targets,
    register_configs,
    validate,
)
from qvtune.identity import run_key
from qvtune.record import CHECKPOINT_FILE, RESULT_FILE, ResultsStore, RunRecord, State, Status

if TYPE_CHECKING:
    from qvtune.runtime import Runtime

log = logging.getLogger("qvtune")
register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="run")
def main(composed: DictConfig) -> Optional[Union[RunRecord, dict[str, Any]]]:
    cfg = cast(RunConfig, composed)  # the DictConfig Hydra composed from the schema, typed as it
    errors = validate(cfg)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if cfg.dry_run:
        return dry_run(cfg)
    from qvtune.runtime import detect

    runtime = detect(cfg)
    key = run_key(cfg, runtime.precision)
    store = ResultsStore(Path(cfg.results_dir).expanduser().absolute())
    if cfg.plan:
        print(f"{key}  {store.state(key).state}")
        return None
    with store.claim(key) as mine:
        if not mine:
            log.info(f"run {key} is running in another process: skipped")
            return None
        state = store.state(key)
        if state.reached(cfg.until):
            log.info(f"run {key} is already {state.state} ({store.run_dir(key)}): skipped")
            return state.record
        # we hold the lock now, so a record that says "running" was left by a killed run
        resume = state.state in (State.RUNNING, State.INTERRUPTED, State.PAUSED)
        record = execute(cfg, key, store, runtime, resume=resume)
    if record.status is Status.FAILED and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(1)  # a single run says so; in a sweep the failure is a recorded result
    return record


def dry_run(cfg: RunConfig) -> dict[str, Any]:
    """The parameter groups and exact counts of this config, from the model's structure alone."""
    from qvtune.methods import apply_method, format_group_table, group_table, param_groups
    from qvtune.models import build_on_meta

    model = apply_method(build_on_meta(cfg.model, cfg.task.num_labels), cfg)
    table = group_table(model, param_groups(model, learning_rates(cfg), cfg.optim.grouping))
    targets = parse_targets(cfg.targets)
    rank = f" r={cfg.rank}" if has_rank(cfg.method.name) else ""
    print(f"{cfg.model.name} {cfg.method.name} {targets.upper()}{rank}, {cfg.task.num_labels} labels")
    print(format_group_table(table))
    return table


def execute(cfg: RunConfig, key: str, store: ResultsStore, runtime: Runtime, resume: bool) -> RunRecord:
    """Run one configuration and write its record; exceptions become a "failed" record."""
    run_dir = store.run_dir(key)
    record = RunRecord.start(cfg, key, runtime.precision)
    tracker = None
    exit_code = 1
    with run_log(run_dir):
        store.write(record)
        log.info(f"run {key} -> {run_dir}" + (" (resuming)" if resume else ""))
        exit_on_sigterm()
        try:
            from qvtune.tracking import Tracker

            tracker = Tracker(cfg, key, learning_rates(cfg), run_dir)
            fine_tune(cfg, record, run_dir, runtime, tracker.log)
            exit_code = 0
        except Exception as e:  # recorded, never raised: one bad run must not stop a sweep
            record.fail(e)
    store.write(record)
    if tracker is not None:
        tracker.finish(
            {
                "status": record.status.value,
                "best": record.best,
                "final": record.final,
                "steps": record.steps,
            },
            exit_code,
        )
    if record.status is Status.FAILED:
        log.error(f"run {key} failed: {record.error} -> {run_dir / RESULT_FILE}")
    else:
        log.info(
            f"run {key} {record.status}: {cfg.task.metric} = {record.final[cfg.task.metric]:.4f}"
            f" -> {run_dir / RESULT_FILE}"
        )
    return record


@contextlib.contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """qvtune's log lines also go to the run's own run.log while it works (a resumed run appends)."""
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


def exit_on_sigterm() -> None:
    """scancel and time limits send SIGTERM: stop through SystemExit, which the training loop
    answers by saving a checkpoint and `execute` does not record, so the run stays "running" and
    resumes. Only the main thread may set a handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def fine_tune(cfg: RunConfig, record: RunRecord, run_dir: Path, runtime: Runtime, log_fn: Any) -> None:
    """Model -> method and groups -> data -> training loop; fills in the record's results."""
    wall = time.perf_counter()  # imports included: the first run of a process pays for them
    import torch

    from qvtune.data import encode_task
    from qvtune.methods import apply_method, format_group_table, group_table, param_groups
    from qvtune.models import build_on_meta, load_model, load_tokenizer
    from qvtune.runtime import peak_memory_mb, set_threads
    from qvtune.tasks import load_task
    from qvtune.train import train

    threads = set_threads(cfg)
    device = torch.device(runtime.device)
    apply_method(build_on_meta(cfg.model, cfg.task.num_labels), cfg)  # structure errors before weights load

    tic = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, cfg.task.num_labels, cfg.seed, cfg.attention_dropout)
    model = apply_method(model, cfg).to(device)
    groups = param_groups(model, learning_rates(cfg), cfg.optim.grouping)
    table = group_table(model, groups)
    log.info("\n" + format_group_table(table))
    load_s = time.perf_counter() - tic

    tic = time.perf_counter()
    task = load_task(cfg.task, cfg.data_dir)
    cache = Path(cfg.cache_dir).expanduser()
    train_data, evals = encode_task(tokenizer, task, cfg.task.name, cfg.max_len, cache)
    train_data = train_data.subset(cfg.max_train_samples)
    evals = {name: data.subset(cfg.max_eval_samples) for name, data in evals.items()}
    data_s = time.perf_counter() - tic
    setup_s = time.perf_counter() - wall

    state = train(
        model,
        groups,
        train_data,
        evals,
        cfg.task,
        cfg,
        pad_id=tokenizer.pad_token_id,
        device=device,
        precision=runtime.precision,
        checkpoint=run_dir / CHECKPOINT_FILE,
        log=log_fn,
    )
    if state.status is not Status.PAUSED:  # a paused run keeps its checkpoint to go on from
        if cfg.output_dir:
            # a transformers or PEFT model: torch types the attributes it does not know as Tensor | Module
            cast(Any, model).save_pretrained(Path(cfg.output_dir).expanduser() / run_dir.name)
        (run_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
    setup = {"wall_s": time.perf_counter() - wall, "setup_s": setup_s, "load_s": load_s, "data_s": data_s}
    record.finish(state, table, setup, peak_memory_mb(device.type), str(device), threads)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
