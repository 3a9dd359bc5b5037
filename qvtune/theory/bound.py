"""Theorem 1 on a real model's attention shapes (read from conf/model/<name>.yaml, no download).

The paper bounds the expected generalisation error of fine-tuning with rank-r LoRA on q-bit
parameters by sqrt(2 R^2 I / N) with I <= q * (number of adapted parameters). It states the result
for W_q, W_k, W_v all d_in x d_out, which gives the factors 4 (QV) and 6 (QKV). Rank r on a
d_in x d_out matrix adapts r (d_in + d_out) parameters, so for any set M of tuned matrices

    error <= sqrt(2 R^2 q r / N * sum_{W in M} (d_in + d_out)),

which is the paper's formula exactly when all shapes are equal, and the honest one with
grouped-query attention (Llama, Mistral), where W_k and W_v are narrower than W_q: dropping W_k then
removes less than 1/3 of the parameters and the ratio A_QV / A_QKV is closer to 1 than sqrt(4/6).
(The paper counts I in bits; in nats it carries a factor ln 2, which cancels in every ratio.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from qvtune.common.figures import save_figure
from qvtune.config.schema import config_dir
from qvtune.theory.report import text_table, write_csv, write_json

TUNED = {"QV": "qv", "QKV": "qkv"}


@dataclass
class Config:
    """`bound`: Theorem 1 for a model config's shapes."""

    model: str = "roberta-base"  # any conf/model/<name>.yaml with an `arch`
    rank: int = 8  # LoRA rank of the figure and of the layer-subset rows
    ranks: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    layers: Optional[list[int]] = None  # numbers of tuned layers; default: all, 1/2, 1/4, one
    N: list[float] = field(default_factory=lambda: [1e4, 1e5, 1e6])  # training samples
    q: int = 16  # bits per tuned parameter
    R: float = 1.0  # sub-Gaussian constant of the loss
    out: Optional[str] = None
    seed: int = 0  # the bound is deterministic; kept so every command takes the same keys


@dataclass(frozen=True)
class Shapes:
    """Per-layer (d_in, d_out) of W_q, W_k, W_v and the number of layers."""

    model: str
    num_layers: int
    q: tuple[int, int]
    k: tuple[int, int]
    v: tuple[int, int]

    def width(self, matrices: str) -> int:
        """sum over the given matrices ("qv", "qkv") of d_in + d_out, for one layer."""
        return sum(sum(getattr(self, m)) for m in matrices)

    @property
    def equal(self) -> bool:
        return self.q == self.k == self.v


def model_names() -> list[str]:
    """Model configs that carry attention shapes (hub.yaml has none: its shapes come at load time)."""
    names = []
    for path in sorted((config_dir() / "model").glob("*.yaml")):
        conf = OmegaConf.load(path)
        assert isinstance(conf, DictConfig), path  # a model config is a mapping
        arch = conf.get("arch") or {}
        if "hidden_size" in arch and "num_attention_heads" in arch:
            names.append(path.stem)
    return names


def load_shapes(name: str) -> Shapes:
    """W_q is hidden x (heads * head_dim); W_k, W_v are hidden x (kv_heads * head_dim)."""
    available = model_names()
    if name not in available:
        path = config_dir() / "model" / f"{name}.yaml"
        why = "has no arch shapes in its config" if path.is_file() else "is not a model config"
        raise ValueError(f"model={name!r} {why}; available: {', '.join(available)}")
    arch = OmegaConf.load(config_dir() / "model" / f"{name}.yaml").arch
    hidden, heads = int(arch.hidden_size), int(arch.num_attention_heads)
    kv_heads = int(arch.get("num_key_value_heads") or heads)
    head_dim = int(arch.get("head_dim") or hidden // heads)
    kv = (hidden, kv_heads * head_dim)
    return Shapes(name, int(arch.num_hidden_layers), (hidden, heads * head_dim), kv, kv)


def lora_params(shapes: Shapes, matrices: str, rank: int, layers: int) -> int:
    """Adapted parameters: r (d_in + d_out) per tuned matrix per tuned layer."""
    return rank * layers * shapes.width(matrices)


def bound(
    shapes: Shapes, matrices: str, rank: int, layers: int, N: float, q: int = 16, R: float = 1.0
) -> float:
    """sqrt(2 R^2 q r / N * sum over tuned matrices of (d_in + d_out))."""
    return math.sqrt(2 * R**2 * q * lora_params(shapes, matrices, rank, layers) / N)


def paper_bound(
    d_in: int, d_out: int, factor: int, rank: int, layers: int, N: float, q: int = 16, R: float = 1.0
) -> float:
    """Theorem 1 as printed: sqrt(factor R^2 q r / N * sum_{i in I} (d_in + d_out)), factor 4 or 6."""
    return math.sqrt(factor * R**2 * q * rank * layers * (d_in + d_out) / N)


def ratio(shapes: Shapes) -> float:
    """A_QV / A_QKV: independent of r, N, q, R and of how many layers are tuned."""
    return math.sqrt(shapes.width("qv") / shapes.width("qkv"))


def check(cfg: Config) -> None:
    """Reject values that make no sense before any work is done."""
    shapes = load_shapes(cfg.model)
    for key in ("rank", "q"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be a positive integer")
    if not cfg.ranks or min(cfg.ranks) < 1:
        raise ValueError(f"ranks={cfg.ranks} must be a non-empty list of positive integers")
    if not cfg.N or min(cfg.N) < 1:
        raise ValueError(f"N={cfg.N} must be a non-empty list of positive sample counts")
    if cfg.R <= 0:
        raise ValueError(f"R={cfg.R} must be positive")
    bad = [n for n in cfg.layers or [] if not 1 <= n <= shapes.num_layers]
    if bad or cfg.layers == []:
        raise ValueError(f"layers={cfg.layers}: each entry must be in 1..{shapes.num_layers} for {cfg.model}")


def _layer_counts(cfg: Config, total: int) -> list[int]:
    """The tuned-layer counts of the table: all layers first, then the subsets."""
    return sorted(set(cfg.layers or [max(total // 2, 1), max(total // 4, 1), 1]) | {total}, reverse=True)


def _figure(cfg: Config, shapes: Shapes) -> Figure:
    fig = Figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2)
    grid = np.logspace(math.log10(min(cfg.N)) - 1, math.log10(max(cfg.N)) + 1, 50)
    for label, style in (("QV", "-"), ("QKV", "--")):
        values = [bound(shapes, TUNED[label], cfg.rank, shapes.num_layers, n, cfg.q, cfg.R) for n in grid]
        left.loglog(grid, values, style, label=f"A_{label}")
    left.axhline(1.0, color="grey", lw=0.8, ls=":")
    left.set(
        xlabel="training samples N",
        ylabel="bound on expected generalisation error",
        title=f"{cfg.model}: r={cfg.rank}, all {shapes.num_layers} layers, q={cfg.q}, R={cfg.R:g}",
    )
    left.legend()
    names = model_names()
    ratios = [ratio(load_shapes(n)) for n in names]
    colors = ["C0" if load_shapes(n).equal else "C3" for n in names]
    right.barh(names, ratios, color=colors)
    for y, value in enumerate(ratios):
        right.text(value + 0.003, y, f"{value:.4f}", va="center", fontsize=8)
    right.axvline(math.sqrt(4 / 6), color="k", ls="--", lw=1, label="sqrt(4/6), equal shapes")
    right.set(xlim=(0.75, 1.0), xlabel="A_QV / A_QKV", title="ratio per model (red: grouped-query)")
    right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def run(cfg: Config, out: Path) -> str:
    """Compute the tables and figure for cfg.model; return the text to print."""
    shapes = load_shapes(cfg.model)
    L = shapes.num_layers
    counts, ranks = _layer_counts(cfg, L), sorted(set(cfg.ranks) | {cfg.rank})
    rows = []
    for rank in ranks:
        for layers in counts:
            for n in cfg.N:
                qv, qkv = (bound(shapes, TUNED[t], rank, layers, n, cfg.q, cfg.R) for t in ("QV", "QKV"))
                rows.append(
                    dict(
                        model=cfg.model,
                        rank=rank,
                        layers=layers,
                        N=n,
                        params_qv=lora_params(shapes, "qv", rank, layers),
                        params_qkv=lora_params(shapes, "qkv", rank, layers),
                        bound_qv=qv,
                        bound_qkv=qkv,
                        ratio=qv / qkv,
                    )
                )
    r, saved = ratio(shapes), 1 - shapes.width("qv") / shapes.width("qkv")
    equal = math.sqrt(4 / 6)
    d_in, d_out = shapes.q
    summary = dict(
        config=vars(cfg),
        shapes=dict(W_q=shapes.q, W_k=shapes.k, W_v=shapes.v, layers=L),
        equal_shapes=shapes.equal,
        ratio_qv_over_qkv=r,
        ratio_equal_shapes=equal,
        ratio_change_vs_equal=r / equal - 1,
        fraction_of_params_saved_by_dropping_k=saved,
        # the printed formula with W_q's shape for all three matrices (right only if shapes are equal)
        paper_formula=dict(
            qv=paper_bound(d_in, d_out, 4, cfg.rank, L, cfg.N[0], cfg.q, cfg.R),
            qkv=paper_bound(d_in, d_out, 6, cfg.rank, L, cfg.N[0], cfg.q, cfg.R),
            at=dict(rank=cfg.rank, layers=L, N=cfg.N[0]),
        ),
    )
    files = [write_csv(out / "bound.csv", rows), write_json(out / "bound.json", summary)]
    files += save_figure(_figure(cfg, shapes), out, "bound", compact=True)

    def row_of(rank: int, layers: int) -> list:
        sel = [x for x in rows if x["rank"] == rank and x["layers"] == layers]
        return (
            [rank, layers, sel[0]["params_qv"], sel[0]["params_qkv"]]
            + [v for x in sel for v in (x["bound_qv"], x["bound_qkv"])]
            + [sel[0]["ratio"]]
        )

    headers = (
        ["rank", "layers", "params QV", "params QKV"]
        + [f"{t} N={n:.0e}" for n in cfg.N for t in ("QV", "QKV")]
        + ["QV/QKV"]
    )
    table_rows = [row_of(k, L) for k in ranks] + [row_of(cfg.rank, n) for n in counts[1:]]
    gqa = "equal shapes" if shapes.equal else "grouped-query attention"
    lines = [
        f"Theorem 1 for {cfg.model} ({gqa}): W_q {d_in}x{d_out}, W_k {shapes.k[0]}x{shapes.k[1]}, "
        f"W_v {shapes.v[0]}x{shapes.v[1]}, {L} layers; q={cfg.q} bits, R={cfg.R:g}",
        text_table(headers, table_rows),
        f"A_QV/A_QKV = {r:.4f} (equal shapes: sqrt(4/6) = {equal:.4f}); dropping W_k removes "
        f"{saved:.1%} of the adapted parameters (1/3 with equal shapes).",
    ]
    if not shapes.equal:
        lines.append(
            f"With GQA the ratio is {r / equal - 1:+.1%} relative to sqrt(4/6): "
            "W_k is narrower, so leaving it out buys less."
        )
    lines.append("files: " + ", ".join(str(f) for f in files))
    return "\n".join(lines)
