"""The learning rates of a run: eta_QK (`lr`), eta_V (`lam` x `lr`, or `lr_v`) and the head's, the
config keys that set them, and the one rounding that makes two spellings of a rate equal."""

from __future__ import annotations

import math
from dataclasses import dataclass

from qvtune.config.schema import RunConfig

# The config keys that set a run's learning rates: what a search chooses between within a group of
# cells, what the collector reads as a run's rates, and (with the targets) what the members of a
# pack may differ in.
RATE_KEYS = ("lr", "lr_v", "lam", "head_lr")
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


def learning_rates(cfg: RunConfig) -> LearningRates:
    """eta_QK, eta_V and the head's rate from lr, lam / lr_v and head_lr."""
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
    return LearningRates(qk=lr, v=lam * lr, head=head, lam=lam)
