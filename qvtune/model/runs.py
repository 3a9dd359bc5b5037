"""The runs one model trains, behind one interface: a lone run (its method attached to the model:
PEFT's LoRA/DoRA, or a full fine-tune) is a pack of one; a pack of K (qvtune.model.pack) shares one
frozen base. Either way `attach` gives a model whose `forward(members, labels, **inputs)` returns each
listed member's mean loss and logits (and, for a text task, `alone(member)`: the member's model that
writes and ranks its answers), and each run's parts: its optimizer groups, update norms and
parameter table, and what its method adds to training (qvtune.model.methods.Training). The training
loop has one path for both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

import torch
from torch import nn

from qvtune.config.rates import learning_rates
from qvtune.config.schema import RunConfig
from qvtune.model.methods import (
    ParamGroup,
    TrainData,
    Training,
    UpdateNorms,
    apply_method,
    group_params,
    group_table,
    method_model,
    param_groups,
)
from qvtune.model.pack import answer_losses, build_pack


@dataclass
class RunParts:
    """What one run trains and reports: its groups (qk, v, head), the norms of its updates (made
    before its checkpoint loads: the updates count from the loaded model), its parameter table and
    what its method adds to training (its optimizer, a step hook: plain AdamW for a pack's members)."""

    groups: list[ParamGroup]
    norms: UpdateNorms
    table: dict[str, Any]
    training: Training = field(default_factory=Training)


class LoneRun(nn.Module):
    """One run's model with the interface of a pack of one: losses and logits with a members axis.
    `text`: a causal LM whose labels are token ids on the answer (IGNORE elsewhere, qvtune.data.text).
    `penalty`: a term its method adds to the training loss (AdaLoRA's orthogonality), not to the dev loss."""

    def __init__(
        self,
        model: nn.Module,
        text: bool = False,
        penalty: Optional[Callable[[], Optional[torch.Tensor]]] = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.text = text
        self.penalty = penalty

    def forward(self, members: list[int], **batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.text:
            result = self.model(**batch)
            return self._penalised(result.loss).unsqueeze(0), result.logits.unsqueeze(0)
        labels = batch.pop("labels")  # the answer's token ids; a text run returns no logits
        loss = self._penalised(answer_losses(self.model, labels, **batch).mean())
        return loss.unsqueeze(0), loss.new_empty(1, 0)

    def _penalised(self, loss: torch.Tensor) -> torch.Tensor:
        extra = self.penalty() if self.training and self.penalty is not None else None
        return loss if extra is None else loss + extra

    def lm(self, **inputs: Any) -> Any:
        """The causal LM forward of the model, adapters included (transformers' output: logits, KV cache)."""
        return self.model(**inputs)

    def generate(self, **kwargs: Any) -> torch.Tensor:
        """transformers' generation (KV cache) of the model, adapters included."""
        return cast(Any, self.model).generate(**kwargs)

    def alone(self, member: int) -> LoneRun:
        """The member as a lone text model (a pack's `alone`): the run itself."""
        return self

    def save(self, folder: Path) -> None:
        """The tuned weights (a PEFT model saves its adapters and head) in `folder`."""
        # a transformers or PEFT model: torch types the attributes it does not know as Tensor | Module
        cast(Any, self.model).save_pretrained(folder)


def attach(
    model: nn.Module, configs: list[RunConfig], data: Optional[TrainData] = None
) -> tuple[nn.Module, list[RunParts]]:
    """Each config's method on `model`, a freshly loaded base: one config is a lone run, several (the
    same but for learning rates and targets; validate() says which) a pack on one frozen base. `data`:
    the run's training split, which some methods read when they attach (eva, adalora)."""
    if len(configs) == 1:
        cfg = configs[0]
        method = method_model(cfg)
        tuned = apply_method(model, cfg, data)
        groups = param_groups(tuned, learning_rates(cfg), cfg.optim.grouping)
        table = group_table(groups, sum(p.numel() for p in tuned.parameters()))
        training = method.training(tuned, cfg)
        part = RunParts(groups, method.norms(tuned), table, training)
        return LoneRun(tuned, cfg.task.format == "text", training.penalty), [part]
    pack = build_pack(model, configs)
    parts = []
    for i, (member, cfg) in enumerate(zip(pack.members, configs)):
        groups = group_params(member.named, learning_rates(cfg), cfg.optim.grouping)
        parts.append(RunParts(groups, pack.update_norms(i), group_table(groups, pack.lone_size(i))))
    return pack, parts
