"""Packed runs (qvtune.model.pack): every member of a pack trains exactly as it would alone (dropout off,
fp32 on the CPU), for LoRA and DoRA, for packs that differ in learning rates and in targets; a
member that diverges stops alone; the packed layer matches PEFT's on hand-built inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qvtune.config.rates import learning_rates
from qvtune.config.validate import member_configs, validate
from qvtune.model.load import load_model
from qvtune.model.methods import UpdateNorms, apply_method, group_params, param_groups
from qvtune.model.pack import build_pack
from qvtune.model.runs import LoneRun
from qvtune.status import Status
from qvtune.train.loop import Member
from tests.helpers import make_config, train_members

NO_DROPOUT = ("attention_dropout=0", "+model.arch.hidden_dropout_prob=0")
SMALL = (
    "model=tiny-bert",
    "task=synthetic",
    "task.synthetic.train_size=192",
    "task.synthetic.eval_size=64",
    "epochs=1",
    "batch_size=32",
    "eval_every=2",
    "rank=4",
)


def config(*overrides: str):
    return make_config(*SMALL, *NO_DROPOUT, *overrides)


def alone(cfg, checkpoint: Path):
    """The run as a lone PEFT model, trained in this process."""
    net = apply_method(load_model(cfg.model, cfg.task.num_labels, cfg.seed, cfg.attention_dropout), cfg)
    groups = param_groups(net, learning_rates(cfg), cfg.optim.grouping)
    member = Member(groups, UpdateNorms.of(net), checkpoint, lambda values, step: None)
    return train_members(LoneRun(net), [member], cfg)[0]


def packed(configs, folder: Path):
    """The runs as one pack on one freshly loaded base."""
    first = configs[0]
    pack = build_pack(
        load_model(first.model, first.task.num_labels, first.seed, first.attention_dropout), configs
    )
    members = [
        Member(
            group_params(m.named, learning_rates(c), c.optim.grouping),
            pack.update_norms(i),
            folder / f"member{i}.pt",
            lambda values, step: None,
        )
        for i, (m, c) in enumerate(zip(pack.members, configs))
    ]
    return train_members(pack, members, first)


def assert_same_run(a, b, rel=1e-5):
    assert a.status == b.status and a.step == b.step and a.samples == b.samples
    assert [row[0] for row in a.train_loss] == [row[0] for row in b.train_loss]
    for x, y in zip(a.train_loss, b.train_loss):
        assert x[1] == pytest.approx(y[1], rel=rel), f"loss at step {x[0]}"
    for x, y in zip(a.update_norms, b.update_norms):
        assert x == pytest.approx(y, rel=rel, abs=1e-9), f"update norms at step {x[0]}"
    assert [h["step"] for h in a.history] == [h["step"] for h in b.history]
    for x, y in zip(a.history, b.history):
        assert x["metrics"] == pytest.approx(y["metrics"], rel=rel), f"dev metrics at step {x['step']}"
    assert a.lr_trace == b.lr_trace


@pytest.mark.parametrize(
    "method, differ",
    [
        ("lora", ["lr=1e-2 lr_v=1e-2", "lr=1e-2 lr_v=4e-2", "lr=3e-3 lr_v=3e-2"]),
        ("lora", ["targets=q", "targets=v", "targets=qkv"]),
        ("dora", ["lr=1e-2 lr_v=1e-2", "lr=5e-3 lr_v=4e-2"]),
        ("dora", ["targets=qv", "targets=k"]),
        ("lora", ["targets=qv", "targets=[q,v,o] lam_o=3", "targets=all lam_mlp=0.5"]),
        ("lora", ["lam=1 optim.loraplus_ratio=4", "lam=4 targets=[q,v,o] optim.loraplus_ratio=4"]),
    ],
    ids=["lora-rates", "lora-targets", "dora-rates", "dora-targets", "lora-block", "lora-loraplus"],
)
def test_every_member_trains_as_it_would_alone(tmp_path, method, differ):
    configs = [config(f"method={method}", "lr=1e-2", *d.split()) for d in differ]
    together = packed(configs, tmp_path)
    for i, cfg in enumerate(configs):
        single = alone(cfg, tmp_path / f"alone{i}.pt")
        assert single.step > 3 and len(single.history) > 2  # a run long enough to drift if it could
        assert_same_run(together[i], single)
    # the members really differ: otherwise equal records would prove nothing
    assert len({round(s.train_loss[-1][1], 6) for s in together}) == len(configs)


# head dropout in the base (BERT), in the head (RoBERTa); Llama keeps its attention dropout as a float
@pytest.mark.parametrize(
    "model, attention",
    [
        ("tiny-bert", "0"),
        ("tiny-bert", "null"),  # null: the model's own 0.1, the paper's recipe
        ("tiny-roberta", "0"),
        ("tiny-roberta", "null"),
        ("tiny-llama", "0.1"),  # no hidden dropout: the attention's is the only mask in its base
    ],
)
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_with_dropout_on_a_pack_that_differs_in_rates_draws_the_masks_of_its_lone_runs(
    tmp_path, model, method, attention
):
    # the model's own hidden and head dropout, LoRA's, and the attention's: every mask is drawn
    on = (*SMALL, f"model={model}", f"method={method}", f"attention_dropout={attention}", "dropout=0.2")
    rates = ("lr=1e-2 lr_v=1e-2", "lr=1e-2 lr_v=4e-2", "lr=3e-3 lr_v=3e-2")
    configs = [make_config(*on, *d.split()) for d in rates]
    together = packed(configs, tmp_path)
    for i, cfg in enumerate(configs):
        assert_same_run(together[i], alone(cfg, tmp_path / f"alone{i}.pt"))
    # dropout really acts: with every dropout off the first run's losses are ten times the tolerance off
    off = make_config(*on, *NO_DROPOUT, "dropout=0", "lr=1e-2", "lr_v=1e-2")
    quiet = alone(off, tmp_path / "quiet.pt")
    assert max(abs(x[1] / y[1] - 1) for x, y in zip(quiet.train_loss, together[0].train_loss)) > 1e-4


def test_a_member_that_diverges_stops_alone_and_the_others_go_on(tmp_path):
    longer = "task.synthetic.train_size=448"  # 14 steps: the divergence check needs 10
    configs = [config(longer, "lr=1e-2"), config(longer, "lr=100"), config(longer, "lr=3e-3", "lam=4")]
    together = packed(configs, tmp_path)
    assert [s.status for s in together] == [Status.COMPLETED, Status.DIVERGED, Status.COMPLETED]
    assert together[1].step < together[0].step
    assert together[1].history[-1]["step"] == together[1].step  # evaluated where it stopped
    single = alone(configs[1], tmp_path / "alone.pt")
    assert single.status is Status.DIVERGED and single.step == together[1].step
    for i in (0, 2):
        assert_same_run(together[i], alone(configs[i], tmp_path / f"alone{i}.pt"))


def test_packed_layer_matches_peft_with_dropout_off_in_eval_and_train_modes():
    cfg = config("method=dora", "targets=qv")
    torch.manual_seed(0)
    lone = apply_method(load_model(cfg.model, 2, cfg.seed, 0.0), cfg)
    pack = build_pack(load_model(cfg.model, 2, cfg.seed, 0.0), [cfg, config("method=dora", "targets=v")])
    with torch.no_grad():  # move off the initialisation, where B = 0 hides most of the formula
        for member in pack.members:
            for _, p, _ in member.named:
                p.add_(torch.randn_like(p) * 0.05)
        for name, q in lone.named_parameters():
            if q.requires_grad:
                q.copy_(dict((n, p) for n, p, _ in pack.members[0].named)[name])
    ids = torch.randint(5, 100, (3, 9))
    mask = torch.ones_like(ids)
    labels = torch.tensor([0, 1, 1])
    for mode in ("eval", "train"):
        getattr(lone, mode)(), getattr(pack, mode)()
        losses, logits = pack([0, 1], input_ids=ids, attention_mask=mask, labels=labels)
        want = lone(input_ids=ids, attention_mask=mask, labels=labels)
        assert torch.allclose(logits[0], want.logits, rtol=1e-5, atol=1e-6)
        assert float(losses[0].detach()) == pytest.approx(float(want.loss.detach()), rel=1e-5)
        # the first member alone: the second's slot is gone, not zeroed
        alone_logits = pack([0], input_ids=ids, attention_mask=mask, labels=labels)[1]
        assert torch.allclose(alone_logits[0], want.logits, rtol=1e-5, atol=1e-6)


def test_pack_configs_are_checked_before_anything_loads():
    cfg = make_config("model=tiny-bert", "method=lora", "pack=[{lr:0.001},{lr:0.002,targets:v}]")
    assert validate(cfg) == []
    assert [(c.lr, c.targets, c.pack) for c in member_configs(cfg)] == [(0.001, "qv", []), (0.002, "v", [])]
    bad = make_config("model=tiny-bert", "method=lora", "pack=[{lr:0.001},{seed:3}]")
    assert any("pack[1]: seed" in e and "differ only in" in e for e in validate(bad))
    full = make_config("model=tiny-bert", "method=full", "pack=[{lr:0.001},{lr:0.002}]")
    assert any("method=full is not packed" in e for e in validate(full))
    block = make_config("model=tiny-bert", "method=lora", "pack=[{lr:0.001},{targets:all,lam_mlp:2}]")
    assert validate(block) == [] and member_configs(block)[1].lam_mlp == 2
    nan = make_config("model=tiny-bert", "method=lora", "pack=[{lr:0.001},{lr_v:nan}]")
    assert any(e.startswith("pack[1]: lr_v=nan") for e in validate(nan))
