"""A run's identity: which settings decide its result, and the run key hashed from them.

Every field of the schema (qvtune.config.RunConfig) is classified in IDENTITY, in one place:
True when it changes what the run records (it is in the key), False when it does not (paths,
logging, launcher and bookkeeping settings, speed-only options with the same result). A test fails
when a new field is left unclassified. A re-launched grid maps every run to the same key wherever
its files live, so finished runs are skipped and interrupted ones resume.

The precision is keyed as the one actually used (fp32 on CPU; bf16 or fp16 autocast on a GPU), not
as requested: `precision=auto` on a CPU and on a GPU are two different runs. Nothing heavy is
imported here: the sweeper and the collector use it far from the GPUs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from qvtune.config.rates import learning_rates, rounded
from qvtune.config.schema import RunConfig, has_rank, parse_targets, plain
from qvtune.train.runtime import PRECISIONS_USED

# Dotted schema paths (a field, or a nested config taken whole) -> in the key?
IDENTITY: dict[str, bool] = {
    # what is trained, on what, how
    "model.name": False,  # a label; the weights are named by source (or arch) and dtype
    "model.source": True,
    "model.arch": True,  # only when there is no source: the random-init models are their arch
    "model.tokenizer": True,
    "model.dtype": True,
    "model.gradient_checkpointing": False,  # recomputes activations: the same gradients
    "task.name": True,
    "task.num_labels": True,
    "task.metric": True,
    "task.extra_metrics": True,
    "task.text_fields": True,
    "task.label_names": True,
    "task.hub_path": True,
    "task.hub_name": True,
    "task.train_split": True,
    "task.eval_splits": True,
    "task.tsv": True,
    "task.synthetic": True,
    "task.train_size": False,  # a cost hint for plan=true
    "task.paper_epochs": False,  # sweep files read it into `epochs`, which is keyed
    "method.name": True,
    "recipe": False,  # a name for a set of settings; the settings themselves are keyed
    "targets": True,
    "rank": True,
    "alpha": True,
    "dropout": True,
    "attention_dropout": True,
    "lr": True,
    "lam": True,  # folded with lr_v into eta_V
    "lr_v": True,
    "head_lr": True,
    "epochs": True,
    "max_steps": True,
    "until": False,  # a rung of a search is a prefix of the same run: it pauses and resumes
    "batch_size": True,
    "grad_accum": True,
    "eval_batch_size": False,  # evaluation in other batch sizes gives the same predictions
    "max_batch_tokens": False,  # the same gradient in several passes (tests/test_data.py)
    "max_len": True,
    "padding": True,
    "group_by_length": True,
    "seed": True,
    "precision": True,  # as used, see resolve_precision
    "max_train_samples": True,
    "max_eval_samples": True,
    "eval_every": True,  # the record's dev history
    "eval_at_start": True,  # the record's dev history
    "diverge_factor": True,
    "optim": True,
    # where files go, how it is watched, where it runs
    "data_dir": False,
    "results_dir": False,
    "cache_dir": False,
    "output_dir": False,
    "checkpoint_minutes": False,
    "threads": False,
    "device": False,  # enters through the precision it implies
    "sweep_name": False,
    "dry_run": False,
    "plan": False,
    "pack": False,  # how runs are grouped to train; each member is keyed as its own run
    "wandb": False,
}


def keyed_fields(group: str = "") -> list[str]:
    """The keyed fields directly below `group` ("" for the top level), in IDENTITY's order."""
    prefix = f"{group}." if group else ""
    return [
        p[len(prefix) :]
        for p, keyed in IDENTITY.items()
        if keyed and p.startswith(prefix) and "." not in p[len(prefix) :]
    ]


def run_identity(cfg: RunConfig, precision: str) -> dict[str, Any]:
    """The settings that decide a run's result, normalised: targets canonical, lam and lr_v folded
    into eta_V, the head's rate resolved, rank/alpha/dropout dropped where the method has none."""
    if precision not in PRECISIONS_USED:
        raise ValueError(
            f"precision={precision!r}: expected the precision used, one of {', '.join(PRECISIONS_USED)}"
        )
    ident = {k: plain(getattr(cfg, k)) for k in keyed_fields() if k not in ("lam", "lr_v")}
    ident["targets"] = parse_targets(ident["targets"])
    rates = learning_rates(cfg)
    ident.update(
        lr=rounded(rates.qk), lr_v=rounded(rates.v), head_lr=rounded(rates.head), precision=precision
    )
    if has_rank(cfg.method.name):
        ident["alpha"] = ident["rank"] if ident["alpha"] is None else ident["alpha"]
    else:
        ident.update(rank=None, alpha=None, dropout=None)
    for group in ("model", "task", "method"):
        ident[group] = {k: plain(getattr(getattr(cfg, group), k)) for k in keyed_fields(group)}
    if cfg.model.source is not None:
        del ident["model"]["arch"]  # loaded from the source; arch only describes it
    return ident


def run_key(cfg: RunConfig, precision: str) -> str:
    """A short stable hash of `run_identity`: the name of the run's folder in the results store."""
    blob = json.dumps(run_identity(cfg, precision), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
