"""AdaLoRA through peft's AdaLoraConfig: SVD-form adapters s / init_r B diag(E) A on the tuned
matrices, whose rank budget the training loop reallocates after each optimizer step
(`update_and_allocate`), and an orthogonality penalty on A and B added to the training loss.

peft adds that penalty in AdaLoraModel.forward, which a PeftModel without a task type bypasses (and a
text task computes its loss from the logits), so qvtune adds it itself, in the training loss of both
task formats (Training.penalty, read by qvtune.model.runs.LoneRun)."""

from __future__ import annotations

from functools import partial
from typing import Any, Optional, cast

import torch
from torch import nn

from qvtune.config.methods import method_options
from qvtune.config.schema import RunConfig
from qvtune.model.methods.base import MethodModel, TrainData, Training, chosen, peft_heads, planned_steps
from qvtune.model.methods.norms import UpdateNorms, lowrank_sq
from qvtune.model.weights import weight_type

ADAPTER = "default"  # peft's adapter name


class AdaLora(MethodModel):
    name = "adalora"

    def attach(
        self,
        model: nn.Module,
        cfg: RunConfig,
        tuned: dict[str, list[str]],
        heads: list[str],
        data: Optional[TrainData],
    ) -> nn.Module:
        from peft import AdaLoraConfig, get_peft_model

        options = method_options(cfg)
        total = planned_steps(cfg, data)
        config = AdaLoraConfig(
            target_r=int(options.rank),
            init_r=int(options.initial_rank),
            lora_alpha=float(options.alpha if options.alpha is not None else options.rank),  # type: ignore[arg-type]
            lora_dropout=float(options.dropout),
            tinit=int(options.tinit * total),
            tfinal=int(options.tfinal * total),
            deltaT=int(options.deltaT),
            orth_reg_weight=float(options.orth_reg_weight),
            total_step=total,
            target_modules=chosen(tuned),
            modules_to_save=peft_heads(heads),
            bias="none",
        )
        peft_model = get_peft_model(model, config)
        for name, p in peft_model.named_parameters():
            if ".ranknum." in name:  # peft's constant init_r, left trainable when built on the meta device
                p.requires_grad_(False)
        return peft_model

    def norms(self, model: nn.Module) -> UpdateNorms:
        """||s / init_r B diag(E) A|| per matrix (E's pruned entries are 0), as peft's delta weight."""
        terms = []
        for name, module in model.named_modules():
            kind = weight_type(name)
            layer = cast(Any, module)
            if kind is not None and ADAPTER in getattr(layer, "lora_E", {}):
                terms.append((kind, partial(_svd_sq, layer)))
        return UpdateNorms([], terms=terms)

    def training(self, model: nn.Module, cfg: RunConfig) -> Training:
        return AdaLoraTraining(model)


def _svd_sq(layer: Any) -> torch.Tensor:
    scale = float(layer.scaling[ADAPTER]) / (float(layer.ranknum[ADAPTER]) + 1e-5)  # as peft's forward
    a = layer.lora_A[ADAPTER] * layer.lora_E[ADAPTER]  # diag(E) A
    return lowrank_sq(a, layer.lora_B[ADAPTER], scale)


class AdaLoraTraining(Training):
    """The rank budget after each step, the orthogonality penalty, and the allocator's state (its
    importance averages and the rank pattern) in every checkpoint, so that a run resumes exactly."""

    def __init__(self, model: nn.Module) -> None:
        self.tuner = cast(Any, model).base_model  # peft's AdaLoraModel
        self.config = self.tuner.peft_config[ADAPTER]
        # the adapters' A (r x d_in) and B (d_out x r): the penalty keeps A A^T and B^T B near I
        self.factors = [
            (p, name.split(".lora_")[1].startswith("A"))
            for name, p in self.tuner.named_parameters()
            if (".lora_A." in name or ".lora_B." in name) and name.endswith(f".{ADAPTER}")
        ]

    def penalty(self) -> Optional[torch.Tensor]:
        """peft's orthogonal regularisation (AdaLoraModel.forward): orth_reg_weight x the mean over the
        factors of ||P P^T - I||_F (A) or ||P^T P - I||_F (B)."""
        terms = []
        for p, is_a in self.factors:
            cov = p @ p.T if is_a else p.T @ p
            terms.append(torch.linalg.norm(cov - torch.eye(len(cov), device=cov.device, dtype=cov.dtype)))
        return self.config.orth_reg_weight * torch.stack(terms).mean() if terms else None

    def after_step(self, step: int) -> None:
        self.tuner.update_and_allocate(step)

    def state_dict(self) -> dict[str, Any]:
        allocator = self.tuner.rankallocator
        return {
            "ipt": allocator.ipt,
            "exp_avg_ipt": allocator.exp_avg_ipt,
            "exp_avg_unc": allocator.exp_avg_unc,
            "rank_pattern": self.config.rank_pattern,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        allocator = self.tuner.rankallocator
        device = self.factors[0][0].device if self.factors else torch.device("cpu")
        for key in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, key, {n: t.to(device) for n, t in state.get(key, {}).items()})
        self.config.rank_pattern = state.get("rank_pattern")
