"""A full fine-tune: the tuned matrices' weights and biases and the head train, the rest is frozen."""

from __future__ import annotations

from typing import Optional

from torch import nn

from qvtune.config.schema import RunConfig
from qvtune.model.methods.base import MethodModel, TrainData, chosen


class Full(MethodModel):
    name = "full"

    def attach(
        self,
        model: nn.Module,
        cfg: RunConfig,
        tuned: dict[str, list[str]],
        heads: list[str],
        data: Optional[TrainData],
    ) -> nn.Module:
        model.requires_grad_(False)
        for name in chosen(tuned) + heads:
            model.get_submodule(name).requires_grad_(True)
        return model
