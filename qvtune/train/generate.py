"""A text task's dev metrics (qvtune.data.text): greedy answers written with transformers' generation
(KV cache, left-padded batches, stop at EOS) for exact_match, and for tasks with label words the rank
of each label's answer by its log-probability given the prompt (one pass over the prompts, whose KV
cache every label's answer continues: cheap, deterministic), which also gives the dev loss."""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import numpy as np
import torch

from qvtune.config.schema import RunConfig, TaskConfig
from qvtune.data.encode import Encoded, eval_batches, micro_batches
from qvtune.data.text import IGNORE, answer_ids, answer_prefix, combine_splits, text_scores
from qvtune.model.pack import answer_logprobs


def text_metrics(
    model: Any,
    members: list[int],
    evals: dict[str, Encoded],
    task: TaskConfig,
    cfg: RunConfig,
    tokenizer: Any,
    device: torch.device,
    amp: Optional[torch.dtype],
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Each listed member's metrics on each eval split (see text_scores), member by member: a lone run
    (qvtune.model.runs.LoneRun) or a member of a pack writes and ranks its answers alone, in the
    batches of its lone run (`model.alone(member)`). With them, each member's summed dev loss on every
    split whose answers are its labels' answers (`gold_losses`), so that no loss pass is needed there."""
    words = None
    if task.label_words:
        words = answer_ids(tokenizer, list(task.label_words), answer_prefix(task, tokenizer))
    metrics, losses = [], []
    for member in members:
        one = model.alone(member)
        per_split, summed = {}, {}
        with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
            for name, data in evals.items():
                generated = generate(one, data, tokenizer, task.max_new_tokens, cfg, device)
                ranks = None
                if words is not None:
                    ranks = rank_scores(one, data, words, tokenizer.pad_token_id, cfg, device)
                    gold = gold_losses(data, words, ranks)
                    if gold is not None:
                        summed[name] = float(gold.sum())
                assert data.references is not None, "a text split has its answers"
                per_split[name] = text_scores(task, generated, data.references, data.labels, ranks)
        metrics.append(combine_splits(task, per_split))
        losses.append(summed)
    return metrics, losses


def gold_losses(data: Encoded, words: list[list[int]], ranks: np.ndarray) -> Optional[np.ndarray]:
    """Each example's dev loss (its answer tokens' mean negative log-probability, as the training loss
    computes it) read off the rank of its gold label: the answer encode_text wrote is the label's
    answer, the very tokens ranked after the same prompt. None where some answer is not (cut short by
    max_len): the loss then needs its own pass."""
    assert data.prompt_lengths is not None, "a text split has prompt lengths"
    for i, label in enumerate(data.labels):
        answer = data.ids[data.offsets[i] + data.prompt_lengths[i] : data.offsets[i + 1]]
        if label < 0 or not np.array_equal(answer, words[label]):
            return None
    counts = np.array([len(w) for w in words])[data.labels]
    return -ranks[np.arange(len(data)), data.labels] / counts


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
    example's prompt; the label that scores highest is the model's choice. Batches as `generate`'s,
    each scored by `label_logprobs`."""
    assert data.prompt_lengths is not None, "a text split has prompt lengths"
    scores = np.zeros((len(data), len(words)), dtype=np.float64)
    lengths = data.prompt_lengths + max(len(w) for w in words)
    pieces = (
        piece
        for index in eval_batches(data.prompt_lengths, cfg.eval_batch_size)
        for piece in micro_batches(lengths, index, cfg.max_batch_tokens, None)
    )
    for piece in pieces:
        batch = {k: v.to(device) for k, v in left_padded(prompts(data, piece), pad_id).items()}
        scores[piece] = label_logprobs(model, words, **batch).float().cpu().numpy()
    return scores


def label_logprobs(
    model: Any, words: list[list[int]], input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """[rows, labels]: each label's summed answer log-probability after each left-padded prompt, from one
    pass over the prompts and one over every label's answer. The prompt pass fills the KV cache and
    predicts each answer's first token (the last position's logits only); the answers then run on that
    cache repeated once per label, the rows of a prompt side by side, each answer's own tokens scored
    (`answer_logprobs`: their logits only, none at an answer's last token, EOS, which is only
    predicted). Positions count from each prompt's first real token, so left padding changes nothing
    (as in generate).
    `model`: a lone run or a pack's member (`lm`: its causal LM forward)."""
    rows, labels = len(input_ids), len(words)
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    out = model.lm(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    first = torch.log_softmax(out.logits[:, -1].float(), -1)
    scores = first[:, [w[0] for w in words]]  # (rows, labels)
    longest = max(len(w) for w in words)
    answers = torch.zeros(labels, longest, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros_like(answers)
    for j, word in enumerate(words):
        answers[j, : len(word)] = torch.tensor(word)
        mask[j, : len(word)] = 1
    targets = answers.masked_fill(mask == 0, IGNORE)
    targets[:, 0] = IGNORE  # the first token is the prompt pass's
    cache = out.cache
    cache.batch_repeat_interleave(labels)  # row r * labels + j: prompt r, label j
    start = attention_mask.sum(1).repeat_interleave(labels)[:, None]
    rest, _ = answer_logprobs(
        model.lm,
        targets.repeat(rows, 1),
        input_ids=answers.repeat(rows, 1),
        attention_mask=torch.cat([attention_mask.repeat_interleave(labels, 0), mask.repeat(rows, 1)], 1),
        position_ids=start + torch.arange(longest, device=start.device),
        cache=cache,
        use_cache=True,
    )
    return scores + rest.view(rows, labels)
