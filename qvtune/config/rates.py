"""The learning rates of a run: eta_QK (`lr`), eta_V (`lam` x `lr`, or `lr_v`) and the head's, the
config keys that set them, and the one rounding that makes two spellings of a rate equal."""

from __future__ import annotations

import math
from dataclasses import dataclass

from qvtune.config.schema import RunConfig

# What the members of a pack may differ in: they share everything else, the batches included.
PACK_KEYS = ("lr", "lr_v", "lam", "head_lr", "targets")


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


def _rate(x: float) -> float:
    """A learning rate rounded to 12 significant digits, so lam = 3, lr = 1e-4 and lr_v = 3e-4 agree."""
    return float(f"{x:.12g}")


RATE_KEYS = ("lr", "lr_v", "lam", "head_lr")  # what a search chooses between, within a group
