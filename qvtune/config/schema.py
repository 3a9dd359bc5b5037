"""The typed schema Hydra composes every run's config into, and the values each setting accepts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, cast

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from qvtune.config.methods import METHODS as METHOD_REGISTRY
from qvtune.config.methods import shorthand
from qvtune.config.weight_types import canonical_targets, target_names

METHODS = tuple(METHOD_REGISTRY)  # full, lora, dora, rslora, pissa, olora, eva, adalora, ia3, galore

METHODS_WITH_RANK = tuple(name for name, m in METHOD_REGISTRY.items() if m.has_rank)  # all but full, ia3

METRICS = ("accuracy", "f1", "matthews", "pearson", "spearman", "exact_match", "rank_accuracy")

# head: a sequence-classification head on the model; text: a causal LM writes the answer as text.
FORMATS = ("head", "text")

# The metrics of a text task's generated answers (the rest, for a task with label words, are computed
# on the label that ranks first, and pearson/spearman on the number generated).
TEXT_METRICS = ("exact_match", "rank_accuracy")

# How a text answer is compared for exact_match, after task.answer_marker's cut (qvtune.data.text):
# text: lowercased, outer punctuation and repeated spaces gone; number: the first number, commas and a
# zero fraction gone; none: outer whitespace only.
NORMALIZERS = ("text", "number", "none")

DATA_FILES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}  # -> datasets' builder

PRECISIONS = ("auto", "fp32", "fp16", "bf16")

PADDINGS = ("dynamic", "max")

SCHEDULERS = ("linear", "constant")

# by_module: each tensor goes to the group of the module that owns it (W_q/W_k -> qk, W_v -> v, head).
# paper: the paper scripts' rule, for bit-for-bit reproduction (see qvtune.model.methods.paper_group).
GROUPINGS = ("by_module", "paper")

WANDB_MODES = ("offline", "online", "disabled")

WandbMode = Literal["offline", "online", "disabled"]  # WANDB_MODES, as a type

# Where a run logs its config, rates, losses, norms and dev metrics (qvtune.track), any of them at once.
TRACKERS = ("wandb", "tensorboard", "mlflow", "csv")


@dataclass
class ModelConfig:
    """Where the weights come from and the architecture they have."""

    name: str = MISSING  # the short label used in records and tables
    # A hub id, a local folder, or "package:<python package>" (a model shipped inside a pip package).
    # None builds `arch` with random weights (the tiny test models).
    source: Optional[str] = None
    # A GGUF file's path inside `source` (e.g. a quantised model shipped in a pip package): its weights
    # are dequantised once into <cache_dir>/models/ and loaded from there (qvtune.model.load).
    gguf_file: Optional[str] = None
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
    """qvtune's own offline task: does the query word occur in the list? (see qvtune.data.tasks)."""

    train_size: int = 3000
    eval_size: int = 500
    list_len: int = 4
    data_seed: int = 1234


@dataclass
class KvRecallSpec:
    """qvtune's offline text task: n key-value word pairs, then a key; the answer is its value."""

    pairs: int = 4
    train_size: int = 3000
    eval_size: int = 500
    data_seed: int = 1234


@dataclass
class ArithmeticSpec:
    """qvtune's offline text task: a + b with `digits`-digit operands; the answer is the sum."""

    digits: int = 2
    train_size: int = 3000
    eval_size: int = 500
    data_seed: int = 1234


@dataclass
class TaskConfig:
    """A sequence (pair) classification or regression task and the paper's metric for it, or (format
    text) a task a causal LM answers in words: its prompt, answer and how answers are compared."""

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
    # --- format=text (qvtune.data.text); a classifier (format=head) ignores all of these
    format: str = "head"  # FORMATS
    # The prompt over the task's text_fields, e.g. "Review: {sentence}\nSentiment:"
    prompt: Optional[str] = None
    # The answer of each label id (a labelled task); STS-B's is its score written as a number
    label_words: Optional[list[str]] = None
    chat_template: bool = True  # wrap the prompt in the tokenizer's chat template, where it has one
    max_new_tokens: int = 16  # greedy decoding's length limit for exact_match
    answer_marker: Optional[str] = None  # compare only the text after its last occurrence (GSM8K: ####)
    normalize: str = "text"  # NORMALIZERS
    response_field: Optional[str] = None  # the answer's column, for tasks with free-form answers
    # a local JSON/JSONL/CSV/Parquet file or a hub data set id (task=custom); eval_source: its dev file
    source: Optional[str] = None
    eval_source: Optional[str] = None
    holdout: float = 0.1  # the fraction held out as dev data where the data has no dev split
    kv_recall: Optional[KvRecallSpec] = None
    arithmetic: Optional[ArithmeticSpec] = None


@dataclass
class MethodConfig:
    """A method (METHODS) and its options. Each method's options, their defaults and checks are its
    dataclass in qvtune.config.methods; this node holds the options of every method (a test keeps them
    the same), null where the chosen method has no such option."""

    name: str = MISSING
    rank: Optional[int] = None  # the top-level `rank` is a shorthand for it (and alpha, dropout)
    alpha: Optional[float] = None
    dropout: Optional[float] = None
    rho: Optional[float] = None  # eva
    batches: Optional[int] = None  # eva
    init_r: Optional[int] = None  # adalora
    tinit: Optional[float] = None  # adalora
    tfinal: Optional[float] = None  # adalora
    deltaT: Optional[int] = None  # adalora
    orth_reg_weight: Optional[float] = None  # adalora
    update_proj_gap: Optional[int] = None  # galore
    scale: Optional[float] = None  # galore
    proj_type: Optional[str] = None  # galore


@dataclass
class OptimConfig:
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.0
    scheduler: str = "linear"  # linear | constant; every group is scaled by the same factor
    warmup_ratio: float = 0.0
    max_grad_norm: Optional[float] = None  # clip the gradient norm of all trainable tensors (null: never)
    grouping: str = "by_module"  # how trainable tensors are put into the qk / v / head groups: GROUPINGS
    # LoRA+ (Hayou et al. 2024): every LoRA/DoRA B matrix trains at this multiple of its group's rate
    # (so W_v's B at loraplus_ratio x lam x lr), in groups of their own ("qk.B", "v.B"); null or 1: off
    loraplus_ratio: Optional[float] = None


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
class MlflowConfig:
    # null: the MLFLOW_TRACKING_URI environment variable where it is set, else MLflow's own local
    # kind of store beside the results: sqlite:///<results_dir>/mlflow.db
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None  # defaults to the sweep name; a lone run's is "qvtune"


@dataclass
class HarnessConfig:
    """EleutherAI's lm-evaluation-harness on the tuned causal LM once training ends (qvtune.train.harness);
    `pip install 'qvtune[harness]'`. Its scores go to the record's `harness` section."""

    tasks: list[str] = field(default_factory=list)  # lm-eval task, group or tag names; empty: no harness
    limit: Optional[float] = None  # documents per task: a count >= 1 or a fraction < 1; null: all
    num_fewshot: Optional[int] = None  # examples in each prompt; null: each task's own default
    batch_size: int = 8  # documents per forward pass: speed and memory only
    include: list[str] = field(default_factory=list)  # folders of users' own task YAML files


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    method: MethodConfig = MISSING
    recipe: str = "fast"  # the recipe group that set the training details (conf/recipe/)
    # the weight types tuned (qvtune.config.weight_types): "qv", "vq", "QKV", [q, v], [q, v, o],
    # [q, k, v, o, mlp] (mlp: every MLP matrix the family has), all
    targets: Any = "qv"
    # the layers tuned: null (all), a list of indices [0, 5], first:N or last:N
    layers: Any = None
    # Shorthands for method.rank, method.alpha, method.dropout (null: the method file's value, 8, = rank
    # (the paper's alpha = r) and 0 for LoRA); a run writes the values it used into both
    rank: Optional[int] = None
    alpha: Optional[float] = None
    dropout: Optional[float] = None
    # Dropout on the attention probabilities. 0 lets attention run as one fused kernel, which on CPU
    # trains about 1.4x faster in ~40 % less memory (scripts/bench.py); null keeps the model's own
    # (0.1 for BERT/RoBERTa: the paper's recipe).
    attention_dropout: Optional[float] = 0.0
    lr: float = 1e-4  # eta_QK
    lam: Optional[float] = None  # lambda = eta_V / eta_QK; 1 unless lr_v is given
    lr_v: Optional[float] = None  # eta_V, an alternative to lam
    head_lr: Optional[float] = None  # the classification head; defaults to lr
    # eta_O / eta_QK and eta_MLP / eta_QK: the rates of W_o and of the MLP matrices (gate, up, down)
    # as multiples of lr, like lam for W_v (qvtune.config.rates.GROUP_RATIOS)
    lam_o: float = 1.0
    lam_mlp: float = 1.0
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
    # on one frozen base in one forward pass (qvtune.model.pack); each is its own run. The sweeper's
    # `hydra.sweeper.pack=K` forms packs itself. Empty: one run, this config.
    pack: list[dict[str, Any]] = field(default_factory=list)
    trackers: list[str] = field(default_factory=lambda: ["wandb"])  # any of TRACKERS
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)


def register_configs() -> None:
    """Register the schema so Hydra type-checks every key of the composed config, and the resolver the
    method files read the top-level shorthands with (qvtune.config.methods)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    OmegaConf.register_new_resolver("shorthand", shorthand, replace=True)


def config_dir() -> Path:
    """The `conf/` folder: inside the package when installed from a wheel, beside it in a checkout."""
    here = Path(__file__).resolve().parents[1]  # the qvtune package
    installed = here / "conf"
    return installed if installed.is_dir() else here.parent / "conf"


def parse_targets(value: Any) -> str:
    """Canonical weight-type subset: "vq", "QV", [q, v] -> "qv"; [o, v, q] -> "qvo"; all -> "qkvo+mlp"
    (qvtune.config.weight_types). Raises ValueError on anything else."""
    return canonical_targets(target_names(value))


_LAYER_RANGE = re.compile(r"(first|last):(\d+)")


def parse_layers(value: Any) -> Optional[Union[list[int], str]]:
    """Canonical layer subset: None (all), sorted indices ([0, 1] for first:2 too), or "last:N" (its
    indices need the model's depth). Raises ValueError naming the value on anything else."""
    if value is None:
        return None
    if isinstance(value, str) and (match := _LAYER_RANGE.fullmatch(value.strip().lower())):
        n = int(match.group(2))
        if n >= 1:
            return list(range(n)) if match.group(1) == "first" else f"last:{n}"
    elif isinstance(value, (list, tuple, ListConfig)) and value:
        if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
            if len(set(value)) == len(value):
                return sorted(int(i) for i in value)
    raise ValueError(
        f"layers={value!r}: expected null (every layer), a list of distinct layer indices such as [0,1], "
        "first:N or last:N with N >= 1"
    )


def has_rank(method: Optional[str]) -> bool:
    """Whether the method has a rank (qvtune.config.methods); None (no method, e.g. the 'Before
    fine-tune' row) has none."""
    return method in METHODS_WITH_RANK


def is_data_file(source: str) -> bool:
    """A local data file (by its extension, one of DATA_FILES) rather than a hub data set id."""
    return Path(source).suffix.lower() in DATA_FILES


def wandb_mode(cfg: RunConfig) -> WandbMode:
    """`wandb.mode` when given, else the WANDB_MODE environment variable (W&B's own), else offline.
    `validate` rejects a value outside WANDB_MODES."""
    return cast(WandbMode, cfg.wandb.mode or os.environ.get("WANDB_MODE") or "offline")


def plain(value: Any) -> Any:
    """A config value as plain Python, interpolations resolved (the hydra node is never touched)."""
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    )
