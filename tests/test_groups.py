"""Parameter groups and counts: every trainable tensor in exactly one of qk / v / head, by its module."""

import pytest
import torch
from torch import nn

from qvtune.config.rates import learning_rates
from qvtune.model.load import build_on_meta, load_model
from qvtune.model.methods import apply_method, group_table, param_groups
from qvtune.model.weights import ModelError, weight_modules
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
    # LoRA's shapes with another scale or start (EVA before its data spreads the ranks: uniform r)
    ("rslora", "qv", 8): 887_042,
    ("pissa", "qv", 8): 887_042,
    ("olora", "qv", 8): 887_042,
    ("eva", "qv", 8): 887_042,
    # AdaLoRA at rank 8 starts at init_r 12: A 12 x 768, B 768 x 12, E 12 per matrix, 24 matrices
    ("adalora", "qv", 8): 24 * (2 * 12 * 768 + 12) + 592_130,
    ("ia3", "qv", 8): 24 * 768 + 592_130,  # one scale per output row of each matrix
    ("galore", "qv", 8): 14_766_338,  # the full matrices, as method=full
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


# By hand. roberta-base: d = 768, d_ff = 3072, 12 layers, biases in full; LoRA r = 8 adds r (d_in + d_out)
# per matrix: 12,288 for q, k, v, o, 30,720 for up and down. smollm2: d = 576, W_k / W_v 576 -> 192,
# d_ff = 1536, 30 layers, no biases, head 576 x 2; LoRA r = 8: q, o 9,216, k, v 6,144, gate, up, down
# 16,896.
BLOCK_COUNTS = {
    ("roberta-base", "lora", "all", None): {
        "qk": 294_912,
        "v": 147_456,
        "o": 147_456,
        "mlp": 737_280,
        "head": 592_130,
    },
    ("roberta-base", "full", "all", None): {
        "qk": 14_174_208,
        "v": 7_087_104,
        "o": 7_087_104,
        "mlp": 12 * (2_362_368 + 2_360_064),
        "head": 592_130,
    },
    ("roberta-base", "lora", "[q,v,o]", "[0,11]"): {"qk": 24_576, "v": 24_576, "o": 24_576, "head": 592_130},
    ("roberta-base", "full", "[v,up]", "first:3"): {
        "qk": 0,
        "v": 3 * 590_592,
        "mlp": 3 * 2_362_368,
        "head": 592_130,
    },
    ("smollm2", "lora", "[q,v,o]", None): {"qk": 276_480, "v": 184_320, "o": 276_480, "head": 1_152},
    ("smollm2", "lora", "[q,k,v,o,mlp]", None): {
        "qk": 30 * (9_216 + 6_144),
        "v": 184_320,
        "o": 276_480,
        "mlp": 30 * 3 * 16_896,
        "head": 1_152,
    },
    ("smollm2", "full", "[o,mlp]", "last:2"): {
        "qk": 0,
        "v": 0,
        "o": 2 * 576 * 576,
        "mlp": 2 * 3 * 576 * 1536,
        "head": 1_152,
    },
}


@pytest.mark.parametrize("model, method, targets, layers", sorted(BLOCK_COUNTS, key=str))
def test_block_counts_by_hand(model, method, targets, layers):
    cfg = make_config(
        f"model={model}", "task=rte", f"method={method}", f"targets={targets}", f"layers={layers or 'null'}"
    )
    net = apply_method(build_on_meta(cfg.model, cfg.task.num_labels), cfg)
    groups = param_groups(net, learning_rates(cfg))
    assert {g.name: g.numel for g in groups} == BLOCK_COUNTS[(model, method, targets, layers)]


MATRIX = {"query": "q", "q_proj": "q", "key": "k", "k_proj": "k", "value": "v", "v_proj": "v"}
MATRIX.update(o_proj="o", gate_proj="gate", up_proj="up", down_proj="down", intermediate="up")


def matrix_of(name: str) -> str:
    """The weight type or head, read off a parameter's dotted name independently of the code under test."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in MATRIX:
            return MATRIX[part]
        if part in ("classifier", "score"):
            return "head"
        if part == "output" and parts[i + 1] == "dense":  # BERT: attention.output.dense is W_o
            return "o" if parts[i - 1] == "attention" else "down"
    raise AssertionError(name)


GROUP_OF = {
    "q": "qk",
    "k": "qk",
    "v": "v",
    "o": "o",
    "gate": "mlp",
    "up": "mlp",
    "down": "mlp",
    "head": "head",
}


def owning_type(name: str) -> str:
    return GROUP_OF[matrix_of(name)]


MLP_OF = {"tiny-bert": {"up", "down"}, "tiny-roberta": {"up", "down"}, "tiny-llama": {"gate", "up", "down"}}


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-roberta", "tiny-llama"])
@pytest.mark.parametrize("targets", ["k", "v", "qv", "qkv", "[q,v,o]", "[v,mlp]", "all"])
# LoRA+ (16) for the methods with B matrices; a full fine-tune has none
@pytest.mark.parametrize(
    ("method", "loraplus"), [("full", None), ("lora", None), ("lora", 16), ("dora", None), ("dora", 16)]
)
def test_every_trainable_tensor_in_exactly_one_group(model, method, targets, loraplus):
    cfg = make_config(
        f"model={model}",
        f"method={method}",
        f"targets={targets}",
        "lr=1e-4",
        "lam=4",
        "lam_o=2",
        "lam_mlp=0.5",
        "head_lr=3e-4",
        f"optim.loraplus_ratio={loraplus or 'null'}",
    )
    net = apply_method(load_model(cfg.model, 2, seed=0), cfg)
    groups = param_groups(net, learning_rates(cfg))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    grouped = [n for g in groups for n, _ in g.params]
    assert sorted(grouped) == sorted(trainable) and len(grouped) == len(set(grouped))
    chosen = {"[q,v,o]": {"q", "v", "o"}, "[v,mlp]": {"v", *MLP_OF[model]}}.get(targets, set(targets))
    if targets == "all":
        chosen = {"q", "k", "v", "o", *MLP_OF[model]}
    tuned = {"qk": 1e-4, "v": 4e-4, "o": 2e-4, "mlp": 0.5e-4}
    tuned = {g: lr for g, lr in tuned.items() if g in ("qk", "v") or g in {GROUP_OF[t] for t in chosen}}
    expected = {}
    for g, lr in tuned.items():
        expected[g] = pytest.approx(lr)
        if loraplus:
            expected[f"{g}.B"] = pytest.approx(lr * loraplus)
    assert {g.name: g.lr for g in groups} == {**expected, "head": 3e-4}
    assert [g.name for g in groups] == [*expected, "head"]  # qk, v first, as in every run before
    for g in groups:
        for name, _ in g.params:
            owner = owning_type(name) + (".B" if loraplus and ".lora_B." in name else "")
            assert owner == g.name, name  # DoRA magnitudes of q/k stay in qk, head biases in head
    layers = 2
    assert {matrix_of(n) for n in grouped} - {"head"} == chosen
    per_matrix = {"full": 2, "lora": 2, "dora": 3}[method]  # weight+bias / A+B / A+B+magnitude
    if model == "tiny-llama" and method == "full":
        per_matrix = 1  # Llama projections have no bias
    assert len(grouped) - sum(1 for n in grouped if owning_type(n) == "head") == per_matrix * layers * len(
        chosen
    )


@pytest.mark.parametrize("method", ["full", "lora"])
def test_layers_tune_only_those_layers(method):
    cfg = make_config("model=tiny-llama", f"method={method}", "targets=all", "layers=[1]")
    net = apply_method(load_model(cfg.model, 2, seed=0), cfg)
    tuned = {n for n, p in net.named_parameters() if p.requires_grad and owning_type(n) != "head"}
    assert tuned and all(".layers.1." in n for n in tuned)
    assert {matrix_of(n) for n in tuned} == {"q", "k", "v", "o", "gate", "up", "down"}


def test_a_layer_past_the_depth_and_a_missing_type_are_clear_errors():
    with pytest.raises(ModelError, match="layers=last:3: .* has 2 layers"):
        apply_method(
            load_model(make_config("model=tiny-bert").model, 2, seed=0), make_config("layers=last:3")
        )
    cfg = make_config("model=tiny-bert", "targets=[q,gate]")
    with pytest.raises(ModelError, match="no W_gate found; its weight types are q, k, v, o, up, down"):
        apply_method(load_model(cfg.model, 2, seed=0), cfg)


def test_gqa_shapes_are_resolved():
    cfg = make_config("model=tiny-llama", "targets=qkv")
    net = load_model(cfg.model, 2, seed=0)
    mods = weight_modules(net)
    assert [len(mods[t]) for t in "qkv"] == [2, 2, 2]
    q, k = net.get_submodule(mods["q"][0]), net.get_submodule(mods["k"][0])
    assert q.out_features == 16 and k.out_features == 8  # 4 query heads, 2 key/value heads


def test_fused_qkv_is_a_clear_error():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification(
        GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, num_labels=2)
    )
    with pytest.raises(ModelError, match="fused projection .*c_attn"):
        weight_modules(model)


def test_unknown_family_names_its_linear_modules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj_in = nn.Linear(4, 4)
            self.proj_out = nn.Linear(4, 2)

    with pytest.raises(ModelError, match="named: proj_in, proj_out"):
        weight_modules(Net())


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
