"""How numbers are written in tables, legends and messages, by the collector and the theory lab."""

from __future__ import annotations

import math
from typing import Any


def num(x: Any, digits: int = 6) -> str:
    """A learning rate or ratio as the paper writes it, to `digits` significant digits: 0.0001 -> 1e-4,
    2.0 -> 2, 0.125 -> 0.125; None and NaN -> "-"."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    x = float(x)
    if x != 0 and abs(x) < 1e-2:
        mantissa, exp = f"{x:.{digits - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{x:.{digits}g}"
