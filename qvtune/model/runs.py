"""The runs one model trains, behind one interface: a lone run (its method attached to the model:
PEFT's LoRA/DoRA, or a full fine-tune) is a pack of one; a pack of K (qvtune.model.pack) shares one
frozen base. Either way `attach` gives a model whose `forward(members, labels, **inputs)` returns each
listed member's mean loss and logits, and each run's parts: its optimizer groups, update norms and
parameter table. The training loop has one path for both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from qvtune.config.rates import learning_rates
from qvtune.config.schema import RunConfig
from qvtune.model.methods import (
    ParamGroup,
    UpdateNorms,
    apply_method,
    group_params,
    group_table,
    param_groups,
)
from qvtune.model.pack import build_pack


@dataclass
class RunParts:
    """What one run trains and reports: its groups (qk, v, head), the norms of its updates (made
    before its checkpoint loads: the updates count from the loaded model) and its parameter table."""

    groups: list[ParamGroup]
    norms: UpdateNorms
    table: dict[str, Any]


class LoneRun(nn.Module):
    """One run's model with the interface of a pack of one: losses and logits with a members axis.
    `text`: a causal LM whose labels are token ids on the answer (IGNORE elsewhere, qvtune.data.text)."""

    def __init__(self, model: nn.Module, text: bool = False) -> None:
        super().__init__()
        self.model = model
        self.text = text

    def forward(self, members: list[int], **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.text:
            result = self.model(**batch)
            return result.loss.unsqueeze(0), result.logits.unsqueeze(0)
        labels = batch.pop("labels")
        logits = self.model(**batch).logits
        total, count = answer_logprobs(logits, labels)
        # each example's mean over its answer tokens, then the batch mean: every example weighs the
        # same, so a batch split into micro-batches (max_batch_tokens) has the same gradient
        loss = -(total / count.clamp(min=1)).mean()
        return loss.unsqueeze(0), logits.unsqueeze(0)

    @torch.no_grad()
    def score(self, labels: torch.Tensor, **batch: torch.Tensor) -> torch.Tensor:
        """Each row's summed log-probability of its labelled tokens (a text task's answer + EOS)."""
        return answer_logprobs(self.model(**batch).logits, labels)[0]

    def generate(self, **kwargs: Any) -> torch.Tensor:
        """transformers' generation (KV cache) of the model, adapters included."""
        return cast(Any, self.model).generate(**kwargs)

    def save(self, folder: Path) -> None:
        """The tuned weights (a PEFT model saves its adapters and head) in `folder`."""
        # a transformers or PEFT model: torch types the attributes it does not know as Tensor | Module
        cast(Any, self.model).save_pretrained(folder)


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of log p(token) over the labelled positions (labels -100 elsewhere), each token
    predicted from the position before it, and how many positions are labelled."""
    target = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), target.flatten(), reduction="none", ignore_index=-100
    ).view_as(target)
    return -nll.sum(1), (target != -100).sum(1)


def attach(model: nn.Module, configs: list[RunConfig]) -> tuple[nn.Module, list[RunParts]]:
    """Each config's method on `model`, a freshly loaded base: one config is a lone run, several (the
    same but for learning rates and targets; validate() says which) a pack on one frozen base."""
    if len(configs) == 1:
        cfg = configs[0]
        tuned = apply_method(model, cfg)
        groups = param_groups(tuned, learning_rates(cfg), cfg.optim.grouping)
        table = group_table(groups, sum(p.numel() for p in tuned.parameters()))
        return LoneRun(tuned, cfg.task.format == "text"), [RunParts(groups, UpdateNorms.of(tuned), table)]
    pack = build_pack(model, configs)
    parts = []
    for i, (member, cfg) in enumerate(zip(pack.members, configs)):
        groups = group_params(member.named, learning_rates(cfg), cfg.optim.grouping)
        parts.append(RunParts(groups, pack.update_norms(i), group_table(groups, pack.lone_size(i))))
    return pack, parts
