"""Token ids for a task, computed once per (tokenizer, data, max_len) and kept on disk for every run
of a sweep, and batches that spend compute on real tokens: length-grouped, dynamically padded. A text
task's ids come from qvtune.data.text (prompt + answer + EOS; labels on the answer only)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from qvtune.common.files import atomic_write
from qvtune.data.tasks import Split, TaskData
from qvtune.data.text import IGNORE, answer_ids, answer_prefix, prompt_ids, uses_chat

if TYPE_CHECKING:
    from qvtune.config.schema import TaskConfig

PAD_MULTIPLE = 8


@dataclass
class Encoded:
    """Ragged token ids stored flat: example i is ids[offsets[i]:offsets[i+1]]. A text task's example is
    its prompt's first prompt_lengths[i] tokens, then the answer and EOS; references hold the answers."""

    ids: np.ndarray  # int32
    types: Optional[np.ndarray]  # token type ids (BERT segments), same layout, or None
    offsets: np.ndarray  # int64, len n + 1
    labels: np.ndarray
    prompt_lengths: Optional[np.ndarray] = None  # int64, text tasks only
    references: Optional[list[str]] = None  # the answers' texts, text tasks only

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
        prompts = None if self.prompt_lengths is None else self.prompt_lengths[:n]
        references = None if self.references is None else self.references[:n]
        return Encoded(self.ids[:end], types, self.offsets[: n + 1], self.labels[:n], prompts, references)


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
    tokenizer: Any,
    read: Callable[[], Split],
    max_len: int,
    cache_dir: Path,
    key: str,
    text: Optional[TaskConfig] = None,
) -> Encoded:
    """Tokenize the split that `read` returns (as prompts and answers for the text task `text`), or
    read it from the cache without calling `read`; several jobs may race here safely.

    Each writer tokenizes into a private temp file and renames it into place, so readers see a
    complete file or none, and concurrent writers produce the same bytes.
    """
    path = Path(cache_dir).expanduser() / f"{key}-{max_len}.npz"
    if path.exists():
        with np.load(path) as z:
            references = json.loads(z["references"].tobytes()) if "references" in z else None
            prompts = z["prompt_lengths"] if "prompt_lengths" in z else None
            types = z["types"] if "types" in z else None
            return Encoded(z["ids"], types, z["offsets"], z["labels"], prompts, references)
    if text is not None:
        enc = encode_text(tokenizer, read(), max_len, text)
    else:
        enc = encode(tokenizer, read(), max_len)
    # Any: numpy's savez also takes a keyword allow_pickle, which mypy matches **arrays against
    arrays: dict[str, Any] = {"ids": enc.ids, "offsets": enc.offsets, "labels": enc.labels}
    if enc.types is not None:
        arrays["types"] = enc.types
    if enc.prompt_lengths is not None:
        arrays["prompt_lengths"] = enc.prompt_lengths
    if enc.references is not None:  # UTF-8 JSON bytes: no pickle, no fixed-width strings
        arrays["references"] = np.frombuffer(json.dumps(enc.references).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return enc


def cache_key(task_name: str, tokenizer: Any, task: TaskData) -> str:
    """The tokenization cache's name for a task's splits: it changes with the tokenizer and with the data
    (for a text task also with how its prompts become tokens: the chat template, if used)."""
    key = f"{task_name}-{tokenizer_fingerprint(tokenizer)[:16]}-{task.fingerprint[:16]}"
    if task.text is None:
        return key
    chat = tokenizer.chat_template if uses_chat(task.text, tokenizer) else "plain"
    return f"{key}-text{hashlib.sha256(str(chat).encode()).hexdigest()[:8]}"


def encode_task(
    tokenizer: Any, task: TaskData, task_name: str, max_len: int, cache_dir: Path
) -> tuple[Encoded, dict[str, Encoded]]:
    """Token ids of the task's train split and of each eval split, from the cache where they are."""
    key = cache_key(task_name, tokenizer, task)

    def read_eval(name: str) -> Callable[[], Split]:
        return lambda: task.evals[name]  # read only on a cache miss

    train = encode_cached(tokenizer, lambda: task.train, max_len, cache_dir, f"{key}-train", task.text)
    evals = {
        name: encode_cached(tokenizer, read_eval(name), max_len, cache_dir, f"{key}-{name}", task.text)
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
    if data.prompt_lengths is not None:  # a text task: the answer's tokens, the rest ignored
        batch["labels"] = torch.from_numpy(token_labels(data, index, width))
    else:
        batch["labels"] = torch.from_numpy(data.labels[index])
    return batch


def encode_text(tokenizer: Any, split: Split, max_len: int, task: TaskConfig, chunk: int = 4096) -> Encoded:
    """Prompt + answer + EOS per example, at most `max_len` tokens: a long answer is cut to leave one
    prompt token, a long prompt loses its start (the question and the answer cue are at its end). The
    answers' texts stay beside the ids: exact_match compares with them, whatever the cut."""
    assert split.answers is not None, "a text split has answers"
    chat, prefix = uses_chat(task, tokenizer), answer_prefix(task, tokenizer)
    ids: list[np.ndarray] = []
    lengths, prompts = [], []
    for start in range(0, len(split), chunk):
        rows = zip(
            prompt_ids(tokenizer, split.columns[0][start : start + chunk], chat),
            answer_ids(tokenizer, split.answers[start : start + chunk], prefix),
        )
        for p, a in rows:
            a = a[: max_len - 1]
            p = p[-(max_len - len(a)) :]
            ids.append(np.asarray(p + a, dtype=np.int32))
            lengths.append(len(p) + len(a))
            prompts.append(len(p))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    prompt_lengths = np.asarray(prompts, dtype=np.int64)
    return Encoded(flat, None, offsets, split.labels, prompt_lengths, list(split.answers))


def token_labels(data: Encoded, index: np.ndarray, width: int) -> np.ndarray:
    """The LM labels of a right-padded batch: each answer token's id (EOS included), IGNORE on the
    prompt and the padding, so the loss falls on the answer only."""
    assert data.prompt_lengths is not None, "a text split has prompt lengths"
    labels = np.full((len(index), width), IGNORE, dtype=np.int64)
    for row, i in enumerate(index):
        start, end = data.offsets[i], data.offsets[i + 1]
        p = data.prompt_lengths[i]
        labels[row, p : end - start] = data.ids[start + p : end]
    return labels
