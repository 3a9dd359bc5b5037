"""Batching and the tokenization cache: every example once per epoch, similar lengths per batch,
a cache that is reused by later runs and changes its key when the tokenizer or the data change."""
import numpy as np

from qvtune.data import collate, encode, encode_cached, tokenizer_fingerprint, train_batches
from qvtune.tasks import Split
from qvtune.vocab import builtin_tokenizer


def test_length_grouped_batches_cover_every_example_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, size=3000)
    batches = train_batches(lengths, 32, seed=1, epoch=0, group_by_length=True)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(3000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in train_batches(lengths, 32, 1, 0, False)])
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


def test_cache_is_reused_and_keyed(tmp_path, monkeypatch):
    tok = builtin_tokenizer()
    split = Split([["cat dog", "red blue green"], ["sun", "moon"]], np.array([0, 1]))
    first = encode_cached(tok, split, 32, tmp_path, "k1")
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and not [f for f in files if f.name.startswith(".")]  # no temp file left
    calls = []
    monkeypatch.setattr("qvtune.data.encode", lambda *a: calls.append(a))
    again = encode_cached(tok, split, 32, tmp_path, "k1")
    assert calls == [] and again.ids.tolist() == first.ids.tolist() and again.labels.tolist() == [0, 1]
    other = builtin_tokenizer()
    other.add_tokens(["zebra"])
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(builtin_tokenizer()) == tokenizer_fingerprint(tok)


def test_tokenizer_fingerprint_is_stable_across_processes():
    import subprocess
    import sys

    code = ("from qvtune.models import load_tokenizer; from tests.conftest import make_config; "
            "from qvtune.data import tokenizer_fingerprint; print(tokenizer_fingerprint(load_tokenizer(make_config().model)))")
    prints = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(prints) == 1
