"""The run record: what a run was, how it went and what it scored.

This module imports nothing heavy: the collector and `plan=true` read records on a laptop far from
the GPUs. `RunRecord` is the one place that builds, writes, reads and validates a record; its
fields are documented there. A run's folder holds

    result.json    the record without its per-step curves (schema 2): small, so that the collector
                   and the sweeper read thousands of them quickly
    curves.json    a finished run's curves ({"run_key", "train_loss", "update_norms", "lr_trace", and
                   the names of their columns "norm_types", "lr_groups"}), written before the
                   result.json that names it in `curves_file`
    run.log        the run's log;  checkpoint.pt  its latest checkpoint while it works;  .lock

Records of schema 1 (the curves inline in result.json) are read everywhere, their curves included.
"""

from __future__ import annotations

import json
import socket
import traceback
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast, get_args, get_origin, get_type_hints

from omegaconf import OmegaConf

from qvtune import __version__
from qvtune.common.files import atomic_write
from qvtune.config.rates import learning_rates
from qvtune.config.schema import RunConfig
from qvtune.config.weight_types import QKV
from qvtune.status import Status

if TYPE_CHECKING:
    from qvtune.train.loop import TrainState


SCHEMA_VERSION = 2

RESULT_FILE = "result.json"

CURVES_FILE = "curves.json"

CHECKPOINT_FILE = "checkpoint.pt"

LOCK_FILE = ".lock"


class InvalidRecord(ValueError):
    """JSON that is not a run record this qvtune can use; the message names what is wrong."""


def _now() -> str:
    """UTC, to the second: records from machines in other time zones sort and compare."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: Any, indent: Optional[int]) -> None:
    """JSON, atomically; NaN and inf stay what they are (a diverged run's loss)."""
    text = json.dumps(obj, indent=indent, sort_keys=True, allow_nan=True)
    atomic_write(path, lambda f: f.write(text.encode()))


@dataclass
class Curves:
    """A run's per-step curves, one row per optimizer step."""

    train_loss: list[list[float]] = field(default_factory=list)  # [[step, loss], ...]
    # [[step, |dW_q|, |dW_k|, |dW_v|, ...], ...]: Frobenius norms of the accumulated updates (for
    # LoRA/DoRA of the adapters' product), one column per weight type of `norm_types`
    update_norms: list[list[float]] = field(default_factory=list)
    # [[step, lr_qk, lr_v, ..., lr_head], ...]: the learning rates the optimizer applied, one column
    # per group of `lr_groups` (None for a group with no trainable tensor)
    lr_trace: list[list[Optional[float]]] = field(default_factory=list)
    # the columns' names; curves written before they were named have the paper's
    norm_types: list[str] = field(default_factory=lambda: list(QKV))  # q, k, v, then o, gate, up, down
    lr_groups: list[str] = field(default_factory=lambda: ["qk", "v", "head"])  # qk, v, [o, mlp, *.B], head

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Curves:
        """The curves in a curves.json (or inline in a schema 1 record); absent ones are empty, absent
        column names the paper's."""
        values = {f.name: data.get(f.name) or cast(Any, f.default_factory)() for f in fields(cls)}
        bad = [name for name, value in values.items() if not isinstance(value, list)]
        if bad:
            raise InvalidRecord(f"{bad[0]}: expected a list of [step, value, ...] rows")
        return cls(**values)


@dataclass
class RunRecord:
    """One run: what it was, how it went, what it scored. result.json holds every field but `curves`.

    A run writes its record when it starts (status running) and when it ends (RunRecord.start,
    .finish or .fail). Every field but `status` has a default, so that records written by earlier
    versions (without tokens, precision, device, ...) load; `from_dict` checks the types of the rest.
    """

    status: Status  # running while it works, then completed | diverged | paused | interrupted | failed
    run_key: str = ""  # 12 hex digits: qvtune.store.identity.run_key of the config and the precision used
    # the resolved RunConfig: model.name, task.name, method.name, targets as given, rank, lr, lam, ...
    config: dict[str, Any] = field(default_factory=dict)
    # {"qk": eta_QK, "v": eta_V, "head": the head's rate, "lam": lambda}, and every other group's rate
    # where the run has it (qvtune.config.rates.LearningRates.groups: "o", "mlp", LoRA+'s "qk.B", ...)
    rates: dict[str, float] = field(default_factory=dict)
    metric: str = ""  # the task's headline metric: accuracy, f1, matthews, pearson, spearman
    precision: Optional[str] = None  # the precision used: fp32, bf16 or fp16 (see qvtune.store.identity)
    error: Optional[str] = None  # why it failed ("Type: message") or diverged
    signal: Optional[str] = None  # the signal that interrupted it (SIGTERM, SIGINT): it resumes
    traceback: Optional[str] = None  # a failure's traceback
    # the optimizer groups: {"total": int, "trainable": int, "groups": [{"group", "lr", "tensors", "params"}]}
    params: Optional[dict[str, Any]] = None
    # the dev evaluations in order: [{"step": int, "epoch": float, "metrics": {name: value}}, ...]
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)  # {metric: value} at the last evaluation
    best: dict[str, float] = field(default_factory=dict)  # ... at the one with the best headline metric
    # lm-evaluation-harness on the tuned model (harness.tasks; qvtune.train.harness.evaluate_harness):
    # {"lm_eval": version, "limit", "num_fewshot", "seconds", "tasks": {name: {"acc": .., "acc_stderr": ..,
    # "samples": n}}}, or in place of "tasks" an "error" line where it could not run; None: not asked
    harness: Optional[dict[str, Any]] = None
    steps: int = 0  # optimizer steps taken
    planned_steps: Optional[int] = None  # optimizer steps of the whole run (a paused run took fewer)
    samples: int = 0  # training samples seen
    tokens: Optional[int] = None  # training tokens seen, padding excluded
    # seconds: wall_s from the run's start (its imports included) to its end; setup_s the part before
    # training (imports, model, data: a process's first run pays the imports), of it load_s (model)
    # and data_s (tokenization); train_s, eval_s; and samples_per_s, tokens_per_s of the training
    timing: dict[str, Optional[float]] = field(default_factory=dict)
    peak_rss_mb: Optional[float] = None  # peak resident memory of the process
    peak_gpu_mb: Optional[float] = None  # peak allocated GPU memory; None on a CPU
    device: Optional[str] = None  # where it trained: cpu, cuda, cuda:1
    threads: Optional[int] = None  # torch's CPU threads
    sweep: Optional[str] = None  # the sweep's name (sweep_name), or None for a single run
    # the run keys of the other members of the pack it trained in (qvtune.model.pack); None: trained alone
    packed_with: Optional[list[str]] = None
    host: str = ""  # the machine it ran on
    started_at: str = ""  # ISO 8601, UTC: when this attempt started (a resumed run restarts it)
    finished_at: Optional[str] = None
    qvtune_version: str = ""
    curves_file: Optional[str] = None  # "curves.json" once the curves are written beside result.json
    schema: int = SCHEMA_VERSION  # 2; 1 for a record of an earlier version, with its curves inline
    # the per-step curves: never in result.json; read with RunRecord.read(path, curves=True)
    curves: Optional[Curves] = None

    @classmethod
    def start(cls, cfg: RunConfig, key: str, precision: str) -> RunRecord:
        """The record of a run that is starting: its config, learning rates and where it runs."""
        rates = learning_rates(cfg)
        return cls(
            status=Status.RUNNING,
            run_key=key,
            config=cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)),
            rates={**rates.groups, "qk": rates.qk, "v": rates.v, "head": rates.head, "lam": rates.lam},
            metric=cfg.task.metric,
            precision=precision,
            sweep=cfg.sweep_name,
            host=socket.gethostname(),
            started_at=_now(),
            qvtune_version=__version__,
        )

    def finish(
        self,
        state: TrainState,
        params: dict[str, Any],
        setup: dict[str, float],
        memory: dict[str, Any],
        device: str,
        threads: int,
    ) -> None:
        """What training produced: `state` the training loop's, `setup` the timings measured before
        it and wall_s (see `timing`), `memory` qvtune.train.runtime.peak_memory_mb."""
        history = state.history
        self.status, self.error, self.signal = Status(state.status), state.error, state.signal
        self.params, self.history = params, history
        # an interrupted run may stop before its first evaluation: no final metrics yet
        self.final = history[-1]["metrics"] if history else {}
        self.best = max(history, key=lambda h: h["metrics"][self.metric])["metrics"] if history else {}
        self.steps, self.samples, self.tokens = state.step, state.samples, state.tokens
        self.planned_steps = state.total_steps
        self.curves = Curves(
            state.train_loss, state.update_norms, state.lr_trace, state.norm_types, state.lr_groups
        )
        train_s = state.train_s
        self.timing = {
            **setup,
            "train_s": train_s,
            "eval_s": state.eval_s,
            "samples_per_s": state.samples / train_s if train_s else None,
            "tokens_per_s": state.tokens / train_s if train_s else None,
        }
        self.peak_rss_mb, self.peak_gpu_mb = memory["peak_rss_mb"], memory["peak_gpu_mb"]
        self.device, self.threads = device, threads
        self.finished_at = _now()

    def fail(self, error: BaseException) -> None:
        """An exception ends the run: recorded with its traceback, never raised (a sweep goes on)."""
        self.status = Status.FAILED
        self.error = f"{type(error).__name__}: {error}"
        self.traceback = "".join(traceback.format_exception(error))
        self.finished_at = _now()

    @classmethod
    def from_dict(cls, data: Any, curves: bool = False) -> RunRecord:
        """The record in result.json's content; raises InvalidRecord. With `curves`, a schema 1
        record's inline curves are kept (a schema 2 record's are in its curves file: see `read`)."""
        if not isinstance(data, dict):
            raise InvalidRecord("not a JSON object")
        schema = data.get("schema", 1)
        if schema not in (1, SCHEMA_VERSION):
            raise InvalidRecord(f"schema {schema!r}: this qvtune reads schemas 1 and {SCHEMA_VERSION}")
        try:
            status = Status(data.get("status"))
            if status is Status.PENDING:
                raise ValueError
        except ValueError:
            raise InvalidRecord(
                f"unknown status {data.get('status')!r}; expected one of "
                f"{', '.join(s for s in Status if s is not Status.PENDING)}"
            ) from None
        values: dict[str, Any] = {}
        for name, kinds in _KINDS.items():
            if name in data:
                value = data[name]
                if not isinstance(value, kinds):
                    raise InvalidRecord(
                        f"{name}: {type(value).__name__} where "
                        f"{' or '.join(k.__name__ for k in kinds)} was expected"
                    )
                values[name] = value
        record = cls(status=status, **values)
        if curves and schema == 1:
            record.curves = Curves.from_dict(data)
        return record

    def to_dict(self) -> dict[str, Any]:
        """result.json's content: every field but the curves."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "curves"}
        out.update(status=self.status.value, schema=SCHEMA_VERSION)
        return out

    @classmethod
    def read(cls, path: Path, curves: bool = False) -> RunRecord:
        """The record in a result.json, with `curves` its curves too (curves.json, or inline in schema 1).
        Raises OSError, json.JSONDecodeError / UnicodeDecodeError (unreadable) or InvalidRecord."""
        path = Path(path)
        record = cls.from_dict(json.loads(path.read_bytes()), curves)
        if curves and record.curves_file:
            data = json.loads((path.parent / record.curves_file).read_bytes())
            if not isinstance(data, dict) or data.get("run_key") != record.run_key:
                raise InvalidRecord(f"{record.curves_file}: not the curves of run {record.run_key}")
            record.curves = Curves.from_dict(data)
        return record

    def write(self, folder: Path) -> None:
        """Write the record into its run folder: its curves (when it has them) first, then the
        result.json naming them, so that a result.json never names curves that are not complete."""
        if self.curves is not None:
            curves = {"run_key": self.run_key, **asdict(self.curves)}
            _write_json(Path(folder) / CURVES_FILE, curves, indent=None)
            self.curves_file = CURVES_FILE
        _write_json(Path(folder) / RESULT_FILE, self.to_dict(), indent=1)


def _kinds(annotation: Any) -> tuple[type, ...]:
    """The JSON types a field's annotation admits: Optional[X] adds None, an int is a float too."""
    if get_origin(annotation) is Union:
        return tuple(k for arg in get_args(annotation) for k in _kinds(arg))
    kind = get_origin(annotation) or annotation
    return (int, float) if kind is float else (kind,)


_HINTS = get_type_hints(RunRecord)

# field -> the JSON types it accepts, from RunRecord's annotations (status and curves are parsed apart)
_KINDS = {f.name: _kinds(_HINTS[f.name]) for f in fields(RunRecord) if f.name not in ("status", "curves")}
