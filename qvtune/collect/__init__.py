"""Collecting run records into the paper's tables, heatmaps, convergence curves and verdicts.

    python -m qvtune.collect all [--results results/] [--out collected/] [task=mnli ...]

Nothing here imports torch, transformers, peft or qvtune's training code: collecting works on any
machine that can read the results folder.
"""

from qvtune.collect.commands import summary

__all__ = ["summary"]
