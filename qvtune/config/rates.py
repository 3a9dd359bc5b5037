"""The learning rates of a run: eta_QK (`lr`), eta_V (`lam` x `lr`, or `lr_v`), W_o's and the MLP's
(`lam_o`, `lam_mlp` x `lr`), the head's, and with LoRA+ its B matrices'; the config keys that set them,
and the one rounding that makes two spellings of a rate equal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from qvtune.config.methods import METHODS
from qvtune.config.schema import RunConfig
from qvtune.config.weight_types import GROUPS, target_groups, target_names

# The ratio to eta_QK that sets each group's rate beyond qk and v (v's is lam): one per group of the
# registry (qvtune.config.weight_types.GROUPS), each a field of RunConfig.
GROUP_RATIOS = {g: f"lam_{g}" for g in GROUPS if g not in ("qk", "v")}

# The config keys that set a run's learning rates: what a search chooses between within a group of
# cells, what the collector reads as a run's rates, and (with the targets) what the members of a
# pack may differ in.
RATE_KEYS = ("lr", "lr_v", "lam", *GROUP_RATIOS.values(), "head_lr")
PACK_KEYS = (*RATE_KEYS, "targets")
# Significant digits that make two spellings of one rate equal (lam=3 with lr=1e-4, and lr_v=3e-4,
# give 3.0000000000000004e-4 and 3e-4) while keeping every rate anyone would set apart.
RATE_DIGITS = 12


def rounded(x: float, digits: int = RATE_DIGITS) -> float:
    """A rate to `digits` significant digits: RATE_DIGITS to compare and key rates; a search's trial
    points use 3, so that each is a readable override (`lr=0.000731 lam=5.42`)."""
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class LearningRates:
    qk: float  # eta_QK: W_q, W_k and their adapters
    v: float  # eta_V = lam * eta_QK
    head: float  # the classification head
    lam: float
    # every optimizer group of the run and its rate, in order: qk, v, then o and mlp where the targets
    # have them, then head; with LoRA+ each group of tuned matrices is followed by its B matrices'
    # group "<group>.B" at loraplus_ratio x its rate
    groups: dict[str, float]


def learning_rates(cfg: RunConfig) -> LearningRates:
    """eta_QK, eta_V and the head's rate from lr, lam / lr_v and head_lr; each group's from those, the
    targets, lam_o / lam_mlp and optim.loraplus_ratio."""
    lr = float(cfg.lr)
    if cfg.lr_v is not None:
        lam = float(cfg.lr_v) / lr
        if cfg.lam is not None and not math.isclose(float(cfg.lam), lam, rel_tol=1e-6):
            raise ValueError(
                f"lam={cfg.lam} and lr_v={cfg.lr_v} disagree: lr_v / lr = {lam:g}; give one of them"
            )
    else:
        lam = 1.0 if cfg.lam is None else float(cfg.lam)
    head = lr if cfg.head_lr is None else float(cfg.head_lr)
    tuned = {"qk": lr, "v": lam * lr}
    for group in target_groups(target_names(cfg.targets)):
        tuned[group] = float(getattr(cfg, GROUP_RATIOS[group])) * lr
    ratio = loraplus_ratio(cfg)
    groups: dict[str, float] = {}
    for group, rate in tuned.items():
        groups[group] = rate
        if ratio is not None:
            groups[f"{group}.B"] = ratio * rate
    return LearningRates(qk=lr, v=lam * lr, head=head, lam=lam, groups={**groups, "head": head})


def loraplus_ratio(cfg: RunConfig) -> Optional[float]:
    """LoRA+'s ratio where it acts (a method with LoRA B matrices, a ratio other than 1), else None."""
    ratio = cfg.optim.loraplus_ratio
    method = METHODS.get(cfg.method.name)
    return (
        None if ratio is None or float(ratio) == 1.0 or method is None or not method.lora_b else float(ratio)
    )
