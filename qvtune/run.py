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
import functools
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qvtune.config.rates import learning_rates
from qvtune.config.schema import RunConfig, config_dir, has_rank, parse_targets, register_configs
from qvtune.config.validate import member_configs, validate
from qvtune.status import RESUMABLE, Status
from qvtune.store.identity import run_key
from qvtune.store.record import CHECKPOINT_FILE, RESULT_FILE, RunRecord
from qvtune.store.store import ResultsStore

if TYPE_CHECKING:
    from qvtune.train.runtime import Runtime

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
    from qvtune.train.runtime import detect

    runtime = detect(cfg)
    store = ResultsStore(Path(cfg.results_dir).expanduser().absolute())
    configs = member_configs(cfg) if cfg.pack else [cfg]
    keys = [run_key(c, runtime.precision) for c in configs]
    if cfg.plan:
        for key in keys:
            print(f"{key}  {store.state(key).state}")
        return None
    with contextlib.ExitStack() as claims:
        todo: list[Planned] = []
        for c, key in zip(configs, keys):
            if not claims.enter_context(store.claim(key)):
                log.info(f"run {key} is running in another process: skipped")
                continue
            state = store.state(key)
            if state.reached(c.until):
                log.info(f"run {key} is already {state.state} ({store.run_dir(key)}): skipped")
                continue
            # we hold the lock now, so a record that says "running" was left by a killed run
            resume = state.state in RESUMABLE
            todo.append(Planned(c, key, resume))
        if not todo:
            return store.state(keys[0]).record if len(keys) == 1 else None
        records = execute(todo, store, runtime)
    if any(r.status is Status.FAILED for r in records) and HydraConfig.get().mode == RunMode.RUN:
        sys.exit(1)  # a single run (or pack) says so; in a sweep the failure is a recorded result
    return records[0] if len(records) == 1 else {"pack": [r.run_key for r in records]}


@dataclass
class Planned:
    """A run to execute: its config, run key, and whether it resumes from a checkpoint."""

    cfg: RunConfig
    key: str
    resume: bool


def dry_run(cfg: RunConfig) -> dict[str, Any]:
    """The parameter groups and exact counts of this config, from the model's structure alone."""
    from qvtune.model.load import build_on_meta
    from qvtune.model.methods import apply_method, format_group_table, group_table, param_groups

    model = apply_method(build_on_meta(cfg.model, cfg.task.num_labels), cfg)
    groups = param_groups(model, learning_rates(cfg), cfg.optim.grouping)
    table = group_table(groups, sum(p.numel() for p in model.parameters()))
    targets = parse_targets(cfg.targets)
    rank = f" r={cfg.rank}" if has_rank(cfg.method.name) else ""
    print(f"{cfg.model.name} {cfg.method.name} {targets.upper()}{rank}, {cfg.task.num_labels} labels")
    print(format_group_table(table))
    return table


def execute(runs: list[Planned], store: ResultsStore, runtime: Runtime) -> list[RunRecord]:
    """Run one configuration, or a pack of them, and write each record; exceptions become "failed"
    records (a pack's failure fails each of its members)."""
    records = [RunRecord.start(r.cfg, r.key, runtime.precision) for r in runs]
    if len(runs) > 1:
        for record in records:
            record.packed_with = [r.key for r in runs if r.key != record.run_key]
    trackers: list[Any] = []
    exit_code = 1
    with contextlib.ExitStack() as logs:
        for r, record in zip(runs, records):
            logs.enter_context(run_log(store.run_dir(r.key)))
            store.write(record)
            log.info(f"run {r.key} -> {store.run_dir(r.key)}" + (" (resuming)" if r.resume else ""))
        if len(runs) > 1:
            log.info(f"training {len(runs)} runs as one pack: {' '.join(r.key for r in runs)}")
        exit_on_sigterm()
        try:
            from qvtune.track.tracker import Tracker

            for r in runs:
                trackers.append(Tracker(r.cfg, r.key, learning_rates(r.cfg), store.run_dir(r.key)))
            for part in by_checkpoint_step(runs, store):  # a pack's members start at one step
                chosen = [runs.index(p) for p in part]
                fine_tune(
                    [p.cfg for p in part],
                    [records[i] for i in chosen],
                    [store.run_dir(p.key) for p in part],
                    runtime,
                    [trackers[i].log for i in chosen],
                    store.write,
                )
            exit_code = 0
        except Exception as e:  # recorded, never raised: one bad run must not stop a sweep
            for record in records:
                if record.status is Status.RUNNING:
                    record.fail(e)
    for r, record, tracker in itertools.zip_longest(runs, records, trackers):
        store.write(record)
        if tracker is not None:
            summary = {"status": record.status.value, "best": record.best, "final": record.final}
            tracker.finish({**summary, "steps": record.steps}, exit_code)
        if record.status is Status.FAILED:
            log.error(f"run {r.key} failed: {record.error} -> {store.run_dir(r.key) / RESULT_FILE}")
        else:
            log.info(
                f"run {r.key} {record.status}: {r.cfg.task.metric} = {record.final[r.cfg.task.metric]:.4f}"
                f" -> {store.run_dir(r.key) / RESULT_FILE}"
            )
    return records


def by_checkpoint_step(runs: list[Planned], store: ResultsStore) -> list[list[Planned]]:
    """Runs grouped by the step their checkpoint resumes from (0 without one): one group, but for a
    pack re-formed around members that were interrupted at different steps."""
    if len(runs) == 1:
        return [runs]
    from qvtune.train.loop import checkpoint_step

    groups: dict[int, list[Planned]] = {}
    for r in runs:
        groups.setdefault(checkpoint_step(store.run_dir(r.key) / CHECKPOINT_FILE), []).append(r)
    return list(groups.values())


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


def fine_tune(
    configs: list[RunConfig],
    records: list[RunRecord],
    run_dirs: list[Path],
    runtime: Runtime,
    logs: list[Callable[[dict[str, float], int], None]],
    write: Callable[[RunRecord], None],
) -> None:
    """Model -> method and groups -> data -> training loop; fills in and writes each record as its
    run ends. One config is a lone run through PEFT; several are a pack on one frozen base
    (qvtune.model.pack), whose member that diverges has its record written then, not at the pack's end."""
    wall = time.perf_counter()  # imports included: the first run of a process pays for them
    import torch

    from qvtune.data.encode import encode_task
    from qvtune.data.tasks import load_task
    from qvtune.model.load import build_on_meta, load_model, load_tokenizer
    from qvtune.model.methods import (
        UpdateNorms,
        apply_method,
        format_group_table,
        group_params,
        group_table,
        param_groups,
    )
    from qvtune.model.pack import build_pack
    from qvtune.train.loop import Member, TrainState, train
    from qvtune.train.runtime import peak_memory_mb, set_threads

    cfg = configs[0]  # the members of a pack share everything but PACK_KEYS
    threads = set_threads(cfg)
    device = torch.device(runtime.device)
    for c in configs:
        apply_method(build_on_meta(c.model, c.task.num_labels), c)  # structure errors before weights load

    checkpoints = [d / CHECKPOINT_FILE for d in run_dirs]
    timings: dict[str, float] = {}  # setup_s, load_s, data_s
    finished: set[int] = set()

    def finish(i: int, state: TrainState) -> None:
        """Member i's record from its final state, written."""
        if state.status is not Status.PAUSED:  # a paused run keeps its checkpoint to go on from
            checkpoints[i].unlink(missing_ok=True)
        setup = {"wall_s": time.perf_counter() - wall, **timings}
        records[i].finish(state, tables[i], setup, peak_memory_mb(device.type), str(device), threads)
        write(records[i])
        finished.add(i)

    tic = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    model: torch.nn.Module = load_model(cfg.model, cfg.task.num_labels, cfg.seed, cfg.attention_dropout)
    if len(configs) == 1:
        model = apply_method(model, cfg).to(device)
        groups = [param_groups(model, learning_rates(cfg), cfg.optim.grouping)]
        norms = [UpdateNorms.of(model)]
        tables = [group_table(groups[0], sum(p.numel() for p in model.parameters()))]
    else:
        pack = build_pack(model, configs)
        model = pack.to(device)
        groups = [
            group_params(m.named, learning_rates(c), c.optim.grouping) for m, c in zip(pack.members, configs)
        ]
        norms = [pack.update_norms(i) for i in range(len(configs))]
        tables = [group_table(g, pack.lone_size(i)) for i, g in enumerate(groups)]
    members = [
        Member(g, n, c, lg, functools.partial(finish, i))
        for i, (g, n, c, lg) in enumerate(zip(groups, norms, checkpoints, logs))
    ]
    for table in tables:
        log.info("\n" + format_group_table(table))
    timings["load_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    task = load_task(cfg.task, cfg.data_dir)
    cache = Path(cfg.cache_dir).expanduser()
    train_data, evals = encode_task(tokenizer, task, cfg.task.name, cfg.max_len, cache)
    train_data = train_data.subset(cfg.max_train_samples)
    evals = {name: data.subset(cfg.max_eval_samples) for name, data in evals.items()}
    timings["data_s"] = time.perf_counter() - tic
    timings["setup_s"] = time.perf_counter() - wall

    states = train(
        model,
        members,
        train_data,
        evals,
        cfg.task,
        cfg,
        pad_id=tokenizer.pad_token_id,
        device=device,
        precision=runtime.precision,
    )
    if cfg.output_dir and states[0].status is not Status.PAUSED:  # validate(): never for a pack
        # a transformers or PEFT model: torch types the attributes it does not know as Tensor | Module
        cast(Any, model).save_pretrained(Path(cfg.output_dir).expanduser() / run_dirs[0].name)
    for i, state in enumerate(states):
        if i not in finished:
            finish(i, state)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
