"""The weight-type resolver: the modules that hold each weight type of the registry
(qvtune.config.weight_types: W_q, W_k, W_v, W_o, the MLP's) in every layer of any supported family,
the ones a run tunes (its targets, in its layers), and the classification head."""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from qvtune.config.schema import parse_layers
from qvtune.config.weight_types import ALIASES, MLP, QKV, TYPES, canonical_targets, target_names

# Every path ending of the registry, split: (type, ending's names), "#" a layer index.
_ENDINGS = [(t.name, tuple(path.split("."))) for t in TYPES.values() for path in t.paths]

# Projections that compute q, k and v in one matrix: tuning "only W_v" is not expressible there.
FUSED_NAMES = ("c_attn", "qkv_proj", "query_key_value", "Wqkv", "qkv", "in_proj")

HEAD_NAMES = ("classifier", "score", "pre_classifier")  # the freshly initialised classification head


class ModelError(ValueError):
    """A model whose attention projections cannot be tuned as W_q, W_k, W_v (or lacks a type asked for)."""


def _ends_with(parts: list[str], ending: tuple[str, ...]) -> bool:
    tail = parts[-len(ending) :]
    return len(tail) == len(ending) and all(
        e == p or (e == "#" and p.isdigit()) for e, p in zip(ending, tail)
    )


def weight_type(module_name: str) -> Optional[str]:
    """The weight type (q, k, v, o, gate, up, down) whose module this dotted name is, else None."""
    parts = module_name.split(".")
    return next((kind for kind, ending in _ENDINGS if _ends_with(parts, ending)), None)


def layer_of(module_name: str) -> Optional[int]:
    """The layer a module is in: the first index among its dotted names (layer.3, layers.3)."""
    return next((int(p) for p in module_name.split(".") if p.isdigit()), None)


def weight_modules(model: nn.Module) -> dict[str, list[str]]:
    """The dotted names of every layer's linear modules per weight type the family has (q, k and v
    always; o and the MLP's where the registry knows the family's names for them), in layer order.

    Raises ModelError naming what was found when the family is unknown or its projection is fused.
    """
    found: dict[str, list[str]] = {t: [] for t in TYPES}
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
    if fused and not any(found[t] for t in QKV):
        raise ModelError(
            f"{type(model).__name__} computes q, k and v in one fused projection ({fused[0]}); "
            "qvtune tunes W_q, W_k, W_v separately and supports families with separate projections "
            "(BERT/RoBERTa query/key/value, Llama/Mistral/Qwen q_proj/k_proj/v_proj, "
            "DistilBERT q_lin/k_lin/v_lin)"
        )
    counts = {t: len(found[t]) for t in QKV}
    if min(counts.values()) == 0 or len(set(counts.values())) != 1:
        raise ModelError(
            f"{type(model).__name__}: cannot find W_q, W_k, W_v in every layer (found {counts}); "
            f"its linear modules are named: {', '.join(sorted(linear_leaves)) or 'none'}"
        )
    return {t: names for t, names in found.items() if names}


def tuned_modules(model: nn.Module, targets: Any, layers: Any = None) -> dict[str, list[str]]:
    """Per weight type a run tunes, the dotted names of its modules: the targets (mlp: every MLP type
    the family has, all: every type) in the chosen layers (null: all; qvtune.config.schema.parse_layers).

    Raises ModelError when the family lacks a type asked for or a layer index is past its depth.
    """
    found = weight_modules(model)
    names = target_names(targets)
    kinds = [k for n in names for k in (ALIASES[n] if n == "mlp" else (n,)) if n != "mlp" or k in found]
    missing = [TYPES[k].label for k in kinds if k not in found]
    if "mlp" in names and not any(k in found for k in MLP):
        missing.append("an MLP matrix")
    if missing:
        raise ModelError(
            f"{type(model).__name__}: targets={canonical_targets(names)}: no {missing[0]} found; its weight "
            f"types are "
            f"{', '.join(found)} (qvtune.config.weight_types knows each family's module names)"
        )
    depth = len(found["q"])
    chosen = parse_layers(layers)
    if chosen is None:
        wanted = set(range(depth))
    elif isinstance(chosen, str):  # last:N
        wanted = set(range(max(0, depth - int(chosen.split(":")[1])), depth))
    else:
        wanted = set(chosen)
    if not wanted <= set(range(depth)) or (isinstance(chosen, str) and int(chosen.split(":")[1]) > depth):
        raise ModelError(f"layers={layers}: {type(model).__name__} has {depth} layers (0 to {depth - 1})")
    return {k: [n for n in found[k] if layer_of(n) in wanted] for k in kinds}


def head_modules(model: nn.Module, required: bool = True) -> list[str]:
    """The classification head's top-level modules, trained in every method. A causal LM (text tasks)
    has none (`required=False`); a classifier without one is an error."""
    names = [name for name, _ in model.named_children() if name in HEAD_NAMES]
    if not names and required:
        children = ", ".join(name for name, _ in model.named_children())
        raise ModelError(f"{type(model).__name__}: no classification head among its modules ({children})")
    return names
