"""`python -m qvtune.run`: one fine-tuning run (or, with -m, a sweep of them) from a Hydra config.

    python -m qvtune.run task=mnli targets=qv lam=8
    python -m qvtune.run model=minilm task=rte data_dir=../glue targets=v lam=4 epochs=2
    python -m qvtune.run -m +sweep=demo

The config is validated before torch is imported. A run is keyed by a hash of what changes its
result: a finished key is skipped, an interrupted one resumes from its checkpoint, and a failure is
recorded in result.json instead of stopping a sweep. The data flows one way: config -> data -> model
and method (qvtune.model) -> the training loop, which yields each run's outcome -> the record,
written here.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional, Union, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qvtune.config.methods import METHODS, fold_options, method_options
from qvtune.config.rates import learning_rates
from qvtune.config.schema import RunConfig, config_dir, has_rank, parse_targets, register_configs
from qvtune.config.validate import member_configs, validate
from qvtune.status import FINISHED, RESUMABLE, Status
from qvtune.store.identity import run_key
from qvtune.store.record import CHECKPOINT_FILE, CURVES_FILE, RESULT_FILE, RunRecord
from qvtune.store.store import ResultsStore, StoreError, cause

if TYPE_CHECKING:
    from qvtune.train.loop import TrainState
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
    fold_options(cfg)  # the method's options under both spellings, as the record will say
    if cfg.dry_run:
        return dry_run(cfg)
    alone = HydraConfig.get().mode == RunMode.RUN  # a single run (or pack), not a job of a sweep
    store = ResultsStore(Path(cfg.results_dir).expanduser().absolute())
    problem = store.unwritable()
    if problem:
        store_failed(StoreError(problem), alone)
    from qvtune.train.runtime import detect

    runtime = detect(cfg)
    configs = member_configs(cfg) if cfg.pack else [cfg]
    keys = [run_key(c, runtime.precision) for c in configs]
    if cfg.plan:
        for key in keys:
            print(f"{key}  {store.state(key).state}")
        return None
    try:
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
                note = None
                if state.unreadable:  # kept for inspection; the run starts afresh
                    aside = store.set_aside(key)
                    note = f"its record was unreadable ({state.unreadable}): moved aside to {aside.name}"
                # we hold the lock now, so a record that says "running" was left by a killed run
                todo.append(Planned(c, key, state.state in RESUMABLE, note))
            if not todo:
                return store.state(keys[0]).record if len(keys) == 1 else None
            records = execute(todo, store, runtime)
    except (StoreError, OSError) as e:
        store_failed(e, alone)
    except KeyboardInterrupt as e:  # a second signal: stopped at once, the last checkpoint stays
        print(f"stopped: {e or 'interrupted'}; the last checkpoint stays: re-launch", file=sys.stderr)
        sys.exit(130)
    stopped = [r for r in records if r.status is Status.INTERRUPTED]
    if stopped:  # a stop asked by a signal ends the process, a sweep too, as the signal meant
        sys.exit(128 + signal.Signals[cast(str, stopped[0].signal)].value)
    if any(r.status is Status.FAILED for r in records) and alone:
        sys.exit(1)  # a single run (or pack) says so; in a sweep the failure is a recorded result
    return records[0] if len(records) == 1 else {"pack": [r.run_key for r in records]}


def store_failed(error: Union[StoreError, OSError], alone: bool) -> NoReturn:
    """A store that cannot be written: one line and exit 1 for a single run; in a sweep the job
    raises, and the sweeper reports it as lost (it wrote no record) in its summary."""
    message = str(error) if isinstance(error, StoreError) else f"{error.filename}: {cause(error)}"
    if not alone:
        raise StoreError(message) from None
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


@dataclass
class Planned:
    """A run to execute: its config, run key, whether it resumes, and what to say of it first."""

    cfg: RunConfig
    key: str
    resume: bool
    note: Optional[str] = None


def dry_run(cfg: RunConfig) -> dict[str, Any]:
    """The parameter groups and exact counts of this config, from the model's structure alone."""
    from qvtune.model.load import build_on_meta
    from qvtune.model.methods import apply_method, format_group_table, group_table, param_groups

    causal = cfg.task.format == "text"
    model = apply_method(build_on_meta(cfg.model, cfg.task.num_labels, causal), cfg)
    groups = param_groups(model, learning_rates(cfg), cfg.optim.grouping)
    table = group_table(groups, sum(p.numel() for p in model.parameters()))
    targets = parse_targets(cfg.targets)
    rank = f" r={method_options(cfg).rank}" if has_rank(cfg.method.name) else ""
    answers = "text answers" if causal else f"{cfg.task.num_labels} labels"  # a causal LM has no head
    print(f"{cfg.model.name} {cfg.method.name} {targets.upper()}{rank}, {answers}")
    print(format_group_table(table))
    print(f"update_norm/<type>: {METHODS[cfg.method.name].norm}")
    return table


def execute(runs: list[Planned], store: ResultsStore, runtime: Runtime) -> list[RunRecord]:
    """Train one run, or a pack of them, and write each record as its run ends; an exception
    becomes a "failed" record (a pack's fails each of its members still running)."""
    from qvtune.train.loop import checkpoint_step

    records = [RunRecord.start(r.cfg, r.key, runtime.precision) for r in runs]
    if len(runs) > 1:
        for record in records:
            record.packed_with = [r.key for r in runs if r.key != record.run_key]
    trackers: list[Any] = []
    stop = StopSignals()
    with contextlib.ExitStack() as logs:
        steps = []
        for r, record in zip(runs, records):
            logs.enter_context(run_log(store.run_dir(r.key)))
            if r.note:
                log.warning(f"run {r.key}: {r.note}")
            store.write(record)
            steps.append(checkpoint_step(store.run_dir(r.key) / CHECKPOINT_FILE))
            log.info(f"run {r.key} -> {store.run_dir(r.key)}{resuming(r, steps[-1])}")
        if len(runs) > 1:
            log.info(f"training {len(runs)} runs as one pack: {' '.join(r.key for r in runs)}")
        logs.enter_context(stop.installed())
        try:
            from qvtune.track.tracker import open_trackers

            for r in runs:
                trackers.append(open_trackers(r.cfg, r.key, learning_rates(r.cfg), store.run_dir(r.key)))
            # a pack's members start at one step: one part per checkpoint step (one, but for a pack
            # re-formed around members that were interrupted at different steps)
            parts: dict[int, list[int]] = {}
            for i, step in enumerate(steps):
                parts.setdefault(step, []).append(i)
            for chosen in parts.values():
                for ended in fine_tune([runs[i] for i in chosen], store, runtime, trackers, stop):
                    i = chosen[ended.index]
                    ended.fill(records[i])
                    write_outcome(records[i], store)
                    say_ended(runs[i], records[i], store)
        except StoreError:
            raise
        except Exception as e:  # recorded, never raised: one bad run must not stop a sweep
            for r, record in zip(runs, records):
                if record.status is Status.RUNNING:
                    record.fail(e)
                    write_failure(record, store)
                    say_ended(r, record, store)
        finally:
            for record, tracker in zip(records, trackers):
                summary = {"status": record.status.value, "best": record.best, "final": record.final}
                if record.harness:  # lm-evaluation-harness scores: summary/harness/<task>/<metric>
                    summary["harness"] = record.harness.get("tasks", {})
                tracker.finish({**summary, "steps": record.steps}, 0 if record.status in FINE else 1)
    return records


FINE = (Status.COMPLETED, Status.DIVERGED, Status.PAUSED)  # how a tracker's run ends: success


def resuming(run: Planned, step: int) -> str:
    """What the start line says of a run that was started before."""
    if step:
        return f" (resuming from its checkpoint at step {step})"
    return " (starting over: no checkpoint to resume from)" if run.resume or run.note else ""


def write_outcome(record: RunRecord, store: ResultsStore) -> None:
    """Write a run's final record, then drop the checkpoint of a finished run (not before: a record
    that cannot be written leaves the checkpoint to resume from). Where the record cannot be written
    (a full disk), it is turned into a failure that says why and written without its curves where
    that still fits; the StoreError goes on up either way (one line for the user)."""
    try:
        store.write(record)
    except StoreError as e:
        record.fail(e)
        record.traceback = None  # the cause is the store, said in the error: room for the summary
        with contextlib.suppress(StoreError):
            write_failure(record, store)
        raise
    if record.status in FINISHED:
        (store.run_dir(record.run_key) / CHECKPOINT_FILE).unlink(missing_ok=True)


def write_failure(record: RunRecord, store: ResultsStore) -> None:
    """Write a failed record; where the store has no room for it, without its curves (their file,
    useless without the record, is removed to make room)."""
    try:
        store.write(record)
    except StoreError:
        record.curves, record.curves_file = None, None
        (store.run_dir(record.run_key) / CURVES_FILE).unlink(missing_ok=True)
        store.write(record)


def say_ended(run: Planned, record: RunRecord, store: ResultsStore) -> None:
    where = store.run_dir(run.key) / RESULT_FILE
    if record.status is Status.FAILED:
        log.error(f"run {run.key} failed: {record.error} -> {where}")
    elif record.status is Status.INTERRUPTED:
        log.warning(
            f"run {run.key} stopped by {record.signal} at step {record.steps}: checkpoint saved, "
            "re-launch to resume"
        )
    else:
        metric = run.cfg.task.metric
        score = f"{record.final[metric]:.4f}" if metric in record.final else "not evaluated"
        log.info(f"run {run.key} {record.status}: {metric} = {score} -> {where}")


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


class StopSignals:
    """SIGTERM (scancel, a time limit, preemption) and SIGINT (Ctrl-C) ask the training loop to stop
    at the next step boundary, where it checkpoints every running member with the random state of
    that boundary, so a re-launch continues exactly as if nothing had happened. A second signal
    stops at once (the last checkpoint stays). Only the main thread may set handlers."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.asked: Optional[str] = None

    def __call__(self) -> Optional[str]:
        """The signal's name once a stop was asked for (the training loop polls this)."""
        return self.asked

    def handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.asked is not None:
            raise KeyboardInterrupt(f"{name} again: stopping at once")
        self.asked = name
        log.warning(f"{name} received: stopping at the end of this step ({name} again to stop at once)")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@dataclass
class Ended:
    """A run's outcome and what the record needs beside it: its parameter table and timings."""

    index: int  # in the list of runs given to fine_tune
    state: TrainState
    table: dict[str, Any]
    setup: dict[str, float]  # wall_s, setup_s, load_s, data_s
    memory: dict[str, Any]
    device: str
    threads: int
    harness: Optional[dict[str, Any]] = None  # lm-evaluation-harness scores, where asked for

    def fill(self, record: RunRecord) -> None:
        record.finish(self.state, self.table, self.setup, self.memory, self.device, self.threads)
        record.harness = self.harness


def fine_tune(
    runs: list[Planned], store: ResultsStore, runtime: Runtime, trackers: list[Any], stop: StopSignals
) -> Iterator[Ended]:
    """Data -> model -> method and groups -> training loop, for one run or a pack (qvtune.model.runs:
    one path); yields each run's outcome as it ends, so that a member of a pack that diverges is
    recorded then, not at the pack's end."""
    wall = time.perf_counter()  # imports included: the first run of a process pays for them
    import torch

    from qvtune.data.encode import encode_task
    from qvtune.data.load import load_task
    from qvtune.model.load import build_on_meta, load_model, load_tokenizer
    from qvtune.model.methods import TrainData, apply_method, format_group_table
    from qvtune.model.runs import LoneRun, attach
    from qvtune.train.loop import Member, train
    from qvtune.train.runtime import peak_memory_mb, set_threads

    configs = [r.cfg for r in runs]
    cfg = configs[0]  # the members of a pack share everything but PACK_KEYS
    threads = set_threads(cfg)
    device = torch.device(runtime.device)
    causal = cfg.task.format == "text"  # a causal LM writes the answers: no classification head
    for c in configs:
        apply_method(build_on_meta(c.model, c.task.num_labels, causal), c)  # errors before weights load

    tic = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir, causal)
    timings = {"load_s": time.perf_counter() - tic}

    tic = time.perf_counter()
    task = load_task(cfg.task, cfg.data_dir)
    cache = Path(cfg.cache_dir).expanduser()
    train_data, evals = encode_task(tokenizer, task, cfg.task.name, cfg.max_len, cache)
    train_data = train_data.subset(cfg.max_train_samples)
    evals = {name: data.subset(cfg.max_eval_samples) for name, data in evals.items()}
    timings["data_s"] = time.perf_counter() - tic

    # the data comes first: eva initialises from the run's first batches, adalora's schedule needs its
    # steps (load_model seeds the random state: the order does not change what a run draws)
    tic = time.perf_counter()
    base = load_model(cfg.model, cfg.task.num_labels, cfg.seed, cfg.attention_dropout, cfg.cache_dir, causal)
    model, parts = attach(base, configs, TrainData(train_data, tokenizer.pad_token_id))
    model = model.to(device)
    dirs = [store.run_dir(r.key) for r in runs]
    members = [
        Member(p.groups, p.norms, d / CHECKPOINT_FILE, t.log, p.training)
        for p, d, t in zip(parts, dirs, trackers)
    ]
    for p in parts:
        log.info("\n" + format_group_table(p.table))
    timings["load_s"] += time.perf_counter() - tic
    timings["setup_s"] = time.perf_counter() - wall

    outcomes = train(
        model,
        members,
        train_data,
        evals,
        cfg.task,
        cfg,
        pad_id=tokenizer.pad_token_id,
        device=device,
        precision=runtime.precision,
        stop_asked=stop,
        tokenizer=tokenizer,
    )
    for outcome in outcomes:
        state = outcome.state
        if state.status in FINISHED and cfg.output_dir and isinstance(model, LoneRun):  # never a pack
            model.save(Path(cfg.output_dir).expanduser() / dirs[outcome.index].name)
        harness = None  # lm-evaluation-harness on the tuned model (validate(): a lone text run)
        if cfg.harness.tasks and state.status is Status.COMPLETED and isinstance(model, LoneRun):
            from qvtune.train.harness import evaluate_harness

            harness = evaluate_harness(model.model, tokenizer, cfg.harness, runtime.precision)
        setup = {"wall_s": time.perf_counter() - wall, **timings}
        yield Ended(
            outcome.index,
            state,
            parts[outcome.index].table,
            setup,
            peak_memory_mb(device.type),
            str(device),
            threads,
            harness,
        )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
