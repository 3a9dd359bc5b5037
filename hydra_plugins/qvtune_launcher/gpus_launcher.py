"""`hydra/launcher=gpus`: run a sweep on this machine, one job per slot at a time, the rest queued.

A slot is one GPU (the job sees only `CUDA_VISIBLE_DEVICES=<id>`) and an even share of the CPU
cores (its affinity mask and thread count); on a machine without GPUs a slot is the core share
alone. Hydra's basic launcher runs one job at a time, and `submitit_local` starts every job at
once on every GPU: neither fits a queue of fine-tuning runs on a multi-GPU box.

Each job runs in its own spawned process, so the environment is set before anything imports torch
or initialises CUDA, and a job that crashes (exception, segfault, OOM kill) fails alone.
"""

import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, NamedTuple, Optional

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from .config import GpusLauncherConf  # noqa: F401  (registers the schema with Hydra)

log = logging.getLogger(__name__)


class Slot(NamedTuple):
    """What one running job may use (a tuple: Hydra's plugin scan re-executes this module, and a
    re-created class must still compare equal)."""

    device: Optional[str]  # a CUDA device id, None on CPU-only slots
    cores: tuple[int, ...]

    def env(self) -> dict[str, str]:
        threads = str(len(self.cores))
        # An empty CUDA_VISIBLE_DEVICES hides every GPU: a CPU slot stays on the CPU.
        return {
            "CUDA_VISIBLE_DEVICES": self.device or "",
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
        }

    def __str__(self) -> str:
        cores = f"cpus {self.cores[0]}-{self.cores[-1]}" if len(self.cores) > 1 else f"cpu {self.cores[0]}"
        return f"cuda {self.device}, {cores}" if self.device is not None else cores


def visible_gpus() -> list[str]:
    """GPU ids this process may use; asked only at launch, since torch takes seconds to import."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:  # CUDA ignores every id from the first negative one on
        return list(
            itertools.takewhile(lambda d: not d.startswith("-"), filter(None, map(str.strip, env.split(","))))
        )
    if shutil.which("nvidia-smi"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
            return [
                str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))
            ]
    if not (os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/kfd")):
        return []  # no NVIDIA or AMD driver loaded: not worth importing torch to hear "0"
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(devices: Sequence[str], slots: Optional[int], cores: Sequence[int]) -> list[Slot]:
    """`slots` slots (default one per device, or 1) cycling over the devices and over `cores` split evenly."""
    n = slots if slots is not None else max(len(devices), 1)
    if n < 1 or not cores:
        raise ValueError(f"need at least one slot and one core, got slots={n}, cores={list(cores)}")
    k = min(n, len(cores))
    groups = [tuple(cores[i * len(cores) // k : (i + 1) * len(cores) // k]) for i in range(k)]
    return [Slot(devices[i % len(devices)] if devices else None, groups[i % k]) for i in range(n)]


class GpusLauncher(Launcher):
    def __init__(
        self, devices: Optional[Sequence[Any]] = None, slots: Optional[int] = None, stop_grace_s: float = 30.0
    ) -> None:
        self.devices = None if devices is None else [str(d) for d in devices]
        self.slots = slots
        self.stop_grace_s = stop_grace_s
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        devices = visible_gpus() if self.devices is None else self.devices
        slots = plan_slots(devices, self.slots, sorted(os.sched_getaffinity(0)))
        log.info(f"Launching {len(job_overrides)} jobs on {len(slots)} slots: " + "; ".join(map(str, slots)))
        shared = cloudpickle.dumps((self.hydra_context, self.task_function, Singleton.get_state()))
        jobs = [(idx, list(o)) for idx, o in enumerate(job_overrides, start=initial_job_idx)]
        return _Pool(slots, shared, self.compose, self.stop_grace_s).run(jobs)

    def compose(self, idx: int, overrides: list[str]) -> DictConfig:
        """The job's config, composed by the launcher when the job starts.

        Errors surface here, not in a worker.
        """
        assert self.config is not None and self.hydra_context is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
            cfg.hydra.job.num = idx
        return cfg


@dataclass
class _Running:
    idx: int
    overrides: list[str]
    slot: int
    process: Any  # multiprocessing's SpawnProcess
    started: float


class _Pool:
    """Starts each job in a spawned process on a free slot and collects the JobReturns in job order."""

    def __init__(
        self,
        slots: list[Slot],
        shared: bytes,
        compose: Callable[[int, list[str]], DictConfig],
        grace_s: float,
    ) -> None:
        self.slots = slots
        self.shared = shared
        self.compose = compose
        self.grace_s = grace_s
        self.ctx = multiprocessing.get_context("spawn")

    def run(self, jobs: list[tuple[int, list[str]]]) -> list[JobReturn]:
        queue = deque(jobs)
        free = list(range(len(self.slots)))
        running: dict[Connection, _Running] = {}
        results: dict[int, JobReturn] = {}
        with _sigterm_exits():
            try:
                while queue or running:
                    while queue and free:
                        conn, job = self._start(*queue.popleft(), free.pop(0))
                        running[conn] = job
                    ready = set(wait(list(running) + [r.process.sentinel for r in running.values()]))
                    for conn, job in list(running.items()):
                        if conn in ready or job.process.sentinel in ready:
                            results[job.idx] = self._collect(conn, job)
                            free.append(job.slot)
                            free.sort()
                            del running[conn]
            finally:
                self._stop([r.process for r in running.values()])
        return [results[idx] for idx, _ in jobs]

    def _start(self, idx: int, overrides: list[str], slot: int) -> tuple[Connection, _Running]:
        cfg = self.compose(idx, overrides)
        log.info(f"\t#{idx} on {self.slots[slot]} : {' '.join(filter_overrides(overrides))}")
        receive, send = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(
            target=_job_main,
            name=f"hydra-job-{idx}",
            args=(self.shared, cloudpickle.dumps(cfg), self.slots[slot], os.getpid(), send),
        )
        with _environ(self.slots[slot].env()):  # the child's environment from its first instruction
            process.start()
        send.close()  # the parent keeps only the read end: EOF when the job's process is gone
        return receive, _Running(idx, overrides, slot, process, time.monotonic())

    @staticmethod
    def _collect(conn: Connection, job: _Running) -> JobReturn:
        try:
            ret = cloudpickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            ret = None
        except Exception as e:  # noqa: BLE001  a result that does not unpickle here
            ret = _failed(job, f"its JobReturn could not be unpickled: {e!r}")
        job.process.join()
        conn.close()
        if ret is None:
            ret = _failed(job, f"its process exited with code {job.process.exitcode} without a result")
        log.info(f"\t#{job.idx} {ret.status.name.lower()} after {time.monotonic() - job.started:.1f} s")
        return ret

    def _stop(self, processes: list[Any]) -> None:
        """Interrupt the jobs as a Ctrl-C would, give them `grace_s` to clean up, then kill them."""
        if processes:
            log.warning(f"Stopping {len(processes)} running jobs")
        for p in processes:
            with contextlib.suppress(ProcessLookupError):
                if p.is_alive():
                    os.kill(p.pid, signal.SIGINT)
        deadline = time.monotonic() + self.grace_s
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()


def _failed(job: _Running, reason: str) -> JobReturn:
    return JobReturn(
        overrides=job.overrides,
        status=JobStatus.FAILED,
        _return_value=RuntimeError(f"job #{job.idx} failed: {reason}"),
    )


def _job_main(shared: bytes, cfg: bytes, slot: Slot, parent: int, conn: Connection) -> None:
    """The job's process: its own process group, its cores, then the Hydra job; sends back the JobReturn."""
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches only the launcher, which then stops each job once
    signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # even if the launcher started with it ignored (nohup, &)
    if sys.platform == "linux":  # no orphan if the launcher is killed outright
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            sys.exit(1)
    os.sched_setaffinity(0, slot.cores)
    if "torch" in sys.modules:  # imported with the main module: OMP_NUM_THREADS may have come too late
        sys.modules["torch"].set_num_threads(len(slot.cores))
    hydra_context, task_function, state = cloudpickle.loads(shared)
    setup_globals()
    Singleton.set_state(state)
    config = cloudpickle.loads(cfg)
    ret = run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    if ret.status == JobStatus.FAILED:  # the launcher only sees the exception, not where it came from
        traceback.print_exception(ret._return_value, file=sys.stderr)
    try:
        data = cloudpickle.dumps(ret)
    except Exception:  # noqa: BLE001  e.g. an exception or return value that does not pickle
        ret.return_value = RuntimeError(
            f"unpicklable result of job {config.hydra.job.num}: {ret._return_value!r}"
        )
        ret.status = JobStatus.FAILED
        data = cloudpickle.dumps(ret)
    conn.send_bytes(data)
    conn.close()


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (kill, a scheduler) unwinds the launcher like Ctrl-C, so that it stops its jobs first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
