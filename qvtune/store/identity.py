"""A run's identity: which settings decide its result, and the run key hashed from them.

Every field of the schema (qvtune.config.RunConfig) is classified in IDENTITY, in one place, by its
dotted path; nested configs (model, task, optim, task.synthetic, ...) are listed leaf by leaf, and an
Optional one (task.tsv, task.synthetic) also has a row of its own, for when it is None. A field is
UNKEYED when it does not change what the run records (paths, logging, launcher and bookkeeping
settings, speed-only options with the same result); a keyed field carries its *baseline*: the value
it had when it joined the identity, written here literally, or REQUIRED where there is none. A test
fails when a field is left unclassified.

The run key hashes only the keyed settings whose (normalised) value differs from their baseline
(REQUIRED ones always). So a new option joins with its default as its baseline, and every run that
leaves it at that default keeps the key it had before the option existed: finished runs stay found.
A re-launched grid maps every run to the same key wherever its files live, so finished runs are
skipped and interrupted ones resume. Never change a baseline, not even when a schema default
changes: a run with another value is another run and must get another key, and a changed baseline
would move every run that keeps the old value (or the new one) to a key nobody asked for before.

The values are normalised first, so that one run has one identity whatever its spelling: targets
canonical ("qv"), layers canonical ([0, 1]); lr, lam, lam_o, lam_mlp and the LoRA+ ratio rounded
(qvtune.config.rates.rounded), lr_v folded into lam, a LoRA+ ratio of 1 (off) None; head_lr None
where it equals lr; the method's options as it uses them (qvtune.config.methods.method_options:
`rank=16` and `method.rank=16` are one run), rank, alpha and dropout under those top-level names
with alpha None where it equals rank (its default), every option left out where the method has no
such option (a full fine-tune has no rank); model.arch left out where model.source names the
weights; a classifier's text-only task settings (TEXT_ONLY) left out.

The precision is keyed as the one actually used (fp32 on CPU; bf16 or fp16 autocast on a GPU), not
as requested: `precision=auto` on a CPU and on a GPU are two different runs. Nothing heavy is
imported here: the sweeper and the collector use it far from the GPUs.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from qvtune.config.methods import SHORTHANDS, method_options
from qvtune.config.rates import GROUP_RATIOS, learning_rates, rounded
from qvtune.config.schema import RunConfig, parse_layers, parse_targets, plain
from qvtune.train.runtime import PRECISIONS_USED


class Mark(enum.Enum):
    """What a row of IDENTITY holds instead of a baseline."""

    UNKEYED = "unkeyed"  # not in the key: the record does not depend on it
    REQUIRED = "required"  # in the key whatever its value: it has no default a run could leave


UNKEYED = Mark.UNKEYED
REQUIRED = Mark.REQUIRED

# Dotted schema paths -> the baseline of a keyed field (see the module docstring), or UNKEYED.
# Add a new field with its default as its baseline; never edit a baseline.
IDENTITY: dict[str, Any] = {
    # what is trained, on what, how
    "model.name": UNKEYED,  # a label; the weights are named by source (or arch) and dtype
    "model.source": REQUIRED,
    "model.gguf_file": None,  # which file of the source holds the weights
    "model.arch": {},  # only when there is no source: the random-init models are their arch
    "model.tokenizer": None,
    "model.dtype": "float32",
    "model.gradient_checkpointing": UNKEYED,  # recomputes activations: the same gradients
    "task.name": REQUIRED,
    "task.num_labels": 2,
    "task.metric": "accuracy",
    "task.extra_metrics": [],
    "task.text_fields": [],
    "task.label_names": None,
    "task.hub_path": "nyu-mll/glue",
    "task.hub_name": None,
    "task.train_split": "train",
    "task.eval_splits": ["validation"],
    "task.tsv": None,  # {} where the task has a TSV layout: its fields are the rows below
    "task.tsv.folder": REQUIRED,
    "task.tsv.header": True,
    "task.tsv.columns": None,
    "task.tsv.text_columns": [],
    "task.tsv.label_column": REQUIRED,
    "task.tsv.train_file": "train.tsv",
    "task.tsv.eval_files": ["dev.tsv"],
    "task.synthetic": None,  # {} for the synthetic task: its fields are the rows below
    "task.synthetic.train_size": 3000,
    "task.synthetic.eval_size": 500,
    "task.synthetic.list_len": 4,
    "task.synthetic.data_seed": 1234,
    "task.train_size": UNKEYED,  # a cost hint for plan=true
    "task.paper_epochs": UNKEYED,  # sweep files read it into `epochs`, which is keyed
    "task.format": "head",
    "task.prompt": None,  # TEXT_ONLY: left out of a classifier's identity
    "task.label_words": None,  # TEXT_ONLY
    "task.chat_template": True,  # TEXT_ONLY
    "task.max_new_tokens": 16,  # TEXT_ONLY
    "task.answer_marker": None,  # TEXT_ONLY
    "task.normalize": "text",  # TEXT_ONLY
    "task.response_field": None,
    "task.source": None,
    "task.eval_source": None,
    "task.holdout": 0.1,
    "task.kv_recall": None,  # {} for the kv-recall task: its fields are the rows below
    "task.kv_recall.pairs": 4,
    "task.kv_recall.train_size": 3000,
    "task.kv_recall.eval_size": 500,
    "task.kv_recall.data_seed": 1234,
    "task.arithmetic": None,  # {} for the arithmetic task: its fields are the rows below
    "task.arithmetic.digits": 2,
    "task.arithmetic.train_size": 3000,
    "task.arithmetic.eval_size": 500,
    "task.arithmetic.data_seed": 1234,
    "method.name": REQUIRED,
    # The method's options (qvtune.config.methods), each keyed only where the chosen method has it.
    # rank, alpha and dropout are keyed under their top-level rows, whichever spelling set them.
    "method.rank": None,  # folded into rank, never keyed by itself
    "method.alpha": None,  # folded into alpha
    "method.dropout": None,  # folded into dropout
    "method.rho": 2.0,  # eva
    "method.batches": 4,  # eva
    "method.init_r": None,  # adalora: None is 1.5 x rank
    "method.tinit": 0.1,  # adalora
    "method.tfinal": 0.5,  # adalora
    "method.deltaT": 1,  # adalora
    "method.orth_reg_weight": 0.5,  # adalora
    "method.update_proj_gap": 500,  # galore
    "method.scale": 4.0,  # galore
    "method.proj_type": "std",  # galore
    "recipe": UNKEYED,  # a name for a set of settings; the settings themselves are keyed
    "targets": "qv",
    "layers": None,  # every layer; canonical (parse_layers): first:2 is [0, 1]
    "rank": 8,  # the method's, as method.rank or the top-level shorthand
    "alpha": None,  # None where it equals rank
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "lr": 1e-4,
    "lam": 1.0,  # with lr_v folded in: lr_v / lr
    "lr_v": None,  # folded into lam, never keyed by itself
    "head_lr": None,  # None where it equals lr
    "lam_o": 1.0,  # eta_O / eta_QK, rounded
    "lam_mlp": 1.0,  # eta_MLP / eta_QK, rounded
    "epochs": 3.0,
    "max_steps": None,
    "until": UNKEYED,  # a rung of a search is a prefix of the same run: it pauses and resumes
    "batch_size": 32,
    "grad_accum": 1,
    "eval_batch_size": UNKEYED,  # evaluation in other batch sizes gives the same predictions
    "max_batch_tokens": UNKEYED,  # the same gradient in several passes (tests/test_data.py)
    "max_len": 128,
    "padding": "dynamic",
    "group_by_length": True,
    "seed": 0,
    "precision": REQUIRED,  # as used (see resolve_precision): there is no default to leave
    "max_train_samples": None,
    "max_eval_samples": None,
    "eval_every": 0,  # the record's dev history
    "eval_at_start": False,  # the record's dev history
    "diverge_factor": 10.0,
    "optim.betas": [0.9, 0.99],
    "optim.eps": 1e-8,
    "optim.weight_decay": 0.0,
    "optim.scheduler": "linear",
    "optim.warmup_ratio": 0.0,
    "optim.max_grad_norm": None,
    "optim.grouping": "by_module",
    "optim.loraplus_ratio": None,  # None where LoRA+ is off (null or 1), rounded
    # where files go, how it is watched, where it runs
    "data_dir": UNKEYED,
    "results_dir": UNKEYED,
    "cache_dir": UNKEYED,
    "output_dir": UNKEYED,
    "checkpoint_minutes": UNKEYED,
    "threads": UNKEYED,
    "device": UNKEYED,  # enters through the precision it implies
    "sweep_name": UNKEYED,
    "dry_run": UNKEYED,
    "plan": UNKEYED,
    "pack": UNKEYED,  # how runs are grouped to train; each member is keyed as its own run
    "trackers": UNKEYED,
    "wandb.mode": UNKEYED,
    "wandb.project": UNKEYED,
    "wandb.entity": UNKEYED,
    "wandb.group": UNKEYED,
    "wandb.dir": UNKEYED,
    "mlflow.tracking_uri": UNKEYED,
    "mlflow.experiment": UNKEYED,
    # lm-evaluation-harness after training: its scores are part of the record
    "harness.tasks": [],
    "harness.limit": None,
    "harness.num_fewshot": None,
    "harness.batch_size": UNKEYED,  # like eval_batch_size: the same scores in other batch sizes
    "harness.include": UNKEYED,  # where task files live, like data_dir; the tasks are named in harness.tasks
}

# How a text task prompts and compares answers: a GLUE task's file carries them for format=text, and a
# classifier (format=head) does not use them, so its key leaves them out.
TEXT_ONLY = (
    "task.prompt",
    "task.label_words",
    "task.chat_template",
    "task.max_new_tokens",
    "task.answer_marker",
    "task.normalize",
)

# Hydra's config groups: a run is named by them (the collector gives each a column), so the top
# level of `keyed_fields` lists the settings beside them, not the groups themselves.
GROUPS = ("model", "task", "method")


_ABSENT = object()  # the value of a field inside an Optional nested config that is None: not keyed


def keyed_fields(group: str = "") -> list[str]:
    """The names directly below `group` ("" for the top level) under which IDENTITY keys something,
    in its order: a keyed field, or a nested config (optim, tsv) with one."""
    prefix = f"{group}." if group else ""
    names: list[str] = []
    for path, baseline in IDENTITY.items():
        if baseline is UNKEYED or not path.startswith(prefix):
            continue
        name = path[len(prefix) :].split(".", 1)[0]
        if name not in names and (group or name not in GROUPS):
            names.append(name)
    return names


def _read(cfg: Any, path: str) -> Any:
    """The value at a dotted path; _ABSENT below an Optional nested config that is None."""
    node = cfg
    for name in path.split("."):
        if node is None:
            return _ABSENT
        node = getattr(node, name)
    return node


def run_identity(cfg: RunConfig, precision: str, table: Mapping[str, Any] = IDENTITY) -> dict[str, Any]:
    """Every keyed setting of the run by its dotted path, normalised as the module docstring says;
    `table` classifies the fields (IDENTITY, or a test's schema that grew a field)."""
    if precision not in PRECISIONS_USED:
        raise ValueError(
            f"precision={precision!r}: expected the precision used, one of {', '.join(PRECISIONS_USED)}"
        )
    nested = {path.rsplit(".", 1)[0] for path in table if "." in path}
    ident: dict[str, Any] = {}
    for path, baseline in table.items():
        value = _ABSENT if baseline is UNKEYED else _read(cfg, path)
        if value is not _ABSENT:
            # a nested config that is there is {}: its fields are keyed by their own rows
            ident[path] = {} if path in nested and value is not None else plain(value)
    ident["targets"] = parse_targets(ident["targets"])
    ident["layers"] = parse_layers(ident["layers"])
    for key in GROUP_RATIOS.values():
        ident[key] = rounded(float(ident[key]))
    ratio = ident["optim.loraplus_ratio"]
    ident["optim.loraplus_ratio"] = None if ratio is None or ratio == 1 else rounded(float(ratio))
    rates = learning_rates(cfg)
    lr, head = rounded(rates.qk), rounded(rates.head)
    ident.update(lr=lr, lam=rounded(rates.lam), head_lr=None if head == lr else head, precision=precision)
    del ident["lr_v"]
    options = dataclasses.asdict(method_options(cfg))
    for path in [p for p in ident if p.startswith("method.") and p != "method.name"]:
        name = path.removeprefix("method.")
        if name in options and name not in SHORTHANDS:
            ident[path] = options[name]
        else:
            del ident[path]  # an option the method does not have, or one keyed at the top level
    for name in SHORTHANDS:
        if name in options:
            ident[name] = options[name]
        else:
            del ident[name]
    if "alpha" in ident and ident["alpha"] == ident["rank"]:
        ident["alpha"] = None
    if cfg.model.source is not None:
        del ident["model.arch"]  # loaded from the source; arch only describes it
    if cfg.task.format != "text":
        for path in TEXT_ONLY:
            ident.pop(path, None)
    return ident


def run_key(cfg: RunConfig, precision: str, table: Mapping[str, Any] = IDENTITY) -> str:
    """The name of the run's folder in the results store: 12 hex digits of the sha256 of the keyed
    settings that differ from their baseline (REQUIRED ones always differ), as sorted JSON."""
    changed = {p: v for p, v in run_identity(cfg, precision, table).items() if v != table[p]}
    blob = json.dumps(changed, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
