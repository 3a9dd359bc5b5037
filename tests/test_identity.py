"""The run identity: every schema field is classified, the key follows what changes a record and
nothing else, and the precision is keyed as used."""

import dataclasses
import typing

import pytest

from qvtune.config.schema import RunConfig
from qvtune.store.identity import IDENTITY, keyed_fields, run_identity, run_key
from qvtune.train.runtime import expected_precisions, resolve_precision
from tests.helpers import make_config


def schema_paths(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every field of a schema dataclass, nested dataclasses expanded."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        inner = [a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)]
        kind = hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else (inner[0] if inner else None)
        out.append(path)
        if kind is not None:
            out += schema_paths(kind, path + ".")
    return out


def unclassified(cls: type) -> list[str]:
    """Schema paths that IDENTITY classifies zero times or twice (itself and an ancestor)."""
    paths = schema_paths(cls)
    bad = []
    for path in paths:
        parts = path.split(".")
        classified = [p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if p in IDENTITY]
        is_group = any(p.startswith(path + ".") for p in paths)
        if len(classified) > 1 or (not classified and not is_group):
            bad.append(path)
    return bad


def test_every_schema_field_is_classified_once():
    assert unclassified(RunConfig) == [], "classify these in qvtune.identity.IDENTITY"
    paths = set(schema_paths(RunConfig))
    assert not set(IDENTITY) - paths, f"IDENTITY names fields the schema lacks: {set(IDENTITY) - paths}"


def test_a_new_field_left_unclassified_is_caught():
    @dataclasses.dataclass
    class Grown(RunConfig):
        new_knob: int = 0

    assert unclassified(Grown) == ["new_knob"]


KEY = run_key(make_config("lr=1e-3", "lam=1"), "fp32")


@pytest.mark.parametrize(
    "overrides",
    [
        ["lr=1e-3", "lr_v=1e-3"],  # one run spelled two ways
        ["lr=1e-3", "targets=vq", "results_dir=/elsewhere", "wandb.mode=online", "cache_dir=/c", "threads=3"],
        ["lr=1e-3", "max_batch_tokens=512"],  # the same gradient in less memory
        ["lr=1e-3", "eval_batch_size=7"],
        ["lr=1e-3", "task.train_size=999"],  # a cost hint: editing it must not orphan finished runs
        ["lr=1e-3", "sweep_name=elsewhere", "checkpoint_minutes=1", "output_dir=/o"],
        ["lr=1e-3", "model.gradient_checkpointing=true"],
    ],
)
def test_key_ignores_what_does_not_change_the_record(overrides):
    assert run_key(make_config(*overrides), "fp32") == KEY


@pytest.mark.parametrize(
    "override",
    [
        "lam=2",
        "seed=1",
        "targets=qkv",
        "attention_dropout=null",
        "eval_every=100",
        "eval_at_start=true",
        "optim.max_grad_norm=1.0",
        "optim.grouping=paper",
        "dropout=0.1",
        "padding=max",
        "model.dtype=bfloat16",
        "task.synthetic.train_size=100",
        "head_lr=1e-2",
        "max_eval_samples=10",
    ],
)
def test_key_follows_what_changes_the_record(override):
    assert run_key(make_config("lr=1e-3", override), "fp32") != KEY


def test_rates_that_agree_share_a_key():
    assert run_key(make_config("lr=1e-4", "lam=3"), "fp32") == run_key(
        make_config("lr=1e-4", "lr_v=3e-4"), "fp32"
    )


def test_full_fine_tune_ignores_adapter_settings():
    base = run_key(make_config("method=full", "rank=8"), "fp32")
    assert run_key(make_config("method=full", "rank=16", "alpha=3", "dropout=0.2"), "fp32") == base
    assert run_key(make_config("method=lora", "rank=16"), "fp32") != run_key(
        make_config("method=lora"), "fp32"
    )


def test_precision_is_keyed_as_used():
    cfg = make_config("precision=auto")
    assert run_key(cfg, "fp32") != run_key(cfg, "bf16") != run_key(cfg, "fp16")
    assert run_identity(cfg, "bf16")["precision"] == "bf16"
    # asked for fp16 on a CPU, a run computes in fp32: the same run as an fp32 one there
    assert resolve_precision("fp16", "cpu", False) == resolve_precision("auto", "cpu", False) == "fp32"
    assert (
        resolve_precision("auto", "cuda", True) == "bf16"
        and resolve_precision("auto", "cuda", False) == "fp16"
    )
    assert (
        resolve_precision("fp32", "cuda", True, "bfloat16") == "bf16"
    )  # half weights compute in their dtype
    assert resolve_precision("fp32", "cpu", False, "bfloat16") == "bf16"
    with pytest.raises(ValueError, match="precision used"):
        run_key(cfg, "auto")


def test_expected_precisions_where_a_run_will_be_launched():
    assert expected_precisions(make_config("precision=auto"), gpus=False) == ["fp32"]
    assert expected_precisions(make_config("precision=auto"), gpus=True) == ["bf16", "fp16"]
    assert expected_precisions(make_config("recipe=paper"), gpus=True) == ["fp16"]
    assert expected_precisions(make_config("precision=auto", "device=cpu"), gpus=True) == ["fp32"]


def test_keyed_fields_lists_groups_and_top_level():
    assert keyed_fields("method") == ["name"]
    assert "train_size" not in keyed_fields("task") and "synthetic" in keyed_fields("task")
    assert (
        "results_dir" not in keyed_fields() and "eval_every" in keyed_fields() and "optim" in keyed_fields()
    )
