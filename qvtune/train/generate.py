"""A text task's dev metrics (qvtune.data.text): greedy answers written with transformers' generation
(KV cache, left-padded batches, stop at EOS) for exact_match, and for tasks with label words the rank
of each label's answer by its log-probability given the prompt (cheap, deterministic)."""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import numpy as np
import torch

from qvtune.config.schema import RunConfig, TaskConfig
from qvtune.data.encode import Encoded, eval_batches, micro_batches
from qvtune.data.text import IGNORE, answer_ids, answer_prefix, combine_splits, text_scores


def text_metrics(
    model: Any,
    members: list[int],
    evals: dict[str, Encoded],
    task: TaskConfig,
    cfg: RunConfig,
    tokenizer: Any,
    device: torch.device,
    amp: Optional[torch.dtype],
) -> list[dict[str, float]]:
    """Each listed member's metrics on each eval split (see text_scores), member by member: a lone run
    (qvtune.model.runs.LoneRun) or a member of a pack writes and ranks its answers alone, in the
    batches of its lone run (`model.alone(member)`)."""
    words = None
    if task.label_words:
        words = answer_ids(tokenizer, list(task.label_words), answer_prefix(task, tokenizer))
    metrics = []
    for member in members:
        one = model.alone(member)
        per_split = {}
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            for name, data in evals.items():
                generated = generate(one, data, tokenizer, task.max_new_tokens, cfg, device)
                ranks = None
                if words is not None:
                    ranks = rank_scores(one, data, words, tokenizer.pad_token_id, cfg, device)
                assert data.references is not None, "a text split has its answers"
                per_split[name] = text_scores(task, generated, data.references, data.labels, ranks)
        metrics.append(combine_splits(task, per_split))
    return metrics


def prompts(data: Encoded, index: np.ndarray) -> list[np.ndarray]:
    """The prompt tokens of the examples `index`."""
    assert data.prompt_lengths is not None, "a text split has prompt lengths"
    return [data.ids[data.offsets[i] : data.offsets[i] + data.prompt_lengths[i]] for i in index]


def left_padded(rows: list[np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """Rows padded on the left, so that every row's next token is written at the same position."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


@torch.inference_mode()
def generate(
    model: Any, data: Encoded, tokenizer: Any, max_new_tokens: int, cfg: RunConfig, device: torch.device
) -> list[str]:
    """Each example's greedy answer to its prompt as text (special tokens dropped), in the data's order:
    batches of similar prompt lengths, each at most max_batch_tokens tokens with its answers."""
    assert data.prompt_lengths is not None, "a text split has prompt lengths"
    out = [""] * len(data)
    lengths = data.prompt_lengths + max_new_tokens
    pieces = (
        piece
        for index in eval_batches(data.prompt_lengths, cfg.eval_batch_size)
        for piece in micro_batches(lengths, index, cfg.max_batch_tokens, None)
    )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    for piece in pieces:
        batch = {k: v.to(device) for k, v in left_padded(prompts(data, piece), pad).items()}
        written = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos,
            pad_token_id=pad,
        )[:, batch["input_ids"].shape[1] :]
        for i, row in zip(piece, written.tolist()):
            row = row[: row.index(eos)] if eos in row else row
            out[i] = tokenizer.decode(row, skip_special_tokens=True)
    return out


@torch.inference_mode()
def rank_scores(
    model: Any, data: Encoded, words: list[list[int]], pad_id: int, cfg: RunConfig, device: torch.device
) -> np.ndarray:
    """[n, labels]: the summed log-probability of each label's answer (its tokens and EOS) after each
    example's prompt; the label that scores highest is the model's choice."""
    assert data.prompt_lengths is not None, "a text split has prompt lengths"
    scores = np.zeros((len(data), len(words)), dtype=np.float64)
    longest = max(len(w) for w in words)
    lengths = data.prompt_lengths + longest
    pieces = (
        piece
        for index in eval_batches(data.prompt_lengths, cfg.eval_batch_size)
        for piece in micro_batches(lengths, index, cfg.max_batch_tokens, None)
    )
    for piece in pieces:
        rows = prompts(data, piece)
        width = max(len(r) for r in rows) + longest
        for c, word in enumerate(words):
            ids = np.full((len(rows), width), pad_id, dtype=np.int64)
            mask = np.zeros_like(ids)
            labels = np.full_like(ids, IGNORE)
            for i, r in enumerate(rows):
                n = len(r) + len(word)
                ids[i, :n] = np.concatenate([r, word])
                mask[i, :n] = 1
                labels[i, len(r) : n] = word
            batch = {
                "input_ids": torch.from_numpy(ids).to(device),
                "attention_mask": torch.from_numpy(mask).to(device),
            }
            scores[piece, c] = model.score(torch.from_numpy(labels).to(device), **batch).float().cpu().numpy()
    return scores
