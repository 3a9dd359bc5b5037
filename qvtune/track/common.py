"""What every tracker shares: the interface a run drives, its name, its config as plain values and
the summary's leaves. Nothing heavy is imported here: W&B, MLflow and TensorBoard are imported by
the tracker that needs them, only when a run asks for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, cast

from omegaconf import OmegaConf

from qvtune.config.methods import method_options
from qvtune.config.rates import LearningRates
from qvtune.config.schema import RunConfig, has_rank, parse_targets


class Backend(Protocol):
    """One tracker of one run: the calls `Trackers` fans out to each."""

    def log(self, values: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict[str, Any], exit_code: int) -> None: ...


def run_name(cfg: RunConfig, rates: LearningRates) -> str:
    """A readable name for the tracker UIs' run lists; the run key stays the run's identity."""
    rank = f"-r{method_options(cfg).rank}" if has_rank(cfg.method.name) else ""
    return (
        f"{cfg.model.name}-{cfg.task.name}-{cfg.method.name}-{parse_targets(cfg.targets)}{rank}"
        f"-lr{rates.qk:g}-lam{rates.lam:g}-s{cfg.seed}"
    )


def resolved_config(cfg: RunConfig, key: str) -> dict[str, Any]:
    """The run key and the config as plain values, interpolations resolved: what each tracker
    records at the start, so a tracker's run can be matched to its results folder."""
    # a DictConfig converts to a dict; OmegaConf's return type covers every config node
    return {"run_key": key, **cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))}


def leaves(tree: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
    """Nested maps flattened to their leaves under joined keys ({"best": {"f1": 1}} -> {"best/f1": 1}):
    MLflow params, CSV rows and metric names are flat."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(leaves(value, sep, f"{prefix}{name}{sep}"))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    """The summary's numeric leaves as `summary/...` metrics (the status, a string, is not one)."""
    return {
        f"summary/{name}": float(value)
        for name, value in leaves(summary).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
