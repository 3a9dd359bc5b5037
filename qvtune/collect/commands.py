"""The collect commands (table1, table2, harness, heatmap, curves, all, summary) on a loaded collection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from rich.console import Console

from qvtune.collect import curves, heatmap, tables, verdicts
from qvtune.collect.figures import Renderer
from qvtune.collect.records import Collection, load, parse_filters
from qvtune.collect.report import Report
from qvtune.train.runtime import available_cpus

COMMANDS = ("table1", "table2", "harness", "heatmap", "curves", "all", "summary")
HEATMAP_COMMANDS = ("heatmap", "all", "summary")  # those that draw heatmaps (and take --axes)


def run(
    command: str,
    coll: Collection,
    out: Path,
    formats: Sequence[str],
    console: Console,
    floor: Optional[float] = None,
    filtered: bool = False,
    pool: bool = False,
    margin: float = verdicts.DEFAULT_MARGIN,
    axes: Optional[tuple[str, str]] = None,
) -> Report:
    """Produce what `command` asks for; `all` is everything the runs support, `summary` the demo's short view.

    `curves` draws every setting that matches the filters when there are filters (`filtered`), and each
    heatmap's best cell against its best lambda = 1 cell otherwise. Heatmaps, their curves and the
    verdicts take each sweep's runs on their own unless `pool`; `margin` is claim 2's equivalence margin.
    The heatmaps are Figure 1's and those over the two rates each sweep varies alone, or with `axes`
    (two names of qvtune.collect.heatmap.AXES) those only; curves and claim 3 stay Figure 1's.
    Raises ValueError when `curves` matches too many settings to draw or the margin is not positive.
    Figures are drawn in background processes, one per spare core.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}: expected one of {', '.join(COMMANDS)}")
    if not margin > 0:  # checked before any figure is started
        raise ValueError(f"margin {margin}: expected a positive number, in the metric's units")
    report = Report(coll, out, formats, console, Renderer.for_cores(available_cpus()))
    report.records()
    # figures first: they are drawn in worker processes while the tables are built here
    found = heatmap.find(coll, pool) if command not in ("table1", "table2", "harness") else []
    if command in HEATMAP_COMMANDS:
        if axes in (None, heatmap.PAPER_AXES):
            report.heatmaps(found, floor)
        if axes != heatmap.PAPER_AXES:
            report.rate_heatmaps(heatmap.find_rates(coll, axes, pool), floor, axes)
    if command == "curves" and filtered:
        report.curves([curves.for_runs(coll)])
    elif command in ("curves", "all"):
        report.curves(curves.for_heatmaps(coll, found))
    if command in ("table1", "all"):
        report.table(tables.table1(coll))
    if command in ("table2", "all"):
        report.table(tables.table2(coll))
    if command in ("all", "summary"):
        report.table(tables.compare(coll))
    scores = tables.harness(coll) if command in ("harness", "all") else None
    if scores is not None and (command == "harness" or not scores.empty):  # `all`: where runs asked for it
        report.table(scores)
    if command in ("all", "summary"):
        report.claims(found, margin, pool)
    report.finish()
    if command == "all":
        report.runs_csv()
        report.markdown("report.md", "qvtune: collected results")
    if command == "summary":
        report.markdown("summary.md", "qvtune: summary")
    return report


def summary(
    results: str | Path = "results",
    out: str | Path = "collected",
    filters: Sequence[str] = (),
    console: Optional[Console] = None,
    pool: bool = False,
    margin: float = verdicts.DEFAULT_MARGIN,
) -> Report:
    """The demo's view of a results folder: what q, k, v, qv, qkv each scored, and the paper's claims.

    Prints a Table-1-style comparison (one row per model, task, method and rank the records hold) and
    the verdicts, and writes a heatmap PNG when the records hold a learning-rate grid. Files go under
    `out`: summary.md, compare.md, verdicts.md, heatmaps/. `filters` as on the command line (task=mnli);
    `pool` and `margin` as in `run`.
    """
    coll = load(results, parse_filters(filters))
    console = console or Console(highlight=False)
    return run("summary", coll, Path(out), ("md",), console, pool=pool, margin=margin)
