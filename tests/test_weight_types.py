"""The weight-type registry (qvtune.config.weight_types) and its resolver (qvtune.model.weights): every
type found by module path in each supported family (built on the meta device: no download, no
memory), the canonical target spellings, the rates of each group, and LoRA+ on the B matrices."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from qvtune.config.rates import learning_rates
from qvtune.config.weight_types import TYPES, target_groups, target_label, target_names, target_order
from qvtune.model.weights import ModelError, tuned_modules, weight_modules, weight_type
from tests.helpers import make_config

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=64)


def family(name: str) -> torch.nn.Module:
    """A two-layer model of the family, on the meta device."""
    import transformers as tf

    if name == "distilbert":
        config = tf.DistilBertConfig(dim=16, n_layers=2, n_heads=2, hidden_dim=32, vocab_size=64)
        cls = tf.DistilBertForSequenceClassification
    else:
        config_cls, cls = {
            "bert": (tf.BertConfig, tf.BertForSequenceClassification),
            "roberta": (tf.RobertaConfig, tf.RobertaForSequenceClassification),
            "llama": (tf.LlamaConfig, tf.LlamaForSequenceClassification),
            "mistral": (tf.MistralConfig, tf.MistralForSequenceClassification),
            "qwen2": (tf.Qwen2Config, tf.Qwen2ForSequenceClassification),
        }[name]
        config = config_cls(**TINY, pad_token_id=0)
    with torch.device("meta"):
        return cls(config)


# Each family's module of every type in layer 1, by its path inside the model's layer stack.
LAYER_1 = {
    "bert": {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "up": "intermediate.dense",
        "down": "output.dense",
    },
    "distilbert": {
        "q": "attention.q_lin",
        "k": "attention.k_lin",
        "v": "attention.v_lin",
        "o": "attention.out_lin",
        "up": "ffn.lin1",
        "down": "ffn.lin2",
    },
    "llama": {
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj",
        "up": "mlp.up_proj",
        "down": "mlp.down_proj",
    },
}
LAYER_1["roberta"] = LAYER_1["bert"]
LAYER_1["mistral"] = LAYER_1["qwen2"] = LAYER_1["llama"]
STACK = {
    "bert": "bert.encoder.layer",
    "roberta": "roberta.encoder.layer",
    "distilbert": "distilbert.transformer.layer",
    "llama": "model.layers",
    "mistral": "model.layers",
    "qwen2": "model.layers",
}


@pytest.mark.parametrize("name", sorted(STACK))
def test_every_type_is_found_by_path_in_each_family(name):
    found = weight_modules(family(name))
    assert list(found) == list(LAYER_1[name])  # registry order; BERT-like families have no gate
    for kind, path in LAYER_1[name].items():
        assert found[kind] == [f"{STACK[name]}.{i}.{path}" for i in range(2)]
        assert weight_type(f"{STACK[name]}.1.{path}") == kind
    mlp = [k for k in found if TYPES[k].block == "mlp"]
    assert list(tuned_modules(family(name), "mlp")) == mlp
    assert list(tuned_modules(family(name), "all")) == ["q", "k", "v", "o", *mlp]


def test_bert_output_dense_is_o_inside_attention_and_down_in_the_mlp():
    assert weight_type("roberta.encoder.layer.3.attention.output.dense") == "o"
    assert weight_type("roberta.encoder.layer.3.output.dense") == "down"
    assert weight_type("base_model.model.roberta.encoder.layer.3.output.dense") == "down"  # under PEFT
    assert weight_type("roberta.encoder.layer.3.output.LayerNorm") is None
    assert weight_type("classifier.dense") is None  # RoBERTa's head is the head, not a tuned type


def test_layers_select_by_index():
    model = family("llama")
    assert tuned_modules(model, "v", [1]) == {"v": ["model.layers.1.self_attn.v_proj"]}
    assert tuned_modules(model, "v", "last:1") == tuned_modules(model, "v", [1])
    assert tuned_modules(model, "v", "first:1") == {"v": ["model.layers.0.self_attn.v_proj"]}
    with pytest.raises(ModelError, match=r"layers=\[2\]: .* has 2 layers \(0 to 1\)"):
        tuned_modules(model, "v", [2])


def test_a_type_the_family_lacks_is_a_clear_error():
    with pytest.raises(ModelError, match="targets=gate: no W_gate found"):
        tuned_modules(family("bert"), "gate")


@pytest.mark.parametrize(
    "value, names, groups",
    [
        ("qv", ["q", "v"], []),
        ("[q,v,o]", ["q", "v", "o"], ["o"]),
        ("qkvo+mlp", ["q", "k", "v", "o", "mlp"], ["o", "mlp"]),
        ("v+down", ["v", "down"], ["mlp"]),
    ],
)
def test_target_names_and_groups(value, names, groups):
    assert target_names(value.strip("[]").split(",") if value.startswith("[") else value) == names
    assert target_groups(names) == groups


def test_target_labels_and_order():
    assert target_label("qv") == "$\\mathbf{W}_q$, $\\mathbf{W}_v$"
    assert target_label("o+mlp") == "$\\mathbf{W}_o$, $\\mathbf{W}_{mlp}$"
    sets = ["qkvo+mlp", "qv", "v", "qvo", "qkv"]
    assert sorted(sets, key=target_order) == ["v", "qv", "qkv", "qvo", "qkvo+mlp"]


def test_rates_per_group_and_loraplus():
    cfg = make_config(
        "method=lora", "targets=all", "lr=1e-4", "lam=4", "lam_o=2", "lam_mlp=0.5", "optim.loraplus_ratio=8"
    )
    groups = learning_rates(cfg).groups
    assert list(groups) == ["qk", "qk.B", "v", "v.B", "o", "o.B", "mlp", "mlp.B", "head"]
    assert groups["v.B"] == pytest.approx(8 * 4 * 1e-4) and groups["mlp"] == pytest.approx(0.5e-4)
    assert groups["o.B"] == pytest.approx(8 * 2e-4) and groups["head"] == 1e-4
    # the paper's runs keep their three groups; LoRA+ at 1 is off; a full fine-tune has no B
    assert list(learning_rates(make_config("targets=qkv", "optim.loraplus_ratio=1")).groups) == [
        "qk",
        "v",
        "head",
    ]
    assert list(learning_rates(make_config("targets=[q,v,o]")).groups) == ["qk", "v", "o", "head"]


def test_a_block_run_records_a_column_per_group_and_type(tmp_path):
    """The loop's lr_trace has one column per group (LoRA+'s B groups at R x their group's rate), its
    update norms one per type (q, k, v always), both named; the record's curves round-trip them."""
    from qvtune.model.load import load_model
    from qvtune.model.methods import UpdateNorms, apply_method, param_groups
    from qvtune.model.runs import LoneRun
    from qvtune.store.record import Curves, RunRecord
    from qvtune.train.loop import Member
    from tests.helpers import train_members

    cfg = make_config(
        "model=tiny-llama",
        "task=synthetic",
        "task.synthetic.train_size=64",
        "task.synthetic.eval_size=32",
        "method=lora",
        "targets=[q,v,o,mlp]",
        "layers=[1]",
        "lr=1e-2",
        "lam=4",
        "lam_mlp=0.5",
        "optim.loraplus_ratio=8",
        "optim.scheduler=constant",
        "max_steps=2",
        "rank=2",
    )
    net = apply_method(load_model(cfg.model, 2, cfg.seed, cfg.attention_dropout), cfg)
    groups = param_groups(net, learning_rates(cfg))
    member = Member(groups, UpdateNorms.of(net), tmp_path / "c.pt", lambda values, step: None)
    state = train_members(LoneRun(net), [member], cfg)[0]
    assert state.lr_groups == ["qk", "qk.B", "v", "v.B", "o", "o.B", "mlp", "mlp.B", "head"]
    trace = dict(zip(state.lr_groups, state.lr_trace[0][1:]))
    assert trace["v.B"] == pytest.approx(8 * 4e-2) and trace["mlp"] == pytest.approx(0.5e-2)
    assert state.norm_types == ["q", "k", "v", "o", "gate", "up", "down"]
    last = dict(zip(state.norm_types, state.update_norms[-1][1:]))
    assert last["k"] == 0.0 and min(last[t] for t in ("q", "v", "o", "gate", "up", "down")) > 0
    record = RunRecord.start(cfg, "abc123abc123", "fp32")
    assert record.rates["mlp.B"] == pytest.approx(8 * 0.5e-2) and record.rates["lam"] == 4
    curves = Curves(state.train_loss, state.update_norms, state.lr_trace, state.norm_types, state.lr_groups)
    assert Curves.from_dict(dataclasses.asdict(curves)) == curves
    old = Curves.from_dict({"update_norms": [[1, 0.1, 0.0, 0.2]], "lr_trace": [[1, 1e-3, 4e-3, 1e-3]]})
    assert (old.norm_types, old.lr_groups) == (["q", "k", "v"], ["qk", "v", "head"])  # written before names
