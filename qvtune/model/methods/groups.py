"""The optimizer's parameter groups of a run: every trainable tensor lands in exactly one of the run's
groups (qk, v, then o and mlp where targeted, head; with LoRA+ a "<group>.B" for each group's LoRA B
matrices), decided by the module that owns it (not by substrings of its name), whatever the method.
A causal LM (text tasks) trains no head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from qvtune.config.rates import LearningRates
from qvtune.config.weight_types import TYPES
from qvtune.model.weights import head_modules, weight_type

PAPER_GROUPS = ("qk", "v", "head")  # the groups the paper's scripts know (see paper_group)


@dataclass
class ParamGroup:
    name: str  # a key of LearningRates.groups: qk | v | o | mlp | head, or "<group>.B" (LoRA+)
    lr: float
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


def param_groups(model: nn.Module, rates: LearningRates, grouping: str = "by_module") -> list[ParamGroup]:
    """Assign each trainable tensor to the group of its owning module (`by_module`), or by the paper
    scripts' rule (`paper`, see paper_group); a tensor owned by none of them is an error."""
    owner = owners(model)
    named = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group = owner.get(id(p))
        if group is None:
            raise RuntimeError(f"trainable parameter {name} belongs to no tuned weight type and no head")
        named.append((name, p, group))
    return group_params(named, rates, grouping)


def group_params(
    named: list[tuple[str, nn.Parameter, str]], rates: LearningRates, grouping: str
) -> list[ParamGroup]:
    """The run's groups (rates.groups, in order) of trainable tensors given as (name, tensor, owning
    module's group, see owners). A LoRA B matrix joins its group's ".B" group where LoRA+ made one.
    The paper's rule applies to the groups it knows; W_o's and the MLP's tensors keep their group."""
    groups = {g: ParamGroup(g, lr) for g, lr in rates.groups.items()}
    for name, p, owner in named:
        base, _, part = owner.partition(".")
        group = paper_group(name, p, base) if grouping == "paper" and base in PAPER_GROUPS else base
        groups[f"{group}.{part}" if f"{group}.{part}" in groups else group].params.append((name, p))
    return list(groups.values())


def paper_group(name: str, p: nn.Parameter, owner: str) -> str:
    """The group the paper's public code (EfficientFT's MyTrainer.create_my_optimizer) gives a tensor:
    a name containing "value" or "v_proj", or any 1-D tensor, goes to eta_V unless its name contains
    "query" or "key"; everything else to eta_QK. So the head's biases train at lambda x lr, and a Llama
    DoRA's q_proj/k_proj magnitude vectors land in the V group. The head's matrices keep the head
    group (at head_lr, which is lr unless given: the scripts have no head rate)."""
    if "value" in name or "v_proj" in name or p.ndim == 1:
        return "qk" if "query" in name or "key" in name else "v"
    return "head" if owner == "head" else "qk"


def owners(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> the group of the module that owns it (qk, v, o, mlp or head); a LoRA B
    matrix's (peft's LoRA layers, AdaLoRA's too) is "<group>.B" (group_params folds it into the group
    where LoRA+ is off)."""
    get_base_model = getattr(model, "get_base_model", None)  # a PEFT model wraps the base model
    base = get_base_model() if get_base_model is not None else model
    # PEFT wraps them as base_model.model.<head>; a causal LM (text tasks) has none: its head group is empty
    heads = set(head_modules(base, required=False))
    owner: dict[int, str] = {}
    for module_name, module in model.named_modules():  # parents come before their children
        kind = weight_type(module_name)
        if kind is not None:
            group = TYPES[kind].group
            lora_b = getattr(
                module, "lora_B", None
            )  # its B matrices (LoRA+): modules or, in AdaLoRA, tensors
            if isinstance(lora_b, (nn.ModuleDict, nn.ParameterDict)):
                for p in lora_b.parameters():
                    owner.setdefault(id(p), f"{group}.B")
        elif module_name.rsplit(".", 1)[-1] in heads:
            group = "head"
        else:
            continue
        for p in module.parameters():
            owner.setdefault(id(p), group)
    return owner


def group_table(groups: list[ParamGroup], total: int) -> dict[str, Any]:
    """Parameter counts for the run record and the table printed at start; `total`: the model's."""
    return {
        "total": total,
        "trainable": sum(g.numel for g in groups),
        "groups": [
            {"group": g.name, "lr": g.lr, "tensors": len(g.params), "params": g.numel} for g in groups
        ],
    }


def format_group_table(table: dict[str, Any]) -> str:
    lines = [f"{'group':<6} {'lr':>10} {'tensors':>8} {'params':>14}"]
    for g in table["groups"]:
        lines.append(f"{g['group']:<6} {g['lr']:>10.3g} {g['tensors']:>8} {g['params']:>14,}")
    lines.append(f"{'total':<6} {'':>10} {'':>8} {table['trainable']:>14,}  trainable of {table['total']:,}")
    return "\n".join(lines)
