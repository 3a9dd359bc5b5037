"""(IA)^3 through peft's IA3Config: a learned scale l (starting at 1) of each tuned matrix's output
rows, or, for the MLP's matrices (peft's feedforward_modules), of its input columns."""

from __future__ import annotations

from functools import partial
from typing import Any, Optional, cast

import torch
from torch import nn

from qvtune.config.schema import RunConfig
from qvtune.config.weight_types import TYPES
from qvtune.model.methods.base import MethodModel, TrainData, chosen, peft_heads
from qvtune.model.methods.norms import UpdateNorms
from qvtune.model.weights import weight_type

ADAPTER = "default"  # peft's adapter name


class IA3(MethodModel):
    name = "ia3"

    def attach(
        self,
        model: nn.Module,
        cfg: RunConfig,
        tuned: dict[str, list[str]],
        heads: list[str],
        data: Optional[TrainData],
    ) -> nn.Module:
        from peft import IA3Config, get_peft_model

        mlp = [name for kind, names in tuned.items() if TYPES[kind].group == "mlp" for name in names]
        config = IA3Config(
            target_modules=chosen(tuned),
            feedforward_modules=mlp or None,
            modules_to_save=peft_heads(heads),
        )
        return get_peft_model(model, config)

    def norms(self, model: nn.Module) -> UpdateNorms:
        """||diag(l - 1) W|| (feedforward: ||W diag(l - 1)||), exactly, from W's row (column) norms
        squared, kept once: the scaled matrix is W's rows (columns) times l."""
        terms = []
        for name, module in model.named_modules():
            kind = weight_type(name)
            layer = cast(Any, module)
            if kind is not None and ADAPTER in getattr(layer, "ia3_l", {}):
                weight = layer.get_base_layer().weight.detach().float()
                sq = weight.pow(2).sum(0 if layer.is_feedforward else 1)
                terms.append((kind, partial(_scaled_sq, layer.ia3_l[ADAPTER], sq)))
        return UpdateNorms([], terms=terms)


def _scaled_sq(scale: torch.Tensor, norms_sq: torch.Tensor) -> torch.Tensor:
    return ((scale.flatten().float() - 1).pow(2) * norms_sq.to(scale.device)).sum()
