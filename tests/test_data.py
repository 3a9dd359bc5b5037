"""Batching and the tokenization cache: every example once per epoch, similar lengths per batch,
micro-batches that bound memory without changing the gradient, a cache that is reused by later
runs and changes its key when the tokenizer or the data change."""

import numpy as np
import pytest
import torch

from qvtune.data.encode import (
    collate,
    encode,
    encode_cached,
    micro_batches,
    tokenizer_fingerprint,
    train_batches,
)
from qvtune.data.tasks import Split
from qvtune.data.vocab import builtin_tokenizer


def test_length_grouped_batches_cover_every_example_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, size=3000)
    batches = train_batches(lengths, 32, seed=1, epoch=0, group_by_length=True)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(3000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean(
        [lengths[b].max() - lengths[b].min() for b in train_batches(lengths, 32, 1, 0, False)]
    )
    assert spread < random_spread / 5
    assert [b.tolist() for b in batches] == [b.tolist() for b in train_batches(lengths, 32, 1, 0, True)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in train_batches(lengths, 32, 1, 1, True)]


def test_collate_pads_dynamically_or_to_max_len():
    tok = builtin_tokenizer()
    enc = encode(tok, Split([["cat dog bird", "red"], ["cat", "sun moon"]], np.array([1, 0])), max_len=16)
    assert enc.lengths.tolist() == [7, 6]  # [CLS] a [SEP] b [SEP]
    dyn = collate(enc, np.array([1, 0]), tok.pad_token_id, None)
    assert dyn["input_ids"].shape == (2, 8) and dyn["attention_mask"].sum().item() == 13  # 7 rounded up to 8
    assert dyn["labels"].tolist() == [0, 1] and dyn["input_ids"][0, -1].item() == tok.pad_token_id
    padded = collate(enc, np.array([0, 1]), tok.pad_token_id, 16)
    assert padded["input_ids"].shape == (2, 16) and padded["attention_mask"].sum().item() == 13


def test_micro_batches_bound_padded_tokens_and_cover_the_batch():
    lengths = np.array([10, 120, 33, 64, 7, 128, 90, 15])
    index = np.arange(8)
    assert [p.tolist() for p in micro_batches(lengths, index, None, None)] == [index.tolist()]
    assert [p.tolist() for p in micro_batches(lengths, index, 4096, None)] == [
        index.tolist()
    ]  # fits: one piece
    pieces = micro_batches(lengths, index, 256, None)  # width 128: two rows per piece
    assert sorted(np.concatenate(pieces).tolist()) == index.tolist()
    assert all(len(p) * 128 <= 256 for p in pieces) and len(pieces) == 4
    assert lengths[pieces[0]].tolist() == [128, 120]  # longest first, so later pieces pad less
    assert len(micro_batches(lengths, index, 100, 128)) == 8  # never fewer than one row


def test_micro_batches_give_the_gradient_of_the_whole_batch():
    from qvtune.model.load import load_model
    from qvtune.model.methods import apply_method
    from qvtune.model.runs import LoneRun
    from qvtune.train.loop import backward
    from tests.helpers import make_config

    cfg = make_config("model=tiny-bert", "targets=qv", "attention_dropout=0")
    tok = builtin_tokenizer()
    rng = np.random.default_rng(0)
    words = [
        " ".join(rng.choice(["cat", "dog", "sun", "moon", "red"], size=n))
        for n in rng.integers(1, 30, size=12)
    ]
    data = encode(tok, Split([words], rng.integers(0, 2, size=12)), max_len=64)
    grads = []
    for max_tokens in (None, 40):
        model = LoneRun(apply_method(load_model(cfg.model, 2, seed=0), cfg))
        model.eval()  # no dropout: the two gradients must agree to rounding
        (loss,), _ = backward(
            model, [0], data, np.arange(12), tok.pad_token_id, None, max_tokens, torch.device("cpu")
        )
        grads.append((loss, [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (whole_loss, whole), (split_loss, split) = grads
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    assert len(whole) > 0 and all(torch.allclose(a, b, atol=1e-6, rtol=1e-4) for a, b in zip(whole, split))


def test_cache_is_reused_and_keyed(tmp_path, monkeypatch):
    tok = builtin_tokenizer()
    split = Split([["cat dog", "red blue green"], ["sun", "moon"]], np.array([0, 1]))
    first = encode_cached(tok, lambda: split, 32, tmp_path, "k1")
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and not [f for f in files if f.name.startswith(".")]  # no temp file left
    calls = []
    monkeypatch.setattr("qvtune.data.encode.encode", lambda *a: calls.append(a))
    reads = []
    again = encode_cached(tok, lambda: reads.append(1) or split, 32, tmp_path, "k1")
    assert calls == [] and reads == []  # a warm cache neither tokenizes nor reads the data
    assert again.ids.tolist() == first.ids.tolist() and again.labels.tolist() == [0, 1]
    other = builtin_tokenizer()
    other.add_tokens(["zebra"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(builtin_tokenizer()) == tokenizer_fingerprint(tok)


def test_tokenizer_fingerprint_is_stable_across_processes():
    import subprocess
    import sys

    code = (
        "from qvtune.model.load import load_tokenizer; from tests.helpers import make_config; "
        "from qvtune.data.encode import tokenizer_fingerprint; "
        "print(tokenizer_fingerprint(load_tokenizer(make_config().model)))"
    )
    prints = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(prints) == 1


def train_without_dropout(checkpoint, *overrides: str):
    """A LoRA qv run of the synthetic task, trained in this process with every dropout off (the
    model's hidden-state dropout too), so that two settings can be compared step by step."""
    from qvtune.config.rates import learning_rates
    from qvtune.model.load import load_model
    from qvtune.model.methods import apply_method, param_groups
    from tests.helpers import make_config, train_on_synthetic

    cfg = make_config("method=lora", "targets=qv", "lr=3e-3", "dropout=0", "attention_dropout=0", *overrides)
    net = load_model(cfg.model, 2, seed=0, attention_dropout=0.0)
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    net = apply_method(net, cfg)
    return train_on_synthetic(net, param_groups(net, learning_rates(cfg)), cfg, "fp32", checkpoint)


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-llama"])
def test_dynamic_padding_trains_exactly_as_padding_to_max_len_without_dropout(tmp_path, model):
    """With every dropout off, padding to 128 and padding to the batch's longest input give the same
    loss at every step and the same dev metric: pad positions are masked out of attention, so
    `padding` only changes speed. With dropout on, the two draw different dropout masks (their
    shapes differ): the same experiment, other random draws (README, The paper's recipe)."""

    def run(padding: str):
        return train_without_dropout(
            tmp_path / f"{padding}.pt",
            f"model={model}",
            "lam=4",
            f"padding={padding}",
            "group_by_length=false",
            "max_len=32",
            "epochs=1",
            "batch_size=16",
            "task.synthetic.train_size=96",
            "task.synthetic.eval_size=32",
        )

    dynamic, padded = run("dynamic"), run("max")
    assert len(dynamic.train_loss) == len(padded.train_loss) == 6
    for (step, a), (_, b) in zip(dynamic.train_loss, padded.train_loss):
        assert a == pytest.approx(b, rel=1e-5), step
    assert dynamic.history[-1]["metrics"] == pytest.approx(padded.history[-1]["metrics"], rel=1e-5)
    assert dynamic.tokens == padded.tokens  # real tokens: the pads are not counted in either


def test_accumulated_steps_never_mix_two_epochs_batches(tmp_path):
    """80 examples in batches of 16 are 5 an epoch: grad_accum=3 takes 3, then the last 2, so each
    step is one batch of 48 then one of 32 of the same shuffle, and the run trains as batch_size=48
    does (dropout off, no length grouping): the same loss at every step, samples and metric."""

    def run(batch_size: int, grad_accum: int):
        return train_without_dropout(
            tmp_path / f"{batch_size}-{grad_accum}.pt",
            "model=tiny-bert",
            "group_by_length=false",
            "epochs=2",
            f"batch_size={batch_size}",
            f"grad_accum={grad_accum}",
            "task.synthetic.train_size=80",
            "task.synthetic.eval_size=32",
        )

    accumulated, whole = run(16, 3), run(48, 1)
    assert accumulated.step == whole.step == 4 and accumulated.samples == whole.samples == 160
    for (step, a), (_, b) in zip(accumulated.train_loss, whole.train_loss, strict=True):
        assert a == pytest.approx(b, rel=1e-5), step
    assert [h["epoch"] for h in accumulated.history] == [1.0, 2.0]
    assert accumulated.history[-1]["metrics"] == pytest.approx(whole.history[-1]["metrics"], rel=1e-5)
