"""A sweep's runs grouped into packs: runs that differ only in learning rates or targets share one
frozen base and one forward pass (qvtune.model.pack), one launcher job per pack."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from qvtune.config.schema import plain
from qvtune.sweep.plan import Job

if TYPE_CHECKING:
    from qvtune.config.schema import RunConfig

from qvtune.config.validate import unpackable

log = logging.getLogger(__name__)


def launcher_jobs(jobs: list[Job], size: int) -> list[list[Job]]:
    """The runs of one launch as the launcher's jobs: packs of up to `size` (form_packs), said in the
    log; `size` 1: each run its own job."""
    if size <= 1:
        return [[j] for j in jobs]
    packs = form_packs(jobs, size)
    alone: dict[str, int] = {}
    for j in jobs:
        for reason in unpackable(j.config):
            alone[reason] = alone.get(reason, 0) + 1
    for reason, count in alone.items():
        log.info(f"{count} runs stay unpacked: {reason}")
    log.info(f"{len(jobs)} runs in {len(packs)} jobs ({sum(len(p) > 1 for p in packs)} packs)")
    return packs


def form_packs(jobs: list[Job], size: int) -> list[list[Job]]:
    """The jobs grouped into packs of at most `size` that may share a forward pass (the same config
    but for PACK_KEYS), in sweep order and as even as the count allows; a job that cannot pack
    (qvtune.config.validate.unpackable: its method, output_dir, the harness), and one without a
    partner, is a pack of one: a lone run."""
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.key if unpackable(j.config) else pack_signature(j.config), []).append(j)
    packs = []
    for group in groups.values():
        n = -(-len(group) // max(1, size))
        packs += [group[i::n] for i in range(n)] if n > 1 else [group]
    return packs


def pack_signature(cfg: RunConfig) -> str:
    """What the members of a pack share: the whole config but PACK_KEYS."""
    import json

    from omegaconf import DictConfig

    from qvtune.config.rates import PACK_KEYS

    skip = (*PACK_KEYS, "pack", "hydra")
    items = cast(DictConfig, cfg).items()  # a job's config is the DictConfig Hydra composed
    return json.dumps({k: plain(v) for k, v in items if k not in skip}, sort_keys=True)


def pack_overrides(pack: list[Job]) -> list[str]:
    """The overrides of a pack's one job: the first member's without PACK_KEYS, and `pack=[...]`
    with every member's PACK_KEYS values (qvtune.config.member_configs takes them apart)."""
    from qvtune.config.rates import PACK_KEYS
    from qvtune.sweep.search.cells import override_key

    shared = [o for o in pack[0].overrides if override_key(o) not in PACK_KEYS]
    members = []
    for j in pack:
        values = [f"{k}:{_override_value(plain(getattr(j.config, k)))}" for k in PACK_KEYS]
        members.append("{" + ",".join(values) + "}")
    return [*shared, f"pack=[{','.join(members)}]"]


def _override_value(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value.isalnum() else "'" + value.replace("'", "\\'") + "'"
    return repr(value)


def print_packs(packs: list[list[Job]]) -> None:
    """One line per pack of several runs: its run keys and what sets its members apart."""
    from qvtune.config.rates import PACK_KEYS
    from qvtune.sweep.search.cells import override_key

    for i, pack in enumerate(p for p in packs if len(p) > 1):
        members = " | ".join(
            " ".join(o for o in j.overrides if override_key(o) in PACK_KEYS) or j.key for j in pack
        )
        print(f"pack {i + 1} ({len(pack)} runs: {' '.join(j.key for j in pack)}): {members}")
    lone = sum(len(p) == 1 for p in packs)
    runs = sum(len(p) for p in packs)
    print(f"{runs} runs to launch as {len(packs)} jobs: {len(packs) - lone} packs, {lone} alone")
