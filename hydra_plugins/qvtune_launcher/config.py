"""The schema of qvtune's `gpus` launcher, registered as `hydra/launcher=qvtune_gpus`.

conf/hydra/launcher/gpus.yaml extends it, so that every launcher choice of the project is a yaml
file in one folder. This module is imported during Hydra's plugin discovery: keep it light.
"""

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class GpusLauncherConf:
    _target_: str = "hydra_plugins.qvtune_launcher.gpus_launcher.GpusLauncher"
    # GPU ids, one per job at a time (CUDA_VISIBLE_DEVICES=<id>). None: the visible GPUs
    # (CUDA_VISIBLE_DEVICES, else nvidia-smi, else torch). An empty list: CPU-core slots.
    devices: Optional[list[str]] = None
    # Jobs at once. None: one per device, or 1 on a CPU-only machine. More slots than devices
    # cycles the devices (several small runs per GPU); on CPU the cores are split into this many groups.
    slots: Optional[int] = None
    # Seconds a job gets to exit after SIGTERM (Ctrl-C, or the launcher stopped) before SIGKILL.
    stop_grace_s: float = 30.0


ConfigStore.instance().store(
    group="hydra/launcher", name="qvtune_gpus", node=GpusLauncherConf, provider="qvtune"
)
