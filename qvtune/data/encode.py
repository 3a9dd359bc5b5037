"""Token ids for a task, computed once per (tokenizer, data, max_len) and kept on disk for every run
of a sweep, and batches that spend compute on real tokens: length-grouped, dynamically padded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from qvtune.common.files import atomic_write
from qvtune.data.tasks import Split, TaskData

PAD_MULTIPLE = 8


@dataclass
class Encoded:
    """Ragged token ids stored flat: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray  # int32
    types: Optional[np.ndarray]  # token type ids (BERT segments), same layout, or None
    offsets: np.ndarray  # int64, len n + 1
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def subset(self, n: Optional[int]) -> Encoded:
        if n is None or n >= len(self):
            return self
        end = self.offsets[n]
        types = None if self.types is None else self.types[:end]
        return Encoded(self.ids[:end], types, self.offsets[: n + 1], self.labels[:n])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Changes whenever the tokenizer's vocabulary, rules or special tokens change."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None), state.pop("padding", None)  # set by each call, not identity
        blob = json.dumps(state, sort_keys=True)  # sorted: its hash maps change order between processes
    else:
        blob = repr(sorted(tokenizer.get_vocab().items()))
    blob += repr((type(tokenizer).__name__, tokenizer.pad_token_id, tokenizer.model_max_length))
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_cached(
    tokenizer: Any, read: Callable[[], Split], max_len: int, cache_dir: Path, key: str
) -> Encoded:
    """Tokenize the split that `read` returns, or read it from the cache without calling `read`;
    several jobs may race here safely.

    Each writer tokenizes into a private temp file and renames it into place, so readers see a
    complete file or none, and concurrent writers produce the same bytes.
    """
    path = Path(cache_dir).expanduser() / f"{key}-{max_len}.npz"
    if path.exists():
        with np.load(path) as z:
            return Encoded(z["ids"], z["types"] if "types" in z else None, z["offsets"], z["labels"])
    enc = encode(tokenizer, read(), max_len)
    # Any: numpy's savez also takes a keyword allow_pickle, which mypy matches **arrays against
    arrays: dict[str, Any] = {"ids": enc.ids, "offsets": enc.offsets, "labels": enc.labels}
    if enc.types is not None:
        arrays["types"] = enc.types
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return enc


def cache_key(task_name: str, tokenizer: Any, task: TaskData) -> str:
    """The tokenization cache's name for a task's splits: it changes with the tokenizer and with the data."""
    return f"{task_name}-{tokenizer_fingerprint(tokenizer)[:16]}-{task.fingerprint[:16]}"


def encode_task(
    tokenizer: Any, task: TaskData, task_name: str, max_len: int, cache_dir: Path
) -> tuple[Encoded, dict[str, Encoded]]:
    """Token ids of the task's train split and of each eval split, from the cache where they are."""
    key = cache_key(task_name, tokenizer, task)

    def read_eval(name: str) -> Callable[[], Split]:
        return lambda: task.evals[name]  # read only on a cache miss

    train = encode_cached(tokenizer, lambda: task.train, max_len, cache_dir, f"{key}-train")
    evals = {
        name: encode_cached(tokenizer, read_eval(name), max_len, cache_dir, f"{key}-{name}")
        for name in task.eval_names
    }
    return train, evals


def encode(tokenizer: Any, split: Split, max_len: int, chunk: int = 4096) -> Encoded:
    """Token ids of every example, tokenized in chunks so memory stays flat on large tasks."""
    ids, types, lengths = [], [], []
    for start in range(0, len(split), chunk):
        out = tokenizer(
            *[c[start : start + chunk] for c in split.columns], truncation=True, max_length=max_len
        )
        lengths.append(np.fromiter(map(len, out["input_ids"]), dtype=np.int64))
        ids.append(np.fromiter((t for x in out["input_ids"] for t in x), dtype=np.int32))
        if "token_type_ids" in out:
            types.append(np.fromiter((t for x in out["token_type_ids"] for t in x), dtype=np.int8))
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
    flat_types = np.concatenate(types) if types else None
    if flat_types is not None and not flat_types.any():
        flat_types = None  # single sentences: all zeros, the model's default
    return Encoded(np.concatenate(ids), flat_types, offsets, split.labels)


def train_batches(
    lengths: np.ndarray, batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[np.ndarray]:
    """One epoch's batches of example indices, a pure function of (seed, epoch) so runs resume exactly.

    Length-grouped: shuffle, cut into buckets of 50 batches, sort each bucket by length, cut it into
    batches and shuffle the batches: every batch holds similar lengths, the order stays random.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if not group_by_length:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    bucket = batch_size * 50
    batches = []
    for start in range(0, len(order), bucket):
        chunk = order[start : start + bucket]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def micro_batches(
    lengths: np.ndarray, index: np.ndarray, max_tokens: Optional[int], pad_to: Optional[int]
) -> list[np.ndarray]:
    """A batch cut into pieces of at most `max_tokens` padded tokens, longest first, each run as its
    own forward and backward pass: the same gradient in a fraction of the activation memory."""
    width = padded_width(lengths[index], pad_to)
    rows = max(1, max_tokens // width) if max_tokens else len(index)
    if rows >= len(index):
        return [index]
    index = index[np.argsort(-lengths[index], kind="stable")]
    return [index[i : i + rows] for i in range(0, len(index), rows)]


def padded_width(lengths: np.ndarray, pad_to: Optional[int]) -> int:
    """The longest example rounded up to a multiple of 8 (few distinct shapes keep the CPU allocator
    and kernel caches small), or `pad_to`, the paper's fixed length."""
    return int(pad_to or -(-lengths.max() // PAD_MULTIPLE) * PAD_MULTIPLE)


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation order: by length, so that padding is minimal; predictions are put back in place."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(data: Encoded, index: np.ndarray, pad_id: int, pad_to: Optional[int]) -> dict[str, torch.Tensor]:
    """The padded tensors of one batch (see `padded_width`)."""
    lengths = data.lengths[index]
    width = padded_width(lengths, pad_to)
    ids = np.full((len(index), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(index), width), dtype=np.int64)
    data_types = data.types
    types = None if data_types is None else np.zeros((len(index), width), dtype=np.int64)
    for row, (i, n) in enumerate(zip(index, lengths)):
        start = data.offsets[i]
        ids[row, :n] = data.ids[start : start + n]
        mask[row, :n] = 1
        if types is not None and data_types is not None:
            types[row, :n] = data_types[start : start + n]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    batch["labels"] = torch.from_numpy(data.labels[index])
    return batch
