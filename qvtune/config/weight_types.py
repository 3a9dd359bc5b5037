"""The weight types qvtune tunes, in one registry: each type's target name, its block, the optimizer
group (and so the learning rate) it trains in, and where every supported family keeps it. Everything
that names weight types (targets, groups, rates, update norms, record curves, collector columns,
packing) derives from here. Nothing heavy is imported: config checks and the collector use it.

A type is found by the ending of a module's dotted path (qvtune.model.weights.weight_type), not by its
last name alone: BERT's attention output `attention.output.dense` and its MLP output `<i>.output.dense`
share the name `dense`. In a path ending, `#` stands for a layer index. q, k and v keep the one-name
endings they always had, so every family whose projections are so named resolves as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import ListConfig


@dataclass(frozen=True)
class WeightType:
    name: str  # the target name: q, k, v, o, gate, up, down
    block: str  # attention | mlp
    group: str  # the optimizer group it trains in, each with its own rate: qk, v, o, mlp
    paths: tuple[str, ...]  # module path endings: BERT/RoBERTa, DistilBERT, Llama/Mistral/Qwen
    label: str  # what it is, for messages and table headers


TYPES: dict[str, WeightType] = {
    t.name: t
    for t in (
        WeightType("q", "attention", "qk", ("query", "q_lin", "q_proj"), "W_q"),
        WeightType("k", "attention", "qk", ("key", "k_lin", "k_proj"), "W_k"),
        WeightType("v", "attention", "v", ("value", "v_lin", "v_proj"), "W_v"),
        WeightType(
            "o", "attention", "o", ("attention.output.dense", "attention.out_lin", "self_attn.o_proj"), "W_o"
        ),
        WeightType("gate", "mlp", "mlp", ("mlp.gate_proj",), "W_gate"),
        WeightType("up", "mlp", "mlp", ("#.intermediate.dense", "ffn.lin1", "mlp.up_proj"), "W_up"),
        WeightType("down", "mlp", "mlp", ("#.output.dense", "ffn.lin2", "mlp.down_proj"), "W_down"),
    )
}

QKV = ("q", "k", "v")  # the paper's types: their update norms are recorded in every run

MLP = tuple(name for name, t in TYPES.items() if t.block == "mlp")

# Target names that stand for several types: `mlp` every MLP matrix the family has (resolved on the
# model: BERT has no gate), `all` every type.
ALIASES: dict[str, tuple[str, ...]] = {"mlp": MLP, "all": (*(n for n in TYPES if n not in MLP), "mlp")}

# The optimizer groups of tuned matrices in order (the head's comes after them).
GROUPS = tuple(dict.fromkeys(t.group for t in TYPES.values()))

_SEPARATORS = " _+,"
_TOKENS = (*TYPES, "mlp")  # the canonical order of targets' names


def _expected(value: Any) -> str:
    return (
        f"targets={value!r}: expected a non-empty subset of {', '.join(TYPES)} without repeats "
        "(mlp: every MLP matrix, all: every type), such as qv, qkv, [q,v,o] or all"
    )


def _names(token: str) -> list[str]:
    """One target word: a name (q, up, mlp, all), or single-letter names run together (qkv)."""
    if token in TYPES or token == "mlp":
        return [token]
    if token in ALIASES:
        return list(ALIASES[token])
    if token and all(c in TYPES for c in token):
        return list(token)
    raise ValueError(token)


def target_names(value: Any) -> list[str]:
    """The target names of `targets` in canonical order (mlp kept as one name: its types depend on the
    family). Raises ValueError naming the value on anything that is not a subset of the types."""
    if isinstance(value, (list, tuple, ListConfig)):
        words = [str(v).strip().lower() for v in value]
    elif isinstance(value, str):
        text = value.strip().lower()
        for sep in _SEPARATORS:
            text = text.replace(sep, " ")
        words = text.split()
    else:
        raise ValueError(_expected(value))
    try:
        names = [n for w in words for n in _names(w)]
    except ValueError:
        raise ValueError(_expected(value)) from None
    overlap = "mlp" in names and any(n in MLP for n in names)
    if not names or len(set(names)) != len(names) or overlap:
        raise ValueError(_expected(value))
    return [n for n in _TOKENS if n in names]


def canonical_targets(names: list[str]) -> str:
    """The one spelling of a target set in keys and records: one-letter names run together, the others
    after them joined by +: "qv", "qkv" (as ever), "qkvo", "qkvo+mlp", "qv+up+down"."""
    letters = "".join(n for n in names if len(n) == 1)
    return "+".join(([letters] if letters else []) + [n for n in names if len(n) > 1])


def target_groups(names: list[str]) -> list[str]:
    """The groups a run's targets train in beyond qk and v (which every run has, as before)."""
    tuned = {"mlp" if n == "mlp" else TYPES[n].group for n in names}
    return [g for g in GROUPS if g in tuned and g not in ("qk", "v")]


def target_label(canonical: str) -> str:
    """A target set in LaTeX: $\\mathbf{W}_q$, $\\mathbf{W}_o$, $\\mathbf{W}_{mlp}$."""
    names = target_names(canonical)
    return ", ".join(f"$\\mathbf{{W}}_{{{n}}}$" if len(n) > 1 else f"$\\mathbf{{W}}_{n}$" for n in names)


def target_order(canonical: str) -> tuple[int, ...]:
    """A sort key for target sets: by size, then by the registry's order of their names."""
    names = target_names(canonical)
    return (len(names), *(_TOKENS.index(n) for n in names))
