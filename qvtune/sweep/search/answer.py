"""A search's answer: written to results_dir/searches/<name>.json (the name from the canonical grid,
grid.Grid.name) and printed: every group's trials or rungs, its pick, and what the search spent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from qvtune.common.files import atomic_write
from qvtune.sweep.search.grid import Grid


def save(answer: dict[str, Any], grid: Grid) -> Path:
    """Write the answer (its "name" names the file) and print it; returns its path."""
    path = grid.folder / f"{answer['name']}.json"
    text = json.dumps(answer, indent=1, sort_keys=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    show(answer, path)
    return path


def show(answer: dict[str, Any], path: Path) -> None:
    """Per group its trials (optuna) or rungs (halving, promoted cells starred) and its pick, then
    the samples and the time spent."""
    for g in answer["groups"]:
        print(f"search {g['group']}:")
        for t in g.get("trials", []):
            print(f"  trial {t['trial']}: eta_QK={t['lr']:g} lambda={t['lam']:g}: {_score(t['score'])}")
        for k, r in enumerate(g.get("rungs", [])):
            shown = "  ".join(
                f"{c['lr']:g}/{c['lr_v']:g}: {_score(c['score'])}{'*' if c['promoted'] else ''}"
                for c in r["cells"]
            )
            print(f"  rung {k + 1} ({r['fraction']:.3g}): {shown}")
        p = g["pick"]
        if p is None:
            print("  no pick: no cell has a score at the full budget")
        else:
            print(
                f"  pick: eta_QK={p['lr']:g} eta_V={p['lr_v']:g} lambda={p['lam']:g}: "
                f"{answer['metric']} {_score(p['score'])} (seed-mean)"
            )
    share = answer["samples_share"]
    print(
        f"search spent {answer['samples']:.0f} training samples"
        + (f", {share:.1%} of the grid's {answer['grid_samples']:.0f}" if share is not None else "")
        + f", in {answer['wall_s']:.0f} s -> {path}"
    )


def _score(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"
