"""The run identity: every schema field is classified, the key follows what changes a record and
nothing else, the precision is keyed as used, and a new setting left at its baseline keeps every key."""

import dataclasses
import typing
from dataclasses import field
from typing import Any, Optional

import pytest
from omegaconf import MISSING, OmegaConf

from qvtune.config.methods import METHODS
from qvtune.config.schema import MethodConfig, OptimConfig, RunConfig, SyntheticSpec, TaskConfig
from qvtune.store.identity import IDENTITY, keyed_fields, run_identity, run_key
from qvtune.train.runtime import PRECISIONS_USED, expected_precisions, resolve_precision
from tests.helpers import make_config


def schema_rows(cls: type, prefix: str = "") -> list[str]:
    """The rows a table needs for a schema dataclass: every leaf field, nested configs expanded, and
    every Optional nested config itself (for when it is None)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        path, hint = prefix + f.name, hints[f.name]
        optional = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(hint):
            out += schema_rows(hint, path + ".")
        elif optional:
            out += [path, *schema_rows(optional[0], path + ".")]
        else:
            out.append(path)
    return out


def unclassified(cls: type, table: dict[str, Any] = IDENTITY) -> list[str]:
    """The rows of the schema that the table lacks."""
    return [path for path in schema_rows(cls) if path not in table]


def test_every_schema_field_is_classified_once():
    assert unclassified(RunConfig) == [], "classify these in qvtune.store.identity.IDENTITY"
    rows = set(schema_rows(RunConfig))
    assert not set(IDENTITY) - rows, f"IDENTITY names rows the schema lacks: {set(IDENTITY) - rows}"
    assert {"optim.betas", "optim.eps", "task.synthetic.train_size", "task.tsv", "task.tsv.folder"} <= rows


# A schema that grew: a top-level option, and a field in a nested config and in an Optional one.
@dataclasses.dataclass
class GrownSynthetic(SyntheticSpec):
    shuffle: bool = False


@dataclasses.dataclass
class GrownTask(TaskConfig):
    synthetic: Optional[GrownSynthetic] = None


@dataclasses.dataclass
class GrownOptim(OptimConfig):
    nesterov: bool = False


@dataclasses.dataclass
class Grown(RunConfig):
    task: GrownTask = MISSING
    optim: GrownOptim = field(default_factory=GrownOptim)
    knob: int = 0


GROWN = {**IDENTITY, "task.synthetic.shuffle": False, "optim.nesterov": False, "knob": 0}


def test_a_new_field_left_unclassified_is_caught():
    assert unclassified(Grown) == ["task.synthetic.shuffle", "optim.nesterov", "knob"]
    assert unclassified(Grown, GROWN) == []


def under(schema: type, cfg: Any, **changes: Any) -> Any:
    """cfg's values under another schema, as a record of an earlier version is read: the fields cfg
    lacks take the schema's defaults."""
    return OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(cfg, resolve=True), changes)


# Several models, tasks, methods and rate spellings, each keyed under every precision.
VARIED = [
    [],
    ["model=tiny-bert", "method=full", "lr=1e-3"],
    ["model=roberta-base", "task=rte", "targets=qkv", "rank=16", "alpha=8", "lam=4"],
    ["model=tiny-llama", "task=cola", "method=dora", "lr_v=3e-4", "head_lr=1e-2", "seed=2"],
    ["recipe=paper", "model=tiny-roberta", "task=stsb", "epochs=20", "dropout=0.1"],
    ["model=llama3.1-8b", "task=mnli", "eval_every=50", "optim.max_grad_norm=1.0", "max_steps=10"],
    ["model=tiny-bert", "method=adalora", "method.tinit=0.2", "rank=4"],
    ["method=galore", "method.update_proj_gap=50"],
    ["method=eva", "dropout=0.1"],
    ["model=tiny-llama", "method=ia3", "targets=all"],
]


@pytest.mark.parametrize("overrides", VARIED)
def test_a_new_field_at_its_baseline_keeps_every_key(overrides):
    cfg = make_config(*overrides)
    for precision in PRECISIONS_USED:
        assert run_key(under(Grown, cfg), precision, GROWN) == run_key(cfg, precision)


@pytest.mark.parametrize("overrides", VARIED)
def test_a_new_field_away_from_its_baseline_changes_the_key(overrides):
    cfg = make_config(*overrides)
    key = run_key(cfg, "fp32")
    assert run_key(under(Grown, cfg, knob=3), "fp32", GROWN) != key
    assert run_key(under(Grown, cfg, optim={"nesterov": True}), "fp32", GROWN) != key
    if cfg.task.synthetic is not None:
        assert run_key(under(Grown, cfg, task={"synthetic": {"shuffle": True}}), "fp32", GROWN) != key


@dataclasses.dataclass
class Shifted(RunConfig):
    diverge_factor: float = 5.0  # a default changed after runs used the old one


@pytest.mark.parametrize("overrides", VARIED)
def test_a_changed_default_changes_the_key_of_the_runs_that_use_it(overrides):
    cfg = make_config(*overrides)
    uses_new = OmegaConf.to_container(cfg, resolve=True)
    del uses_new["diverge_factor"]
    assert run_key(under(Shifted, OmegaConf.create(uses_new)), "bf16") != run_key(cfg, "bf16")
    assert run_key(under(Shifted, cfg), "bf16") == run_key(cfg, "bf16")  # it kept the old value


def test_a_baseline_that_would_follow_the_default_would_change_keys():
    moved = {**GROWN, "knob": 1}  # what editing a baseline does: every run at the old one moves
    cfg = make_config()
    assert run_key(under(Grown, cfg), "fp32", moved) != run_key(cfg, "fp32")


def test_only_settings_away_from_their_baseline_are_hashed():
    ident = run_identity(make_config("model=tiny-bert"), "fp32")
    hashed = {p for p, v in ident.items() if v != IDENTITY[p]}
    assert hashed == {
        "model.source",
        "model.arch",
        "model.tokenizer",
        "task.name",
        "task.extra_metrics",
        "task.text_fields",
        "task.hub_path",
        "task.synthetic",
        "method.name",
        "precision",
    }
    assert ident["task.synthetic"] == {} and ident["task.tsv"] is None and "task.tsv.folder" not in ident
    assert "model.arch" not in run_identity(make_config("model=roberta-base"), "fp32")


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
        # the block's settings at their baselines: every run before them keeps its key
        ["lr=1e-3", "lam_o=1", "lam_mlp=1.0", "layers=null", "optim.loraplus_ratio=null"],
        ["lr=1e-3", "optim.loraplus_ratio=1"],  # LoRA+ at 1 is plain LoRA
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
        "targets=[q,v,o]",
        "targets=all",
        "lam_o=2",
        "lam_mlp=0.5",
        "layers=[0]",
        "layers=last:1",
        "optim.loraplus_ratio=16",
    ],
)
def test_key_follows_what_changes_the_record(override):
    assert run_key(make_config("lr=1e-3", override), "fp32") != KEY


@pytest.mark.parametrize(
    "one, other",
    [
        (["lr=1e-4", "lam=3"], ["lr=1e-4", "lr_v=3e-4"]),
        (["lr=1e-4", "lam=3"], ["lr=1e-4", "lam=3", "lr_v=3e-4"]),
        (["lr=2e-4", "head_lr=null"], ["lr=2e-4", "head_lr=2e-4"]),
        (["rank=16"], ["rank=16", "alpha=16"]),
        ([], ["alpha=8"]),
        (["targets=all"], ["targets=[q,k,v,o,mlp]"]),
        (["targets=[o,v,q]"], ["targets=qvo"]),
        (["layers=first:2"], ["layers=[1,0]"]),
        (["lam_o=3"], ["lam_o=3.0000000000001"]),
    ],
)
def test_one_run_spelled_two_ways_has_one_key(one, other):
    assert run_key(make_config(*one), "fp32") == run_key(make_config(*other), "fp32")


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
    assert keyed_fields("method") == [f.name for f in dataclasses.fields(MethodConfig)]  # name, options
    assert "train_size" not in keyed_fields("task") and "synthetic" in keyed_fields("task")
    assert (
        "results_dir" not in keyed_fields() and "eval_every" in keyed_fields() and "optim" in keyed_fields()
    )
    # the collector's `extra` column: the top-level settings, not the config groups it names apart
    assert not {"model", "task", "method"} & set(keyed_fields())
    assert {"source", "arch", "tokenizer", "dtype"} <= set(keyed_fields("model"))
    assert "name" not in keyed_fields("model") and "betas" in keyed_fields("optim")


# Keys computed before the methods' options moved into the method group (rank, alpha and dropout were
# top-level fields then): every run of that store must keep its key.
EARLIER_KEYS = [
    ([], "058ddb9fc965", "782c18e97cc9"),
    (["method=full"], "4d251177e607", "cf8a5827cc1b"),
    (["method=dora"], "4c9e7e2e5669", "6b56194041ac"),
    (["rank=16"], "c40024f495ff", "5ca34c802bd9"),
    (["rank=16", "alpha=8"], "c235404e30cf", "edecc2b84f74"),
    (["alpha=8"], "058ddb9fc965", "782c18e97cc9"),
    (["dropout=0.1"], "68dcb3c847c4", "9895b3d67da5"),
    (["recipe=paper"], "4601e808b233", "364fab062b45"),
    (["recipe=paper-llama", "model=tiny-llama"], "f40358bef53c", "ebfc4f835d0d"),
    (["method=full", "rank=16", "dropout=0.1"], "4d251177e607", "cf8a5827cc1b"),
    (
        ["model=roberta-base", "task=rte", "targets=qkv", "rank=16", "alpha=8", "lam=4"],
        "6649ef90a4ab",
        "218ced25ef41",
    ),
    (
        ["+sweep=table2", "task=rte", "method=dora", "rank=16", "targets=qv", "lam=4"],
        "98577fd5c86e",
        "d23387945a78",
    ),
    (["+sweep=heatmap", "task=mnli"], "f7c34bdde13b", "4f5f9f40ce08"),
    (["optim.loraplus_ratio=4"], "5efb0099d709", "295962601be4"),
]


@pytest.mark.parametrize("overrides, fp32, bf16", EARLIER_KEYS)
def test_keys_from_before_the_method_options_moved_stay(overrides, fp32, bf16):
    cfg = make_config(*overrides)
    assert (run_key(cfg, "fp32"), run_key(cfg, "bf16")) == (fp32, bf16)


@pytest.mark.parametrize(
    "shorthand, inside",
    [
        (["rank=16"], ["method.rank=16"]),
        (["rank=16", "alpha=32"], ["method.rank=16", "method.alpha=32"]),
        (["dropout=0.1"], ["method.dropout=0.1"]),
        (["method=dora", "rank=4"], ["method=dora", "method.rank=4", "rank=4"]),
        (["method=galore", "rank=32"], ["method=galore", "method.rank=32"]),
    ],
)
def test_a_shorthand_and_its_method_option_are_one_run(shorthand, inside):
    assert run_key(make_config(*shorthand), "fp32") == run_key(make_config(*inside), "fp32")


def test_a_methods_options_are_keyed_for_it_alone():
    configs = {name: make_config(f"method={name}") for name in METHODS}
    for name, cfg in configs.items():
        ident = run_identity(cfg, "fp32")
        have = set(METHODS[name].option_names)
        keyed = {p.removeprefix("method.") for p in ident if p.startswith("method.") and p != "method.name"}
        assert keyed == have - {"rank", "alpha", "dropout"}, name  # those three under their own rows
        assert {"rank", "alpha", "dropout"} & set(ident) == {"rank", "alpha", "dropout"} & have, name
        if name == "galore":
            assert ident["method.update_proj_gap"] == 500 and ident["method.proj_type"] == "std"
    keys = {name: run_key(cfg, "fp32") for name, cfg in configs.items()}
    assert len(set(keys.values())) == len(METHODS)
    # at its default an option keeps the method's key; away from it, it is another run
    assert run_key(make_config("method=galore", "method.update_proj_gap=500"), "fp32") == keys["galore"]
    for option in ("method.init_r=16", "method.tinit=0.2", "method.deltaT=10"):
        assert run_key(make_config("method=adalora", option), "fp32") != keys["adalora"]
    assert run_key(make_config("method=eva", "method.rho=1"), "fp32") != keys["eva"]
