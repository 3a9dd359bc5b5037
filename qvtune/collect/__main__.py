"""python -m qvtune.collect {table1,table2,harness,heatmap,curves,all,summary} [key=value ...] [options]

Reads every result.json below --results (recursively; the record's own config decides where a run
belongs), writes Markdown / LaTeX / CSV tables and PNG / PDF figures under --out, prints the tables,
and logs them to W&B as a summary run (offline by default).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, Optional

from rich.console import Console
from rich.markup import escape

from qvtune.collect.commands import COMMANDS, HEATMAP_COMMANDS, run
from qvtune.collect.heatmap import AXES, parse_axes
from qvtune.collect.records import PICKS, load, parse_filters
from qvtune.collect.report import parse_formats
from qvtune.collect.verdicts import DEFAULT_MARGIN
from qvtune.config.schema import WANDB_MODES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qvtune.collect",
        description="Collect run records into the paper's tables, heatmaps, curves and verdicts.",
        epilog="Filters use the run config's key names: task=mnli model.name=roberta-base method.name=lora "
        "rank=8 targets=qv lam=4 lr=1e-4 status=completed; commas give alternatives (task=mnli,qqp).",
    )
    parser.add_argument(
        "command", choices=COMMANDS, help="what to produce; `all` is everything the runs support"
    )
    parser.add_argument("filters", nargs="*", metavar="key=value", help="keep only runs whose config matches")
    parser.add_argument("--results", default="results", help="the results folder to read (default: results/)")
    parser.add_argument(
        "--out", default="collected", help="where to write tables and figures (default: collected/)"
    )
    parser.add_argument(
        "--format", default="md,latex,csv", help="table formats: any of md,latex,csv (default: all)"
    )
    parser.add_argument(
        "--pick",
        choices=PICKS,
        default="final",
        help="the evaluation a run scores with: its last (final, default) or its best",
    )
    parser.add_argument(
        "--floor",
        type=float,
        default=None,
        help="heatmap cells below this value are drawn in its colour (default: best - 0.10)",
    )
    parser.add_argument(
        "--axes",
        default=None,
        metavar="ROWS,COLUMNS",
        help="draw the heatmaps over these two rates, e.g. lam,loraplus_ratio (any two of "
        f"{', '.join(AXES)}; default: eta_QK x eta_V and the two rates each sweep varies)",
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="put runs of every sweep into one heatmap grid and one pairing (default: each sweep on its own)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN,
        help="claim 2's equivalence margin: qv matches qkv when the 90%% interval of "
        f"their difference lies within ±margin (metric units; default: {DEFAULT_MARGIN:g})",
    )
    parser.add_argument(
        "--wandb",
        choices=WANDB_MODES,
        default="offline",
        help="log the collection as a W&B summary run (default: offline, files under --out)",
    )
    parser.add_argument("--wandb-project", default="qvtune", help="W&B project (default: qvtune)")
    return parser


def refuse(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """A bad value of the command line: one line naming it and what is accepted, exit 2."""
    parser.exit(2, f"{parser.prog}: error: {message}\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    try:
        filters = parse_filters(args.filters)
        formats = parse_formats(args.format)
        axes = None if args.axes is None else parse_axes(args.axes)
    except ValueError as e:
        refuse(parser, str(e))
    if axes is not None and args.command not in HEATMAP_COMMANDS:
        refuse(parser, f"--axes: {args.command} draws no heatmap; give it to {', '.join(HEATMAP_COMMANDS)}")
    if not args.margin > 0:
        refuse(parser, f"--margin {args.margin:g}: expected a positive number, in the metric's units")
    console = Console(highlight=False)
    results = Path(args.results).expanduser()
    if not results.is_dir():
        console.print(
            f"[red]no results folder at {escape(str(results))}[/]: give --results DIR (holding run folders)"
        )
        return 2
    coll = load(results, filters, pick=args.pick)
    if coll.runs.empty:
        what = f" matching {' '.join(map(str, filters))}" if filters else ""
        console.print(
            f"No run records{escape(what)} under {escape(str(results))} "
            f"({len(coll.problems)} unreadable file(s)); nothing to collect."
        )
        for path, reason in coll.problems:
            console.print(f"[yellow]skipped[/] {escape(str(results / path))}: {escape(reason)}")
        return 0
    try:
        report = run(
            args.command,
            coll,
            Path(args.out),
            formats,
            console,
            args.floor,
            filtered=bool(filters),
            pool=args.pool,
            margin=args.margin,
            axes=axes,
        )
    except ValueError as e:
        console.print(f"[red]{escape(str(e))}[/]")
        return 2
    if report.written:
        console.print(f"Wrote {len(report.written)} file(s) under {escape(args.out)}/")
    if args.wandb != "disabled":
        from qvtune.collect import wandb_log

        wandb_log.log(report, args.wandb, args.wandb_project, args.command, [str(f) for f in filters])
    return 0


if __name__ == "__main__":
    sys.exit(main())
