"""The sweeper's own options (hydra.sweeper.*), checked before any job is composed: one line per
problem, so that a typo stops a sweep before anything is launched, and no option is silently
ignored (a search's settings given without that search)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Any, Optional

from qvtune.sweep.search.cells import SEARCHES
from qvtune.sweep.search.halving import validate as validate_halving

if TYPE_CHECKING:
    from qvtune.sweep.search.halving_search import HalvingOptions
    from qvtune.sweep.search.optuna_search import OptunaOptions


def problems(search: Optional[str], halving: HalvingOptions, optuna: OptunaOptions, pack: int) -> list[str]:
    """An unknown search, the search's bad settings, the settings of a search that is not the one run,
    a bad pack size. `halving` and `optuna` are the sweeper's config dataclasses: their defaults are
    what was not given."""
    found = []
    if search is not None and search not in SEARCHES:
        expected = f"expected one of {', '.join(SEARCHES)}, or null for the whole grid"
        found.append(f"hydra.sweeper.search={search}: {expected}")
    for name, given in (("halving", halving), ("optuna", optuna)):
        if name != search:
            found += [
                f"hydra.sweeper.{name}.{key}={shown(value)}: {name} options need hydra.sweeper.search={name}"
                for key, value in changed(given).items()
            ]
    if search == "halving":
        found += validate_halving(halving.eta, halving.min_fraction)
    if search == "optuna":
        from qvtune.sweep.search.tpe import validate as validate_optuna

        ranges = {"lr": optuna.lr, "lam": optuna.lam}
        found += validate_optuna(optuna.trials, optuna.batch, optuna.seeds, optuna.startup, ranges)
    if pack < 1:
        found.append(f"hydra.sweeper.pack={pack}: expected the most runs per pack, an integer >= 1")
    return found


def changed(options: Any) -> dict[str, Any]:
    """The fields of a config dataclass that differ from its defaults: the ones that were given."""
    assert is_dataclass(options) and not isinstance(options, type)
    defaults = asdict(type(options)())
    return {key: value for key, value in asdict(options).items() if value != defaults[key]}


def shown(value: Any) -> str:
    """An option's value as one writes it: `1`, not `1.0`; `[0.01,1]`."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Sequence) and not isinstance(value, str):  # a list, or OmegaConf's ListConfig
        return "[" + ",".join(shown(v) for v in value) + "]"
    return str(value)
