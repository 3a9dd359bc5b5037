"""Parameter groups and counts: every trainable tensor in exactly one of qk / v / head, by its module."""

import pytest
import torch
from torch import nn

from qvtune.config.rates import learning_rates
from qvtune.config.schema import parse_targets
from qvtune.model.load import build_on_meta, load_model
from qvtune.model.methods import apply_method, group_table, param_groups
from qvtune.model.weights import ModelError, attention_modules
from tests.helpers import make_config

# Trainable parameter counts of roberta-base with 2 labels (head 592,130 counted once).
ROBERTA_COUNTS = {
    ("full", "qkv", 8): 21_853_442,
    ("full", "qv", 8): 14_766_338,
    ("lora", "qkv", 8): 1_034_498,
    ("lora", "qkv", 16): 1_476_866,
    ("lora", "qv", 8): 887_042,
    ("lora", "qv", 16): 1_181_954,
    ("dora", "qkv", 8): 1_062_146,
    ("dora", "qkv", 16): 1_504_514,
    ("dora", "qv", 8): 905_474,
    ("dora", "qv", 16): 1_200_386,
}


@pytest.mark.parametrize("method, targets, rank", sorted(ROBERTA_COUNTS))
def test_roberta_base_counts(method, targets, rank):
    cfg = make_config(
        "model=roberta-base", "task=rte", f"method={method}", f"targets={targets}", f"rank={rank}"
    )
    model = apply_method(build_on_meta(cfg.model, cfg.task.num_labels), cfg)
    table = group_table(param_groups(model, learning_rates(cfg)), sum(p.numel() for p in model.parameters()))
    assert table["trainable"] == ROBERTA_COUNTS[(method, targets, rank)]
    assert {g["group"]: g["params"] for g in table["groups"]}["head"] == 592_130


MATRIX = {"query": "q", "q_proj": "q", "key": "k", "k_proj": "k", "value": "v", "v_proj": "v"}


def matrix_of(name: str) -> str:
    """q, k, v or head, read off a parameter's dotted name independently of the code under test."""
    for part in name.split("."):
        if part in MATRIX:
            return MATRIX[part]
        if part in ("classifier", "score"):
            return "head"
    raise AssertionError(name)


def owning_type(name: str) -> str:
    kind = matrix_of(name)
    return {"q": "qk", "k": "qk"}.get(kind, kind)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-roberta", "tiny-llama"])
@pytest.mark.parametrize("method", ["full", "lora", "dora"])
@pytest.mark.parametrize("targets", ["k", "v", "qv", "qkv"])
def test_every_trainable_tensor_in_exactly_one_group(model, method, targets):
    cfg = make_config(
        f"model={model}", f"method={method}", f"targets={targets}", "lr=1e-4", "lam=4", "head_lr=3e-4"
    )
    net = apply_method(load_model(cfg.model, 2, seed=0), cfg)
    groups = param_groups(net, learning_rates(cfg))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    grouped = [n for g in groups for n, _ in g.params]
    assert sorted(grouped) == sorted(trainable) and len(grouped) == len(set(grouped))
    rates = {g.name: g.lr for g in groups}
    assert rates == {"qk": 1e-4, "v": pytest.approx(4e-4), "head": 3e-4}
    for g in groups:
        for name, _ in g.params:
            assert owning_type(name) == g.name, name  # DoRA magnitudes of q/k stay in qk, head biases in head
    chosen = parse_targets(targets)
    layers = 2
    assert {matrix_of(n) for n in grouped} - {"head"} == set(chosen)
    per_matrix = {"full": 2, "lora": 2, "dora": 3}[method]  # weight+bias / A+B / A+B+magnitude
    if model == "tiny-llama" and method == "full":
        per_matrix = 1  # Llama projections have no bias
    assert len(grouped) - sum(1 for n in grouped if owning_type(n) == "head") == per_matrix * layers * len(
        chosen
    )


def test_gqa_shapes_are_resolved():
    cfg = make_config("model=tiny-llama", "targets=qkv")
    net = load_model(cfg.model, 2, seed=0)
    mods = attention_modules(net)
    assert [len(mods[t]) for t in "qkv"] == [2, 2, 2]
    q, k = net.get_submodule(mods["q"][0]), net.get_submodule(mods["k"][0])
    assert q.out_features == 16 and k.out_features == 8  # 4 query heads, 2 key/value heads


def test_fused_qkv_is_a_clear_error():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, num_labels=2)
    )
    with pytest.raises(ModelError, match="fused projection .*c_attn"):
        attention_modules(model)


def test_unknown_family_names_its_linear_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_in = nn.Linear(4, 4)
            self.proj_out = nn.Linear(4, 2)

    with pytest.raises(ModelError, match="named: proj_in, proj_out"):
        attention_modules(Net())


def test_full_finetune_leaves_other_weights_frozen():
    cfg = make_config("model=tiny-bert", "method=full", "targets=v")
    net = apply_method(load_model(cfg.model, 2, seed=0), cfg)
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert names == {
        "bert.encoder.layer.0.attention.self.value.weight",
        "bert.encoder.layer.0.attention.self.value.bias",
        "bert.encoder.layer.1.attention.self.value.weight",
        "bert.encoder.layer.1.attention.self.value.bias",
        "classifier.weight",
        "classifier.bias",
    }


def test_update_norms_track_lora_product():
    from qvtune.model.methods import UpdateNorms

    cfg = make_config("model=tiny-bert", "method=lora", "targets=qv", "rank=2")
    net = apply_method(load_model(cfg.model, 2, seed=0), cfg)
    norms = UpdateNorms.of(net)
    assert norms() == {"q": 0.0, "k": 0.0, "v": 0.0}  # LoRA starts at B = 0
    expected = 0.0
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.endswith(".value"):
                module.lora_B["default"].weight.fill_(0.1)
                delta = (
                    module.scaling["default"]
                    * module.lora_B["default"].weight
                    @ module.lora_A["default"].weight
                )
                expected += float(delta.pow(2).sum())
    got = norms()
    assert got["q"] == 0.0 and got["k"] == 0.0 and got["v"] == pytest.approx(expected**0.5, rel=1e-5)


@pytest.mark.parametrize(
    "model, key", [("tiny-bert", "attention_probs_dropout_prob"), ("tiny-llama", "attention_dropout")]
)
def test_attention_dropout_is_set_in_each_family(model, key):
    cfg = make_config(f"model={model}")
    own = getattr(load_model(cfg.model, 2, seed=0).config, key)
    assert getattr(load_model(cfg.model, 2, seed=0, attention_dropout=None).config, key) == own
    assert getattr(load_model(cfg.model, 2, seed=0, attention_dropout=0.25).config, key) == 0.25
