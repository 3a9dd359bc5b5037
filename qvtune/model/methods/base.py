"""What every method shares on the model side: the interface each one implements (attach, update
norms, what it adds to training), the training data a method may read when it attaches, and the
default training additions (AdamW over the run's groups, nothing else)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, cast

import torch
from torch import nn

from qvtune.config.budget import budget, planned_budget
from qvtune.config.schema import OptimConfig, RunConfig
from qvtune.data.encode import Encoded, collate, train_batches
from qvtune.model.methods.groups import ParamGroup
from qvtune.model.methods.norms import UpdateNorms


@dataclass
class TrainData:
    """The run's training split as a method may read it when it attaches: EVA's first batches, the
    run's planned steps for AdaLoRA's schedule."""

    data: Encoded
    pad_id: int

    def steps(self, cfg: RunConfig) -> int:
        return budget(len(self.data), cfg).steps

    def first_batches(self, cfg: RunConfig, n: int) -> list[dict[str, torch.Tensor]]:
        """The run's first `n` training batches, in its own order (epoch 0 of qvtune.data.encode's
        train_batches), as model inputs without labels, padded to their longest row (the padding is
        masked out)."""
        order = train_batches(self.data.lengths, cfg.batch_size, cfg.seed, 0, cfg.group_by_length)
        batches = [collate(self.data, index, self.pad_id, None) for index in order[:n]]
        return [{k: v for k, v in batch.items() if k != "labels"} for batch in batches]


def planned_steps(cfg: RunConfig, data: Optional[TrainData]) -> int:
    """The run's optimizer steps: from its data where given, else from the task's size hint (a model
    attached without data, e.g. for its structure or counts), at least 1."""
    if data is not None:
        return max(data.steps(cfg), 1)
    planned = planned_budget(cfg)
    return max(planned.steps if planned is not None else 1, 1)


class Training:
    """What a method adds to the training loop (qvtune.train.loop): the optimizer over the run's groups
    (AdamW here), a term added to the training loss, a hook after each optimizer step (before the
    gradients are cleared), and the state those keep, which a checkpoint saves so that a run resumes
    exactly."""

    def optimizer(self, groups: list[ParamGroup], optim: OptimConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            [{"params": [p for _, p in g.params], "lr": g.lr, "name": g.name} for g in groups if g.params],
            betas=cast(tuple[float, float], tuple(optim.betas)),  # the schema's list holds two
            eps=optim.eps,
            weight_decay=optim.weight_decay,
        )

    def penalty(self) -> Optional[torch.Tensor]:
        """A term added to the training loss (not to the dev loss), or None."""
        return None

    def after_step(self, step: int) -> None:
        """Called after the optimizer step `step` (0 for the first), before the gradients are cleared."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict saved (nothing here)."""


class MethodModel:
    """A method on the model side, registered under its name in qvtune.config.methods.METHODS."""

    name = ""

    def attach(
        self,
        model: nn.Module,
        cfg: RunConfig,
        tuned: dict[str, list[str]],
        heads: list[str],
        data: Optional[TrainData],
    ) -> nn.Module:
        """The model with the method on exactly the `tuned` modules (weight type -> module names) and the
        `heads` trainable, everything else frozen."""
        raise NotImplementedError

    def norms(self, model: nn.Module) -> UpdateNorms:
        """The run's update norms, from the model as attached (before a checkpoint loads)."""
        return UpdateNorms.of(model)

    def training(self, model: nn.Module, cfg: RunConfig) -> Training:
        return Training()


def peft_heads(heads: list[str]) -> Optional[list[str]]:
    """The heads as peft's modules_to_save (trained and saved beside the adapters); None for none."""
    return heads or None


def on_meta(model: nn.Module) -> bool:
    """A structure on the meta device (for counts and early errors), with no weights."""
    return next(model.parameters()).device.type == "meta"


def chosen(tuned: dict[str, list[str]]) -> list[str]:
    """Every tuned module's full dotted name: exactly these, nothing matched by accident."""
    return [name for names in tuned.values() for name in names]
