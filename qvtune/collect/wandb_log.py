"""The collection as a W&B summary run: tables, figures and verdicts, offline by default like the runs.

wandb is imported only here, and only when logging is asked for, so collecting stays fast without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qvtune.collect import verdicts
from qvtune.collect.report import Report

if TYPE_CHECKING:
    from qvtune.config.schema import WandbMode


def log(report: Report, mode: WandbMode, project: str, command: str, filters: list[str]) -> Any:
    """Log everything the report produced to one run (files under <out>/wandb); returns the finished run."""
    import wandb

    report.out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        job_type="collect",
        name=f"collect-{command}",
        dir=str(report.out),
        mode=mode,
        config={
            "command": command,
            "filters": filters,
            "pick": report.coll.pick,
            "runs": len(report.coll.runs),
        },
    )
    for table in report.tables:
        run.log({f"tables/{table.name}": wandb.Table(dataframe=table.cells)})
    for name, frame in report.frames.items():
        run.log({f"tables/{name}": wandb.Table(dataframe=frame)})
    for name, png in report.images.items():
        run.log({f"figures/{name}": wandb.Image(str(png))})
    for claim, line in zip(verdicts.CLAIMS, verdicts.overall(report.verdicts) if report.verdicts else []):
        run.summary[f"verdict/{claim}"] = line
    run.summary["records/skipped"] = len(report.coll.problems)
    run.finish()
    return run
