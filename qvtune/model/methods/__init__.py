"""The methods on the model side, one module per family (full, lora: LoRA and its variants, adalora,
ia3, galore), registered under the names of qvtune.config.methods.METHODS: each attaches itself to
exactly the targeted modules (any weight type of qvtune.config.weight_types, in the chosen layers),
says how its update norm is measured and what it adds to training (another optimizer, a step hook, a
loss term). Beside them the run's optimizer groups (groups.py) and update norms (norms.py)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from qvtune.config.schema import RunConfig
from qvtune.model.methods.adalora import AdaLora
from qvtune.model.methods.base import MethodModel, TrainData, Training
from qvtune.model.methods.full import Full
from qvtune.model.methods.galore import Galore
from qvtune.model.methods.groups import (
    PAPER_GROUPS,
    ParamGroup,
    format_group_table,
    group_params,
    group_table,
    owners,
    paper_group,
    param_groups,
)
from qvtune.model.methods.ia3 import IA3
from qvtune.model.methods.lora import Dora, Eva, Lora, OLora, Pissa, RsLora
from qvtune.model.methods.norms import UpdateNorms
from qvtune.model.weights import head_modules, tuned_modules

# Every method by name: the same names as qvtune.config.methods.METHODS (a test checks).
MODEL_METHODS: dict[str, MethodModel] = {
    m.name: m for m in (Full(), Lora(), Dora(), RsLora(), Pissa(), OLora(), Eva(), AdaLora(), IA3(), Galore())
}

__all__ = [
    "MODEL_METHODS",
    "PAPER_GROUPS",
    "MethodModel",
    "ParamGroup",
    "TrainData",
    "Training",
    "UpdateNorms",
    "apply_method",
    "format_group_table",
    "group_params",
    "group_table",
    "method_model",
    "owners",
    "paper_group",
    "param_groups",
    "trainables_in_fp32",
]


def method_model(cfg: RunConfig) -> MethodModel:
    return MODEL_METHODS[cfg.method.name]


def apply_method(model: nn.Module, cfg: RunConfig, data: Optional[TrainData] = None) -> nn.Module:
    """Freeze everything, then make trainable the targeted projections (or adapters on them) and the
    head, and keep every trainable tensor in fp32 whatever the frozen base's dtype. `data`: the run's
    training split, for the methods that read it when they attach (eva; adalora's step count)."""
    tuned = tuned_modules(model, cfg.targets, cfg.layers)
    heads = head_modules(model, required=cfg.task.format != "text")  # a causal LM keeps its own head
    return trainables_in_fp32(method_model(cfg).attach(model, cfg, tuned, heads, data))


def trainables_in_fp32(model: nn.Module) -> nn.Module:
    """Store trainable tensors in fp32: in bf16 an AdamW step at lr 1e-5 on a weight near 0.02 is below
    half an ulp and is lost, so a bf16 head would never move. Compute still runs under autocast."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model
