"""EleutherAI's lm-evaluation-harness on a run's tuned causal LM once training ends (harness.tasks).

lm-eval is imported only inside `evaluate_harness`: a run without harness tasks never loads it. A
harness that cannot run (an unknown task, a data set missing offline, a model without an LM head)
must not lose the training result, so `evaluate_harness` does not raise: its section says the error
in one line in place of the scores, and the traceback goes to the log.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

from qvtune.config.schema import HarnessConfig

log = logging.getLogger("qvtune")


def evaluate_harness(
    model: Any, tokenizer: Any, cfg: HarnessConfig, precision: str = "fp32"
) -> dict[str, Any]:
    """The record's `harness` section for `model` (a transformers causal LM, or a PEFT model around
    one, trained or not) and its `tokenizer`: {"lm_eval", "limit", "num_fewshot", "seconds", "tasks":
    {name: {metric: value, metric_stderr: value, "num_fewshot": n, "samples": n}}}, or "error" in
    place of "tasks". `precision` is the run's (fp32, bf16, fp16): the autocast its training used."""
    limit = int(cfg.limit) if cfg.limit is not None and cfg.limit >= 1 else cfg.limit
    section: dict[str, Any] = {"lm_eval": None, "limit": limit, "num_fewshot": cfg.num_fewshot}
    tic = time.perf_counter()
    training = getattr(model, "training", False)
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            section["lm_eval"] = version("lm_eval")
        except PackageNotFoundError:
            raise RuntimeError("lm-eval is not installed: pip install 'qvtune[harness]'") from None
        section["tasks"] = _evaluate(model, tokenizer, cfg, limit, precision)
    except Exception as e:  # recorded, never raised: the training result is kept whatever the harness does
        section["error"] = _one_line(e)
        log.warning(f"harness: {section['error']}", exc_info=True)
    finally:
        if hasattr(model, "train"):
            model.train(training)  # lm-eval puts the model in eval mode
    section["seconds"] = round(time.perf_counter() - tic, 3)
    return section


def _evaluate(
    model: Any, tokenizer: Any, cfg: HarnessConfig, limit: Optional[float], precision: str
) -> dict[str, dict[str, Any]]:
    """Each task's metrics, through lm-eval's Hugging Face wrapper around the model object."""
    import contextlib

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from qvtune.train.loop import AUTOCAST

    head = getattr(model, "get_output_embeddings", None)
    if not callable(head) or head() is None:
        raise ValueError(
            f"the harness scores a causal LM (a model with an LM head); {type(model).__name__} has none"
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=cfg.batch_size, **_token_options(tokenizer))
    amp = AUTOCAST[precision]
    with torch.autocast(model.device.type, dtype=amp) if amp else contextlib.nullcontext():
        results = simple_evaluate(
            model=lm,
            tasks=list(cfg.tasks),
            num_fewshot=cfg.num_fewshot,
            limit=limit,
            task_manager=_task_manager(list(cfg.tasks), list(cfg.include)),
            log_samples=False,
        )
    assert results is not None, "one process: simple_evaluate returns the results"
    return {name: _task_section(name, values, results) for name, values in results["results"].items()}


def _token_options(tokenizer: Any) -> dict[str, Any]:
    """HFLM options for a tokenizer without a BOS token, such as qvtune's builtin one. Its encoding
    wraps every text in its special tokens ([CLS] text [SEP]), so a continuation's tokens would not
    follow its context's: it encodes without them. lm-eval scores an empty context after a BOS token,
    else an EOS token; a tokenizer with neither gives its CLS (else pad) token."""
    if tokenizer.bos_token_id is not None:
        return {}
    options: dict[str, Any] = {"add_bos_token": False}
    if tokenizer.eos_token_id is None:
        cls = getattr(tokenizer, "cls_token_id", None)
        options["prefix_token_id"] = cls if cls is not None else tokenizer.pad_token_id
    return options


def _task_manager(tasks: list[str], include: list[str]) -> Any:
    """lm-eval's task index over its own tasks and the `include` folders. Indexing its ~15,000 task
    files takes ~10 s, so where the folders hold every task asked for, they alone are indexed."""
    from lm_eval.tasks import TaskManager

    folders = [str(Path(f).expanduser().absolute()) for f in include]
    if folders:
        own = TaskManager(include_path=folders, include_defaults=False)
        if all(t in own.all_tasks for t in tasks):
            return own
    return TaskManager(include_path=folders or None)


def _task_section(name: str, values: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """One task's (or group's) scores: lm-eval's "metric,filter" keys without the filter where it is
    "none" (acc, acc_stderr; exact_match,strict-match stays), the shots and the documents scored."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        metric, _, kept = key.partition(",")
        if kept:  # alias, name, sample_len: labels, not scores
            out[metric if kept == "none" else key] = _number(value)
    if name in results.get("n-shot", {}):
        out["num_fewshot"] = results["n-shot"][name]
    if name in results.get("n-samples", {}):
        out["samples"] = results["n-samples"][name]["effective"]
    return out


def _number(value: Any) -> Optional[float]:
    """A score as a finite float; None for lm-eval's "N/A" (no stderr) and for NaN."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _one_line(error: BaseException) -> str:
    """ "Type: message", the message's first line (a KeyError's without its quotes)."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
