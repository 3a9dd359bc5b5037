"""Where a run computes: its device, the precision it actually uses there, its CPU threads, and the
peak memory it reached. Nothing heavy is imported at module level: the sweeper resolves the
precision a job will use before launching it."""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from typing import Any

from qvtune.config.schema import RunConfig


def available_cpus() -> int:
    """Cores this process may use (its affinity mask, which Slurm and the gpus launcher set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


PRECISIONS_USED = ("fp32", "bf16", "fp16")


def resolve_precision(
    requested: str, device_type: str, bf16_supported: bool, weights: str = "float32"
) -> str:
    """The precision a run computes in. On a GPU: as requested, `auto` being bf16 where the GPU
    supports it, else fp16. On a CPU: fp32. Frozen weights stored in half precision (`weights`,
    model.dtype) are computed in their own dtype wherever fp32 was asked (on a CPU always), since the
    trainable tensors are kept in fp32 and only autocast lets the two meet."""
    half = {"bfloat16": "bf16", "float16": "fp16"}.get(weights)
    if device_type != "cuda":
        return half or "fp32"
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    if requested == "fp32":
        return half or "fp32"
    return requested


def expected_precisions(cfg: RunConfig, gpus: bool) -> list[str]:
    """The precisions a run may use where it will be launched, for looking it up before it starts:
    `gpus` says whether its launcher gives it a GPU. On a GPU, `auto` is bf16 or fp16 depending on the
    card, which only the job itself sees; the job keys itself with the one it finds."""
    weights = cfg.model.dtype
    if cfg.device == "cpu" or not gpus:
        return [resolve_precision(cfg.precision, "cpu", False, weights)]
    return list(
        dict.fromkeys(resolve_precision(cfg.precision, "cuda", bf16, weights) for bf16 in (True, False))
    )


@dataclass(frozen=True)
class Runtime:
    device: str  # "cpu", "cuda", "cuda:1"
    precision: str  # the precision used: fp32, bf16 or fp16 (resolve_precision)


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
