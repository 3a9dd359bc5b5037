"""Where a run computes: its device, the precision it actually uses there, its CPU threads, and the
peak memory it reached. One helper for what the entry point and the benchmarks both need."""

from __future__ import annotations

import platform
import resource
from dataclasses import dataclass
from typing import Any

from qvtune.config import RunConfig, available_cpus
from qvtune.identity import resolve_precision


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu", "cuda", "cuda:1"
    precision: str  # the precision used: fp32, bf16 or fp16 (qvtune.identity.resolve_precision)

    @property
    def device_type(self) -> str:
        return self.device.split(":", 1)[0]


def detect(cfg: RunConfig) -> Runtime:
    """The device `cfg.device` names (auto: a GPU when one is visible) and the precision used on it."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else str(cfg.device)
    kind = torch.device(device).type
    bf16 = kind == "cuda" and torch.cuda.is_bf16_supported()
    return Runtime(device, resolve_precision(cfg.precision, kind, bf16, cfg.model.dtype))


def set_threads(cfg: RunConfig) -> int:
    """torch's CPU threads: `threads`, or the cores this process may use (its affinity mask)."""
    import torch

    torch.set_num_threads(cfg.threads or available_cpus())
    return torch.get_num_threads()


def peak_memory_mb(device_type: str) -> dict[str, Any]:
    """Peak resident memory of the process and, on a GPU, peak allocated GPU memory (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    gpu = None
    if device_type == "cuda":
        import torch

        gpu = torch.cuda.max_memory_allocated() / 2**20
    return {"peak_rss_mb": rss / 1024 if platform.system() == "Linux" else rss / 2**20, "peak_gpu_mb": gpu}
