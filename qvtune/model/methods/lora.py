"""LoRA and the methods that are LoRA with another scale or another start, through peft's LoraConfig:
lora, dora (use_dora), rslora (use_rslora), pissa and olora (init_lora_weights: they start from a
decomposition of W and rewrite the base weight to the residual), eva (init_lora_weights=eva, then
initialize_lora_eva_weights over the run's first training batches)."""

from __future__ import annotations

from functools import partial
from typing import Any, Optional, cast

import torch
from torch import nn

from qvtune.config.methods import method_options
from qvtune.config.schema import RunConfig
from qvtune.model.methods.base import MethodModel, TrainData, chosen, on_meta, peft_heads
from qvtune.model.methods.norms import UpdateNorms, lowrank_sq


class Lora(MethodModel):
    name = "lora"
    deferred = False  # peft makes the adapters empty (low_cpu_mem_usage): another step fills them

    def variant(self, options: Any, meta: bool) -> dict[str, Any]:
        """LoraConfig's arguments that make this variant of LoRA (none for LoRA itself); `meta`: the
        model is a structure on the meta device (for its counts), with no weights to start from."""
        return {}

    def attach(
        self,
        model: nn.Module,
        cfg: RunConfig,
        tuned: dict[str, list[str]],
        heads: list[str],
        data: Optional[TrainData],
    ) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        options = method_options(cfg)
        config = LoraConfig(
            r=int(options.rank),
            # peft annotates lora_alpha as int, but a float alpha works (its scaling is alpha / r)
            lora_alpha=float(options.alpha if options.alpha is not None else options.rank),  # type: ignore[arg-type]
            lora_dropout=float(options.dropout),
            target_modules=chosen(tuned),
            modules_to_save=peft_heads(heads),
            bias="none",
            **self.variant(options, on_meta(model)),
        )
        return get_peft_model(model, config, low_cpu_mem_usage=self.deferred)


class Dora(Lora):
    name = "dora"

    def variant(self, options: Any, meta: bool) -> dict[str, Any]:
        return {"use_dora": True}


class RsLora(Lora):
    name = "rslora"

    def variant(self, options: Any, meta: bool) -> dict[str, Any]:
        return {"use_rslora": True}


class Pissa(Lora):
    """PiSSA: B_0 A_0 is W's top-r singular part (over s), and the base weight becomes W - s B_0 A_0."""

    name = "pissa"

    def variant(self, options: Any, meta: bool) -> dict[str, Any]:
        return {} if meta else {"init_lora_weights": self.name}  # on meta: the same shapes, no SVD

    def norms(self, model: nn.Module) -> UpdateNorms:
        """||s (B A - B_0 A_0)||: the change of W - s B_0 A_0 + s B A since the start."""
        terms = [
            (kind, partial(_from_start, a, b, a.detach().clone(), b.detach().clone(), s))
            for kind, a, b, s in UpdateNorms.of(model).lora
        ]
        return UpdateNorms([], terms=terms)


def _from_start(
    a: torch.Tensor, b: torch.Tensor, a0: torch.Tensor, b0: torch.Tensor, s: float
) -> torch.Tensor:
    """||s (B A - B_0 A_0)||^2 as the one product [B, B_0] [A; -A_0] of rank 2r."""
    return lowrank_sq(torch.cat([a, -a0.to(a.device)]), torch.cat([b, b0.to(b.device)], dim=1), s)


class OLora(Pissa):
    """OLoRA: B_0 A_0 is the QR decomposition's first r columns and rows (Q_r R_r)."""

    name = "olora"


class Eva(Lora):
    """EVA: A holds the top right singular vectors of each layer's inputs on the run's first training
    batches (peft's incremental SVD, with adapters disabled), ranks spread by explained variance up to
    rho x r; B = 0. Without data (a structure-only model for counts) the adapters stay uninitialised."""

    name = "eva"
    deferred = True  # initialize_lora_eva_weights makes every adapter at its rank

    def variant(self, options: Any, meta: bool) -> dict[str, Any]:
        from peft import EvaConfig

        return {"init_lora_weights": "eva", "eva_config": EvaConfig(rho=float(options.rho))}

    def attach(
        self,
        model: nn.Module,
        cfg: RunConfig,
        tuned: dict[str, list[str]],
        heads: list[str],
        data: Optional[TrainData],
    ) -> nn.Module:
        from peft import initialize_lora_eva_weights

        options = method_options(cfg)
        peft_model = super().attach(model, cfg, tuned, heads, data)
        if data is None:
            if not on_meta(peft_model):
                raise ValueError(
                    "method=eva initialises its adapters from the run's training batches: give data"
                )
            return peft_model
        batches = data.first_batches(cfg, int(options.batches))
        device = next(model.parameters()).device
        # EVA draws no random numbers of the run's: its own (peft's layer rebuilds) leave the run's state
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            initialize_lora_eva_weights(cast(Any, peft_model), batches, show_progress_bar=False)
        return peft_model
