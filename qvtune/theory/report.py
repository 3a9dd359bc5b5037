"""Output helpers shared by the theory commands: every number lands in CSV/JSON beside a PNG+PDF
figure (qvtune.figures.save_figure), and the terminal gets a short plain-text table, so results can
be checked and diffed."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from qvtune.common.formatting import num


def loglog_slope(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Least-squares slope of log|y| against log x; NaN if any point is zero or non-finite
    (a diverged or vanished run has no meaningful power law, and a partial fit would hide that)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.abs(np.asarray(y, float)))
    if len(lx) < 2 or not (np.all(np.isfinite(lx)) and np.all(np.isfinite(ly))):
        return math.nan
    return float(np.polyfit(lx, ly, 1)[0])


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows (dicts with the same keys) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: Path, data: Any) -> Path:
    """Write JSON; NaN/inf become null so that strict parsers accept the file."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(data), indent=2) + "\n")
    return path


def _cell(v: Any) -> str:
    """A table cell: a float to 4 significant digits, an infinite one (a run that blew up) as diverged."""
    if isinstance(v, float):
        return "diverged" if math.isinf(v) else num(v, digits=4)
    return str(v)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A right-aligned plain-text table."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
