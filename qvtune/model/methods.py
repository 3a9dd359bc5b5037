"""Methods (full fine-tune, LoRA, DoRA) applied to exactly the targeted modules (any weight type of
qvtune.config.weight_types, in the chosen layers), and the optimizer's parameter groups: every
trainable tensor lands in exactly one of the run's groups (qk, v, then o and mlp where targeted, head;
with LoRA+ a "<group>.B" for each group's B matrices), decided by the module that owns it (not by
substrings of its name). A causal LM (text tasks) trains no head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from qvtune.config.rates import LearningRates
from qvtune.config.schema import RunConfig
from qvtune.config.weight_types import QKV, TYPES
from qvtune.model.weights import head_modules, tuned_modules, weight_type

PAPER_GROUPS = ("qk", "v", "head")  # the groups the paper's scripts know (see paper_group)


@dataclass
class ParamGroup:
    name: str  # a key of LearningRates.groups: qk | v | o | mlp | head, or "<group>.B" (LoRA+)
    lr: float
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


def apply_method(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """Freeze everything, then make trainable the targeted projections (or adapters on them) and the
    head, and keep every trainable tensor in fp32 whatever the frozen base's dtype."""
    return trainables_in_fp32(_attach(model, cfg))


def trainables_in_fp32(model: nn.Module) -> nn.Module:
    """Store trainable tensors in fp32: in bf16 an AdamW step at lr 1e-5 on a weight near 0.02 is below
    half an ulp and is lost, so a bf16 head would never move. Compute still runs under autocast."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def _attach(model: nn.Module, cfg: RunConfig) -> nn.Module:
    chosen = [name for names in tuned_modules(model, cfg.targets, cfg.layers).values() for name in names]
    heads = head_modules(model, required=cfg.task.format != "text")  # a causal LM keeps its own head
    if cfg.method.name == "full":
        model.requires_grad_(False)
        for name in chosen + heads:
            model.get_submodule(name).requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=int(cfg.rank),
        # peft annotates lora_alpha as int, but a float alpha works (its scaling is alpha / r)
        lora_alpha=float(cfg.alpha if cfg.alpha is not None else cfg.rank),  # type: ignore[arg-type]
        lora_dropout=float(cfg.dropout),
        target_modules=chosen,  # full dotted names: exactly these modules, nothing matched by accident
        use_dora=cfg.method.name == "dora",
        modules_to_save=heads or None,
        bias="none",
    )
    return get_peft_model(model, peft_config)


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
    matrix's is "<group>.B" (group_params folds it into the group where LoRA+ is off)."""
    get_base_model = getattr(model, "get_base_model", None)  # a PEFT model wraps the base model
    base = get_base_model() if get_base_model is not None else model
    # PEFT wraps them as base_model.model.<head>; a causal LM (text tasks) has none: its head group is empty
    heads = set(head_modules(base, required=False))
    owner: dict[int, str] = {}
    for module_name, module in model.named_modules():  # parents come before their children
        kind = weight_type(module_name)
        if kind is not None:
            group = TYPES[kind].group
            lora_b = getattr(module, "lora_B", None)  # PEFT's LoRA layer: its B matrices (LoRA+)
            for p in lora_b.parameters() if isinstance(lora_b, nn.ModuleDict) else ():
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


class UpdateNorms:
    """Frobenius norms of the accumulated updates per weight type (over all layers): W_q, W_k, W_v in
    every run (the paper's curves), and every other type the run tunes (`types`, in registry order).

    Full fine-tune: ||W_t - W_0||. LoRA/DoRA: ||s * B A||, the adapters' product, computed through
    r x r Gram matrices so that it costs little even on wide models. `lora` holds (weight type, A, B,
    s) per adapted projection, `full` (weight type, W, W_0) per tuned one; `of` finds them in a model.
    """

    def __init__(
        self,
        lora: list[tuple[str, torch.Tensor, torch.Tensor, float]],
        full: Optional[list[tuple[str, torch.Tensor, torch.Tensor]]] = None,
    ) -> None:
        self.lora, self.full = lora, full or []
        tuned = {kind for kind, *_ in [*self.lora, *self.full]}
        self.types = [t for t in TYPES if t in QKV or t in tuned]

    @classmethod
    def of(cls, model: nn.Module) -> UpdateNorms:
        lora, full = [], []
        for name, module in model.named_modules():
            kind = weight_type(name)
            if kind is None:
                continue
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                lora.append((kind, a, b, float(module.scaling["default"])))
            elif isinstance(module, nn.Linear) and module.weight.requires_grad:
                full.append((kind, module.weight, module.weight.detach().clone()))
        return cls(lora, full)

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        sq = dict.fromkeys(self.types, 0.0)
        for kind, w, w0 in self.full:
            sq[kind] += float((w.float() - w0.float()).pow(2).sum())
        for kind, a, b, s in self.lora:
            a, b = a.float(), b.float()  # r x d_in, d_out x r
            sq[kind] += s * s * float(((b.T @ b) * (a @ a.T)).sum())
        return {k: v**0.5 for k, v in sq.items()}
