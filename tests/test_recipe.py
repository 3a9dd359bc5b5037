"""The paper's recipe: the recipe group's settings, the sweep files that use it, the scripts'
parameter grouping, and trainable tensors kept in fp32 over a half-precision base."""

import glob
from pathlib import Path

import pytest
import torch

from qvtune.config.rates import learning_rates
from qvtune.config.schema import wandb_mode
from qvtune.model.load import build_on_meta, load_model
from qvtune.model.methods import apply_method, param_groups
from tests.helpers import make_config, train_on_synthetic

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
PAPER = {
    "table1": "paper",
    "table2": "paper",
    "heatmap": "paper",
    "curves": "paper",
    "table1-llama": "paper-llama",
    "heatmap-llama": "paper-llama",
    "demo": "fast",
    "search": "fast",
    "search-optuna": "fast",
    "block": "paper",
    "loraplus": "paper",
    "table1-text": "fast",
    "heatmap-text": "fast",
}


def test_every_sweep_file_names_its_recipe():
    assert sorted(PAPER) == sorted(Path(f).stem for f in glob.glob(str(SWEEPS / "*.yaml")))
    for sweep, recipe in PAPER.items():
        assert make_config(f"+sweep={sweep}").recipe == recipe


def test_paper_recipe_sets_the_scripts_values():
    cfg = make_config("+sweep=table2")
    assert (cfg.dropout, cfg.attention_dropout, cfg.precision, cfg.model.dtype) == (
        0.1,
        None,
        "fp16",
        "float32",
    )
    assert (cfg.padding, cfg.group_by_length, cfg.batch_size, cfg.max_len) == ("max", False, 32, 128)
    assert cfg.max_batch_tokens is None
    assert (list(cfg.optim.betas), cfg.optim.max_grad_norm, cfg.optim.scheduler) == (
        [0.9, 0.99],
        1.0,
        "linear",
    )
    assert (cfg.optim.grouping, cfg.optim.weight_decay, cfg.optim.warmup_ratio) == ("by_module", 0.0, 0.0)
    llama = make_config("+sweep=heatmap-llama")
    assert (list(llama.optim.betas), llama.optim.scheduler, llama.max_steps) == (
        [0.9, 0.999],
        "constant",
        800,
    )
    assert (llama.batch_size, llama.grad_accum, llama.rank, llama.alpha, llama.dropout) == (
        128,
        2,
        16,
        16,
        0.1,
    )
    assert llama.model.dtype == "float32" and llama.model.gradient_checkpointing
    # alpha is the scripts' default 16 at rank 8 too: no Llama script passes --lora_alpha
    assert make_config("+sweep=table1-llama", "rank=8").alpha == 16


def test_recipe_fast_switches_a_paper_sweep_back():
    cfg = make_config("+sweep=table2", "recipe=fast")
    default = make_config("model=roberta-base")
    for key in ("dropout", "attention_dropout", "precision", "padding", "group_by_length"):
        assert cfg[key] == default[key], key
    assert cfg.optim == default.optim and cfg.recipe == "fast"
    assert (cfg.lr, cfg.alpha) == (1e-4, 8)  # the sweep's own settings stay


def grouped(model: str, method: str, targets: str, grouping: str) -> dict[str, str]:
    cfg = make_config(
        f"model={model}",
        f"method={method}",
        f"targets={targets}",
        "task=rte",
        "lam=4",
        f"optim.grouping={grouping}",
    )
    net = apply_method(build_on_meta(cfg.model, cfg.task.num_labels), cfg)
    return {n: g.name for g in param_groups(net, learning_rates(cfg), grouping) for n, _ in g.params}


def test_paper_grouping_reproduces_the_scripts_rule():
    lora = grouped("roberta-base", "lora", "qkv", "paper")
    head = {n: g for n, g in lora.items() if "classifier" in n}
    assert {g for n, g in head.items() if n.endswith("bias")} == {"v"}  # 1-D: lambda x lr
    assert {g for n, g in head.items() if n.endswith("weight")} == {"head"}  # at lr, like the scripts' groupK
    assert {g for n, g in lora.items() if ".value." in n} == {"v"}
    assert {g for n, g in lora.items() if ".query." in n or ".key." in n} == {"qk"}
    full = grouped("roberta-base", "full", "qkv", "paper")
    assert {g for n, g in full.items() if ".query.bias" in n or ".key.bias" in n} == {
        "qk"
    }  # 'query'/'key' named
    dora = grouped("tiny-llama", "dora", "qkv", "paper")
    magnitudes = {n: g for n, g in dora.items() if "magnitude" in n}
    assert {g for n, g in magnitudes.items() if "q_proj" in n or "k_proj" in n} == {
        "v"
    }  # the scripts' side effect
    # by module (the default), every tensor is where its module is
    assert {g for n, g in grouped("tiny-llama", "dora", "qkv", "by_module").items() if "k_proj" in n} == {
        "qk"
    }


@pytest.mark.parametrize("method", ["full", "lora", "dora"])
def test_trainable_tensors_are_fp32_over_a_bf16_base(method):
    cfg = make_config("model=tiny-llama", f"method={method}", "targets=qv", "model.dtype=bfloat16", "lr=1e-5")
    net = apply_method(load_model(cfg.model, 2, seed=0), cfg)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for _, p in trainable), [
        (n, p.dtype) for n, p in trainable
    ]
    frozen = {p.dtype for p in net.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}


def test_one_step_at_lr_1e5_moves_a_fp32_head_over_a_bf16_base(tmp_path):
    cfg = make_config(
        "model=tiny-llama",
        "method=lora",
        "targets=qv",
        "model.dtype=bfloat16",
        "lr=1e-5",
        "max_steps=1",
        "batch_size=8",
        "task.synthetic.train_size=16",
        "task.synthetic.eval_size=8",
    )
    net = apply_method(load_model(cfg.model, 2, seed=0), cfg)
    groups = param_groups(net, learning_rates(cfg))
    head = [p for g in groups if g.name == "head" for _, p in g.params]
    before = [p.detach().clone() for p in head]
    state = train_on_synthetic(net, groups, cfg, "bf16", tmp_path / "ckpt.pt")
    assert state.step == 1 and state.status == "completed"
    changed = [float((p.detach() - b).abs().max()) for p, b in zip(head, before)]
    assert all(c > 0 for c in changed), changed
    # why: an AdamW step (about lr in size) on a bf16 weight near 0.02 is below half an ulp, and lost
    w = torch.tensor(0.02, dtype=torch.bfloat16)
    assert w - 1e-5 == w


def test_wandb_mode_from_the_environment_unless_given(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(make_config()) == "disabled"
    assert wandb_mode(make_config("wandb.mode=online")) == "online"
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(make_config()) == "offline"
