"""Benchmark of the collector: `python -m qvtune.collect all` on 10,000 synthetic records.

    python scripts/bench_collect.py [--records 10000] [--repeat 1] [--keep DIR]
                                    [--json bench-out/collect.json]

Writes the records (tests/helpers/sample_records.py, as a run writes them: result.json, ~2 kB, and curves.json
with 200 loss points, ~13 kB) into a temporary folder, then times the command in a fresh process, so
imports count, W&B off. The goal: under 10 seconds for 10,000 records. Prints what it measured and
writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the sample records are the tests' helpers

from qvtune.store.record import CURVES_FILE, RESULT_FILE, RunRecord  # noqa: E402
from tests.helpers.sample_records import bench_records, write_record  # noqa: E402

GOAL_S = 10.0


def _write(args: tuple[str, list[RunRecord]]) -> int:
    root, records = args
    for record in records:
        write_record(Path(root), record, record.sweep)
    return len(records)


def generate(root: Path, n: int) -> float:
    """Write n records under root (sweep folders, one folder per run key); returns seconds taken."""
    start = time.perf_counter()
    records = bench_records(n)
    workers = max(1, len(os.sched_getaffinity(0)))
    chunks = [(str(root), records[i::workers]) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        written = sum(pool.map(_write, chunks))
    assert written == n, (written, n)
    return time.perf_counter() - start


def collect(results: Path, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -m qvtune.collect all` in a new process (W&B disabled).

    CPU counts the process and its workers; on a shared machine it says how much of the wall time
    was the collector's own work.
    """
    command = [
        sys.executable,
        "-m",
        "qvtune.collect",
        "all",
        "--results",
        str(results),
        "--out",
        str(out),
        "--wandb",
        "disabled",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument(
        "--repeat", type=int, default=1, help="time the collection this many times; keep the best"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the records here (reused when already there)"
    )
    parser.add_argument("--json", type=Path, default=Path("bench-out/collect.json"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qvtune-bench-") as tmp:
        results = args.keep or Path(tmp) / "results"
        existing = sum(1 for _ in results.rglob(RESULT_FILE)) if results.is_dir() else 0
        generate_s = None if existing == args.records else generate(results, args.records)
        size_mb = {
            name: sum(f.stat().st_size for f in results.rglob(name)) / 1e6
            for name in (RESULT_FILE, CURVES_FILE)
        }
        measured = [collect(results, Path(tmp) / f"out{i}") for i in range(args.repeat)]
        outputs = sum(1 for p in (Path(tmp) / "out0").rglob("*") if p.is_file())

    best = min(wall for wall, _ in measured)
    report = {
        "benchmark": "python -m qvtune.collect all --wandb disabled",
        "records": args.records,
        "records_mb": round(sum(size_mb.values()), 1),
        "result_json_mb": round(size_mb[RESULT_FILE], 1),
        "generate_s": None if generate_s is None else round(generate_s, 2),
        "collect_wall_s": [round(wall, 2) for wall, _ in measured],
        "collect_cpu_s": [round(cpu, 2) for _, cpu in measured],
        "best_s": round(best, 2),
        "goal_s": GOAL_S,
        "within_goal": best < GOAL_S,
        "files_written": outputs,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    print(
        f"collect all on {args.records} records: best {best:.2f} s (goal < {GOAL_S:.0f} s); wrote {args.json}"
    )
    return 0 if best < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
