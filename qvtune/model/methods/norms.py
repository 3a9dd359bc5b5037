"""The update norms a run logs at every step (update_norm/<type>): the Frobenius norm of what its
method has changed in each weight type's matrices, summed over the layers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import nn

from qvtune.config.weight_types import QKV, TYPES
from qvtune.model.weights import weight_type


def lowrank_sq(a: torch.Tensor, b: torch.Tensor, s: float = 1.0) -> torch.Tensor:
    """||s B A||^2 through r x r Gram matrices (B: d_out x r, A: r x d_in): cheap even on wide models."""
    a, b = a.float(), b.float()
    return s * s * ((b.T @ b) * (a @ a.T)).sum()


class UpdateNorms:
    """Frobenius norms of the accumulated updates per weight type (over all layers): W_q, W_k, W_v in
    every run (the paper's curves), and every other type the run tunes (`types`, in registry order).

    `lora` holds (weight type, A, B, s) per adapted projection: ||s B A||. `full` holds (weight type, W,
    W_0) per tuned matrix: ||W - W_0||. `terms` holds (weight type, f) where a method computes a
    module's squared norm itself (qvtune.model.methods: PiSSA's from its start, AdaLoRA's SVD form,
    IA3's scales). `of` finds LoRA adapters and tuned matrices in a model.
    """

    def __init__(
        self,
        lora: list[tuple[str, torch.Tensor, torch.Tensor, float]],
        full: Optional[list[tuple[str, torch.Tensor, torch.Tensor]]] = None,
        terms: Optional[Sequence[tuple[str, Callable[[], torch.Tensor]]]] = None,
    ) -> None:
        self.lora, self.full, self.terms = lora, full or [], list(terms or [])
        tuned = {kind for kind, *_ in [*self.lora, *self.full, *self.terms]}
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
        for i, (kind, w, w0) in enumerate(self.full):
            if w0.device != w.device:  # the model moved to its device after the start was kept
                w0 = w0.to(w.device)
                self.full[i] = (kind, w, w0)
            sq[kind] += float((w.float() - w0.float()).pow(2).sum())
        for kind, a, b, s in self.lora:
            sq[kind] += float(lowrank_sq(a, b, s))
        for kind, f in self.terms:
            sq[kind] += float(f())
        return {k: v**0.5 for k, v in sq.items()}
