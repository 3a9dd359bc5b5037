"""A Hydra app for the launcher tests: each job writes what it saw (device, cores, threads, times).

<out>/<name>.started holds the job's pid while it runs; <name>.json is written when it ends, and
<name>.interrupted when it is stopped by Ctrl-C / SIGINT. `work_s` is work that survives a restart:
its progress is saved every second and each start is appended to <name>.starts, so a job that is
requeued (Slurm time limit) resumes where it stopped.
"""

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    (out / f"{cfg.name}.started").write_text(str(os.getpid()))
    with open(out / f"{cfg.name}.starts", "a") as f:
        f.write(f"{started}\n")
    threads = None
    if cfg.torch:
        import torch

        threads = torch.get_num_threads()
    try:
        time.sleep(cfg.sleep)
        work(out / f"{cfg.name}.progress", cfg.work_s)
    except KeyboardInterrupt:
        (out / f"{cfg.name}.interrupted").write_text(str(time.time()))
        raise
    if cfg.mode == "fail":
        raise RuntimeError(f"{cfg.name} was asked to fail")
    if cfg.mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    record = {
        "name": cfg.name,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "affinity": sorted(os.sched_getaffinity(0)),
        "torch_threads": threads,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "start": started,
        "end": time.time(),
    }
    (out / f"{cfg.name}.json").write_text(json.dumps(record))
    return record


def work(progress: Path, seconds: float) -> None:
    """Sleep `seconds` in total over all the starts of this job, saving the seconds done each second."""
    done = float(progress.read_text()) if progress.exists() else 0.0
    while done < seconds:
        time.sleep(1.0)
        done += 1.0
        progress.write_text(str(done))


if __name__ == "__main__":
    main()
