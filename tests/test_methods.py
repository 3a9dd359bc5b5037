"""Every fine-tuning method (qvtune.config.methods on the config side, qvtune.model.methods on the
model side): each attaches to tiny-bert and tiny-llama, puts every trainable tensor in exactly one
group, starts with a zero update norm that one optimizer step moves; bad options are refused in one
line before anything loads; packing refusals; AdaLoRA's budget and penalty, EVA's start, and exact
resumes of the methods that keep state beside their tensors (GaLore's projectors, AdaLoRA's
allocator)."""

from __future__ import annotations

import copy
import dataclasses
import typing
from functools import cache
from pathlib import Path

import pytest
import torch

from qvtune.config.methods import METHODS, fold_options, method_options
from qvtune.config.schema import MethodConfig
from qvtune.config.validate import unpackable, validate
from qvtune.data.encode import Encoded, collate, encode, encode_task
from qvtune.data.load import load_task
from qvtune.data.tasks import synthetic_task
from qvtune.model.load import load_model, load_tokenizer
from qvtune.model.methods import MODEL_METHODS, TrainData, apply_method
from qvtune.model.runs import attach
from qvtune.model.weights import weight_type
from qvtune.train.loop import Member, train
from tests.helpers import make_config

SMALL = (
    "task.synthetic.train_size=48",
    "task.synthetic.eval_size=8",
    "batch_size=8",
    "rank=4",
    "lr=1e-2",
    "attention_dropout=0",
    "wandb.mode=disabled",
)


@cache
def _composed(*overrides: str):
    return make_config(*overrides)


def config(*overrides: str):
    return copy.deepcopy(_composed(*SMALL, *overrides))


@cache
def synthetic(model: str) -> tuple[int, Encoded, Encoded]:
    """The small synthetic task encoded for the model: its pad id, training and dev splits."""
    cfg = config(f"model={model}")
    tok = load_tokenizer(cfg.model)
    task = synthetic_task(cfg.task.synthetic)
    return tok.pad_token_id, encode(tok, task.train, cfg.max_len), encode(tok, task.evals["validation"], 128)


def attached(cfg):
    """cfg's run attached to a freshly loaded model, as qvtune.run does: (LoneRun, its parts)."""
    pad_id, data, _ = synthetic(cfg.model.name)
    model, parts = attach(load_model(cfg.model, 2, seed=cfg.seed), [cfg], TrainData(data, pad_id))
    return model, parts[0]


def trained(cfg, model, part, checkpoint: Path):
    """qvtune.train.loop.train of the attached run on the small synthetic task: its TrainState."""
    pad_id, data, dev = synthetic(cfg.model.name)
    member = Member(part.groups, part.norms, checkpoint, lambda values, step: None, part.training)
    outcomes = train(
        model,
        [member],
        data,
        {"validation": dev},
        cfg.task,
        cfg,
        pad_id=pad_id,
        device=torch.device("cpu"),
        precision="fp32",
    )
    return next(iter(outcomes)).state


def test_the_config_and_the_model_know_the_same_methods_and_the_schema_every_option():
    assert list(MODEL_METHODS) == list(METHODS)
    options = {f.name: f.type for m in METHODS.values() for f in dataclasses.fields(m.Options)}
    schema = typing.get_type_hints(MethodConfig)
    assert set(schema) - {"name"} == set(options)
    for name, hint in schema.items():
        assert name == "name" or type(None) in typing.get_args(hint), f"method.{name} must be Optional"


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_attaches_groups_each_tensor_once_and_one_step_moves_its_norm(tmp_path, model, method):
    lora_b = METHODS[method].lora_b
    cfg = config(
        f"model={model}",
        f"method={method}",
        "targets=[q,v,up]",
        "max_steps=1",
        "lam=4",
        f"optim.loraplus_ratio={4 if lora_b else 'null'}",  # LoRA+ for every method with B matrices
    )
    assert validate(cfg) == []
    run, part = attached(cfg)
    net = run.model  # the model the method made (peft's, or the base for full and galore)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    grouped = [n for g in part.groups for n, _ in g.params]
    assert sorted(grouped) == sorted(trainable) and len(grouped) == len(set(grouped))
    for g in part.groups:  # B matrices in the .B groups, nothing else
        assert all((".lora_B." in n) == g.name.endswith(".B") for n, _ in g.params), g.name
    assert any(g.name.endswith(".B") and g.params for g in part.groups) == lora_b
    # the weight types with something to train: each starts unchanged and moves with one step
    moving = {
        weight_type(name)
        for name, module in net.named_modules()
        if weight_type(name) and any(p.requires_grad for p in module.parameters())
    }
    assert moving == {"q", "v", "up"}
    assert all(v == 0 for v in part.norms().values())
    state = trained(cfg, run, part, tmp_path / "checkpoint.pt")
    assert state.step == 1 and state.status == "completed"
    after = part.norms()
    assert all(after[t] > 0 for t in moving), after
    assert all(after[t] == 0 for t in after if t not in moving)


def test_galore_trains_the_tuned_matrices_in_projection_at_their_groups_rates():
    cfg = config("model=tiny-bert", "method=galore", "targets=qv", "lam=4", "method.update_proj_gap=7")
    net, part = attached(cfg)
    optimizer = part.training.optimizer(part.groups, cfg.optim)
    projected = [g for g in optimizer.param_groups if "rank" in g]
    assert {g["name"] for g in projected} == {"qk", "v"}
    assert all(p.ndim == 2 for g in projected for p in g["params"])  # the matrices; biases go plain
    assert all((g["rank"], g["update_proj_gap"], g["scale"]) == (4, 7, 4.0) for g in projected)
    lr = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lr["v"] == pytest.approx(4 * lr["qk"])  # lambda holds
    assert {p for g in optimizer.param_groups for p in g["params"]} == {
        p for _, p in net.named_parameters() if p.requires_grad
    }


def test_adalora_reallocates_its_rank_budget_after_tinit(tmp_path):
    # 12 steps: tinit 1 step, tfinal 6: the budget shrinks from init_r 6 to rank 4 over steps 2 to 5
    cfg = config("model=tiny-bert", "method=adalora", "targets=qv", "max_steps=12")
    net, part = attached(cfg)
    settings = net.model.peft_config["default"]
    schedule = (settings.init_r, settings.target_r, settings.total_step, settings.tinit, settings.tfinal)
    assert schedule == (6, 4, 12, 1, 6)
    pad_id, data, _ = synthetic("tiny-bert")
    optimizer = part.training.optimizer(part.groups, cfg.optim)
    kept = []
    for step in range(6):
        batch = collate(data, torch.arange(8 * step, 8 * step + 8).numpy() % len(data), pad_id, None)
        net.train()
        net([0], **batch)[0].sum().backward()
        optimizer.step()
        part.training.after_step(step)
        optimizer.zero_grad()
        pattern = settings.rank_pattern
        kept.append(None if pattern is None else sum(sum(v) for v in pattern.values()))
    assert kept[:2] == [None, None]  # nothing masked up to tinit
    assert kept[2] is not None and kept[2] < 4 * 6 and kept[-1] < kept[2]  # 4 matrices of rank 6, shrinking
    zeros = sum(int((p == 0).sum()) for n, p in net.named_parameters() if ".lora_E." in n)
    assert zeros == 4 * 6 - kept[-1]  # the masked triplets' singular values are 0


@pytest.mark.parametrize("text", [False, True], ids=["head", "text"])
def test_adalora_penalty_joins_the_training_loss_of_both_task_formats(tmp_path, text):
    if text:
        cfg = make_config(
            "model=tiny-llama", "task=kv-recall", "task.kv_recall.train_size=16", "method=adalora"
        )
        tok = load_tokenizer(cfg.model, text=True)
        data, _ = encode_task(tok, load_task(cfg.task, None), "kv", cfg.max_len, tmp_path)
        base = load_model(cfg.model, 2, seed=0, causal=True)
    else:
        cfg = config("model=tiny-bert", "method=adalora", "+model.arch.hidden_dropout_prob=0")
        tok = load_tokenizer(cfg.model)
        data = encode(tok, synthetic_task(cfg.task.synthetic).train, cfg.max_len)
        base = load_model(cfg.model, 2, seed=0)
    net, parts = attach(base, [cfg], TrainData(data, tok.pad_token_id))
    batch = collate(data, torch.arange(4).numpy(), tok.pad_token_id, None)
    penalty = parts[0].training.penalty()
    assert penalty is not None and penalty.item() > 0 and penalty.requires_grad
    net.train()
    trained_loss = net([0], **dict(batch))[0]
    net.eval()
    dev_loss = net([0], **dict(batch))[0]
    assert (trained_loss - dev_loss).item() == pytest.approx(penalty.item(), rel=1e-5)


def test_eva_starts_from_the_runs_own_batches_the_same_on_a_rerun():
    a_of = lambda net: {n: p.detach().clone() for n, p in net.named_parameters() if ".lora_A." in n}  # noqa: E731
    eva = a_of(attached(config("model=tiny-bert", "method=eva", "targets=qv"))[0])
    again = a_of(attached(config("model=tiny-bert", "method=eva", "targets=qv"))[0])
    lora = a_of(attached(config("model=tiny-bert", "method=lora", "targets=qv"))[0])
    assert eva.keys() == again.keys() and all(torch.equal(eva[n], again[n]) for n in eva)
    shared = eva.keys() & lora.keys()
    assert shared and not any(
        torch.allclose(eva[n], lora[n]) for n in shared if eva[n].shape == lora[n].shape
    )
    other_order = a_of(attached(config("model=tiny-bert", "method=eva", "targets=qv", "seed=1"))[0])
    assert any(not torch.equal(eva[n], other_order[n]) for n in eva.keys() & other_order.keys())
    with pytest.raises(
        ValueError, match="method=eva initialises its adapters from the run's training batches"
    ):
        apply_method(load_model(config("model=tiny-bert").model, 2, seed=0), config("method=eva"))


@pytest.mark.parametrize("method", ["galore", "adalora"])
def test_a_paused_run_resumes_exactly_with_its_methods_state(tmp_path, method):
    """`until` pauses at half the steps with a checkpoint (as a search's rung does) and a second launch
    goes on: the same losses and tensors as one straight run, GaLore's projector (computed once at step
    0 here) and AdaLoRA's importance averages (its final allocation is at the resumed step 4) included."""
    overrides = (
        "model=tiny-bert",
        f"method={method}",
        "targets=qv",
        "max_steps=8",
        "+model.arch.hidden_dropout_prob=0",
    )
    straight_cfg = config(*overrides)
    net, part = attached(straight_cfg)
    straight = trained(straight_cfg, net, part, tmp_path / "straight.pt")
    first = config(*overrides, "until=0.5")
    net2, part2 = attached(first)
    paused = trained(first, net2, part2, tmp_path / "resumed.pt")
    assert paused.status == "paused" and paused.step == 4
    # tensors and plain values only (GaLore's projectors as their matrices): no class to unpickle
    saved = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert saved["method"] if method == "adalora" else saved["optimizer"]["state"]
    rest = config(*overrides)
    net3, part3 = attached(rest)  # a new process: a fresh model, the checkpoint loads in the loop
    resumed = trained(rest, net3, part3, tmp_path / "resumed.pt")
    assert resumed.step == straight.step == 8
    assert [x[1] for x in resumed.train_loss] == pytest.approx([x[1] for x in straight.train_loss], rel=1e-6)
    one, two = dict(net.named_parameters()), dict(net3.named_parameters())
    assert all(torch.allclose(p, two[n], rtol=1e-6, atol=1e-8) for n, p in one.items() if p.requires_grad)


def test_only_lora_dora_and_rslora_pack_and_the_rest_say_why_in_one_line():
    packs = {name for name in METHODS if not unpackable(config(f"method={name}"))}
    assert packs == {"lora", "dora", "rslora"}
    for name in set(METHODS) - packs:
        (reason,) = unpackable(config(f"method={name}"))
        assert reason.startswith(f"method={name} is not packed (") and "\n" not in reason
    errors = validate(config("method=pissa", "pack=[{lr: 1e-3}, {lr: 2e-3}]"))
    assert errors == [
        f"pack: {METHODS['pissa'].pack_refusal}; run its runs one by one (no pack, or hydra.sweeper.pack=1)"
    ]


def test_rslora_members_of_a_pack_train_as_they_would_alone(tmp_path):
    """rsLoRA packs through LoRA's packed layer: only its scale (alpha / sqrt(r), read from peft) differs."""
    from tests.test_pack import alone, assert_same_run, packed
    from tests.test_pack import config as pack_config

    configs = [pack_config("method=rslora", "lr=1e-2", f"lr_v={v}", "alpha=8") for v in ("1e-2", "4e-2")]
    together = packed(configs, tmp_path)
    for i, cfg in enumerate(configs):
        assert_same_run(together[i], alone(cfg, tmp_path / f"alone{i}.pt"))
    assert together[0].train_loss[-1][1] != together[1].train_loss[-1][1]  # the members really differ


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=full", "method.rank=4"], "method.rank=4: method=full has no rank (its options: none)"),
        (["rank=16", "method.rank=8"], "rank=16 and method.rank=8 disagree: give one of them"),
        (
            ["method=lora", "method.init_r=12"],
            "method.init_r=12: method=lora has no init_r (its options: rank, alpha, dropout)",
        ),
        (["method=adalora", "method.tinit=0.6"], "method.tinit=0.6, method.tfinal=0.5: expected fractions"),
        (["method=adalora", "method.init_r=4", "rank=8"], "method.init_r=4: expected an integer >= rank (8)"),
        (
            ["method=galore", "method.proj_type=diag"],
            "method.proj_type='diag': expected one of std, reverse_std",
        ),
        (["method=eva", "method.rho=0.5"], "method.rho=0.5: expected a number >= 1"),
        (
            ["method=ia3", "optim.loraplus_ratio=4"],
            "optim.loraplus_ratio=4.0: LoRA+ scales the rate of LoRA's B",
        ),
        (["method=galore", "rank=0"], "rank=0: expected an integer >= 1"),
    ],
)
def test_bad_method_options_are_one_line_each_before_loading(overrides, message):
    errors = validate(config(*overrides))
    assert len(errors) == 1 and errors[0].startswith(message), errors


def test_the_shorthands_and_the_method_group_are_one_setting_written_under_both_names():
    assert method_options(config("rank=16")) == method_options(config("method.rank=16"))
    assert method_options(config("method=galore", "rank=16")).rank == 16  # GaLore's projection rank
    cfg = config("method=adalora", "alpha=12", "dropout=0.1")
    fold_options(cfg)
    assert (cfg.rank, cfg.alpha, cfg.dropout) == (4, 12.0, 0.1)
    assert (cfg.method.rank, cfg.method.init_r, cfg.method.tfinal) == (4, None, 0.5)
    full = config("method=full", "dropout=0.1")
    fold_options(full)
    assert (full.rank, full.alpha, full.dropout) == (None, None, None)  # a full fine-tune has none
    assert validate(full) == []


@pytest.mark.slow
def test_each_new_method_family_runs_from_the_entry_point_and_the_collector_reads_it(tmp_path):
    """One sweep through `python -m qvtune.run` over a method of each new family: every run completes,
    writes its options under both spellings, moves its update norms, and the collector reads it."""
    from qvtune.collect.records import flatten
    from qvtune.store.record import RunRecord
    from tests.helpers import records, run_cli

    methods = ["rslora", "pissa", "eva", "adalora", "ia3", "galore"]
    proc = run_cli(
        "-m",
        "model=tiny-bert",
        f"method={','.join(methods)}",
        "targets=[q,v,up]",
        "rank=4",
        "lr=1e-2",
        "max_steps=6",
        "task.synthetic.train_size=96",
        "task.synthetic.eval_size=32",
        "batch_size=16",
        "wandb.mode=disabled",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = {rec["config"]["method"]["name"]: rec for rec in records(tmp_path / "results")}
    assert sorted(done) == sorted(methods)
    for name, rec in done.items():
        assert rec["status"] == "completed" and rec["steps"] == 6, name
        last = dict(zip(rec["norm_types"], rec["update_norms"][-1][1:]))
        assert last.keys() == {"q", "k", "v", "up"} and last["k"] == 0, name  # k is logged, not tuned
        assert all(last[t] > 0 for t in ("q", "v", "up")), name
        ranked = METHODS[name].has_rank
        assert rec["config"]["rank"] == (4 if ranked else None) == rec["config"]["method"]["rank"], name
    for path in sorted((tmp_path / "results").rglob("result.json")):
        row = flatten(RunRecord.read(path), str(path))
        assert row["rank"] == 4 if METHODS[row["method"]].has_rank else row["rank"] != row["rank"]  # NaN
