"""The weight-type resolver: the modules that hold W_q, W_k and W_v in every layer of any supported
family, and the classification head."""

from __future__ import annotations

from typing import Optional

from torch import nn

# Each family's name for the three projections (the module's last dotted name).
QKV_NAMES: dict[str, tuple[str, ...]] = {
    "q": ("query", "q_proj", "q_lin"),  # BERT/RoBERTa, Llama/Mistral/Qwen, DistilBERT
    "k": ("key", "k_proj", "k_lin"),
    "v": ("value", "v_proj", "v_lin"),
}

# Projections that compute q, k and v in one matrix: tuning "only W_v" is not expressible there.
FUSED_NAMES = ("c_attn", "qkv_proj", "query_key_value", "Wqkv", "qkv", "in_proj")

HEAD_NAMES = ("classifier", "score", "pre_classifier")  # the freshly initialised classification head


class ModelError(ValueError):
    """A model whose attention projections cannot be tuned as W_q, W_k, W_v."""


def weight_type(module_name: str) -> Optional[str]:
    """ "q", "k" or "v" for a projection module's dotted name, else None."""
    leaf = module_name.rsplit(".", 1)[-1]
    return next((t for t, names in QKV_NAMES.items() if leaf in names), None)


def attention_modules(model: nn.Module) -> dict[str, list[str]]:
    """The dotted names of every layer's W_q, W_k, W_v linear modules, per weight type.

    Raises ModelError naming what was found when the family is unknown or its projection is fused.
    """
    found: dict[str, list[str]] = {"q": [], "k": [], "v": []}
    linear_leaves: set[str] = set()
    fused: list[str] = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            linear_leaves.add(leaf)
            kind = weight_type(name)
            if kind and isinstance(module, nn.Linear):
                found[kind].append(name)
            elif leaf in FUSED_NAMES:
                fused.append(name)
    if fused and not any(found.values()):
        raise ModelError(
            f"{type(model).__name__} computes q, k and v in one fused projection ({fused[0]}); "
            "qvtune tunes W_q, W_k, W_v separately and supports families with separate projections "
            "(BERT/RoBERTa query/key/value, Llama/Mistral/Qwen q_proj/k_proj/v_proj, "
            "DistilBERT q_lin/k_lin/v_lin)"
        )
    counts = {k: len(v) for k, v in found.items()}
    if min(counts.values()) == 0 or len(set(counts.values())) != 1:
        raise ModelError(
            f"{type(model).__name__}: cannot find W_q, W_k, W_v in every layer (found {counts}); "
            f"its linear modules are named: {', '.join(sorted(linear_leaves)) or 'none'}"
        )
    return found


def head_modules(model: nn.Module) -> list[str]:
    """The classification head's top-level modules, trained in every method."""
    names = [name for name, _ in model.named_children() if name in HEAD_NAMES]
    if not names:
        children = ", ".join(name for name, _ in model.named_children())
        raise ModelError(f"{type(model).__name__}: no classification head among its modules ({children})")
    return names
