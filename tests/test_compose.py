"""The sweeper's fast compose (defaults trees cached per choice of config groups, value overrides applied
on top through Hydra's private method) gives, for every sweep file, the job configs Hydra's launchers
compose themselves (ConfigLoader.load_sweep_config, once per job)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from hydra.version import VersionBase
from omegaconf import DictConfig, OmegaConf

from qvtune.config.schema import config_dir
from tests.helpers import ROOT

SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def hydra_app() -> Iterator[Any]:
    """Hydra initialised on qvtune's config folder, as `python -m qvtune.run` has it.

    The version base is restored afterwards.
    """
    base = VersionBase.instance().getbase()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            yield GlobalHydra.instance()
    finally:
        VersionBase.instance().version_base = base


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """A job's config as plain data, interpolations resolved, without the hydra node."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def sample(jobs: list[list[str]], loader: Any) -> list[list[str]]:
    """One job per (choice of config groups, set of value keys): each distinct composition, each way
    the value overrides combine (Hydra takes a fifth of a second a job; table2 alone has 504)."""
    parser = OverridesParser.create()
    picked: dict[tuple[Any, ...], list[str]] = {}
    for job in jobs:
        parsed = parser.parse_overrides(job)
        groups = tuple(o.input_line for o in parsed if loader.repository.group_exists(o.key_or_group))
        values = frozenset(
            o.key_or_group for o in parsed if not loader.repository.group_exists(o.key_or_group)
        )
        picked.setdefault((groups, values), job)
    return list(picked.values())


def test_every_sweep_file_is_checked() -> None:
    assert {"table1", "table1-llama", "table2", "heatmap", "heatmap-llama", "curves", "demo"} <= set(SWEEPS)


@pytest.mark.parametrize(
    "sweep",
    [pytest.param(s, marks=pytest.mark.slow) if s == "table2" else s for s in SWEEPS],  # 504 jobs
)
def test_fast_compose_matches_hydra(hydra_app: Any, sweep: str) -> None:
    master = hydra_app.hydra.compose_config(
        "run", [f"+sweep={sweep}"], run_mode=RunMode.MULTIRUN, with_log_configuration=False
    )
    loader = hydra_app.config_loader()
    sweeper = Plugins.instance().instantiate_sweeper(
        config=master,
        hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(master)),
        task_function=lambda cfg: None,
    )
    jobs = sweeper.expand(OmegaConf.to_container(master.hydra.overrides.task, resolve=False))
    assert jobs, f"sweep {sweep} has no jobs"
    for job in sample(jobs, loader):
        fast = job_config(sweeper.compose(job))
        assert fast == job_config(loader.load_sweep_config(master, list(job))), " ".join(job)
