"""Writing what a collect command produces under --out, printing it, and remembering it for W&B.

Markdown and CSV files hold no timestamps or absolute paths, so the same records give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Optional

import pandas as pd
from rich.console import Console
from rich.markup import escape

from qvtune.collect import curves, heatmap, render, verdicts
from qvtune.collect.figures import Renderer
from qvtune.collect.records import STATUSES, Collection
from qvtune.collect.tables import Table
from qvtune.common.figures import figure_paths

SECTIONS = (  # order in report.md
    "records",
    "table1",
    "table2",
    "compare",
    "harness",
    "heatmaps",
    "rate_heatmaps",
    "curves",
    "verdicts",
)
FORMATS = {"md": "md", "markdown": "md", "latex": "latex", "tex": "latex", "csv": "csv"}


def parse_formats(text: str) -> tuple[str, ...]:
    """'md,latex,csv' -> ('md', 'latex', 'csv'); raises ValueError naming the accepted spellings."""
    out = []
    for item in filter(None, (x.strip().lower() for x in text.split(","))):
        if item not in FORMATS:
            raise ValueError(f"--format {item!r}: expected a comma-separated subset of md, latex, csv")
        out.append(FORMATS[item])
    return tuple(dict.fromkeys(out))


class Report:
    """The outputs of one command: files under `out`, lines on the console, artifacts for W&B."""

    def __init__(
        self, coll: Collection, out: Path, formats: Sequence[str], console: Console, renderer: Renderer
    ):
        self.coll = coll
        self.renderer = renderer
        self.out = Path(out)
        self.formats = tuple(formats)
        self.console = console
        self.sections: dict[str, str] = {}  # Markdown by SECTIONS name
        self.tables: list[Table] = []
        self.frames: dict[str, pd.DataFrame] = {}  # other CSVs: heatmaps, curves, verdicts
        self.images: dict[str, Path] = {}  # PNGs by name
        self.verdicts: list[verdicts.Verdict] = []
        self.written: list[Path] = []
        self._jobs: list[Future] = []  # figures being drawn
        self._curves: list[Future] = []  # their results are the curve data for curves.csv

    def _write(self, name: str, text: str) -> Path:
        path = self.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        self.written.append(path)
        return path

    def records(self) -> None:
        """What was read: runs by status, files skipped and why, duplicates merged."""
        runs = self.coll.runs
        counts = ", ".join(f"{int((runs['status'] == s).sum())} {s}" for s in STATUSES)
        line = f"{len(runs)} runs ({counts})"
        if self.coll.duplicates:
            line += f"; {self.coll.duplicates} duplicate record(s) of the same setting and seed merged"
        lines = ["### Records", "", line]
        if self.coll.problems:
            lines += ["", f"{len(self.coll.problems)} record(s) skipped:", ""]
            lines += [f"- `{path}`: {reason}" for path, reason in self.coll.problems]
        self.sections["records"] = "\n".join(lines) + "\n"
        self.console.print(escape(line))
        for path, reason in self.coll.problems:
            self.console.print(f"[yellow]skipped[/] {escape(str(self.coll.root / path))}: {escape(reason)}")

    def table(self, table: Table) -> None:
        if table.empty:
            self.console.print(f"[dim]{table.title}: no runs for this table[/]")
            return
        self.tables.append(table)
        writers = {
            "md": (".md", render.to_markdown),
            "latex": (".tex", render.to_latex),
            "csv": (".csv", render.to_csv),
        }
        for fmt in self.formats:
            suffix, writer = writers[fmt]
            self._write(f"{table.name}{suffix}", writer(table))
        self.sections[table.name] = render.to_markdown(table)
        if self.console.is_terminal:
            self.console.print(render.to_rich(table))
            for note in table.notes:
                self.console.print(f"  [dim]{escape(note)}[/]")
        else:  # piped or redirected: the Markdown, which reads as text and costs no layout
            self.console.out(self.sections[table.name], highlight=False)

    def heatmaps(self, found: list[heatmap.Heatmap], floor: Optional[float] = None) -> None:
        """Figure 1's (eta_QK, eta_V) grids: heatmaps/*.png, heatmaps.csv."""
        if not found:
            self.console.print("[dim]Heatmaps: no learning-rate grid (2 x 2 or more) in the runs[/]")
            return
        self._heatmaps(found, floor, "heatmaps", "Heatmaps (eta_QK x eta_V)", heatmap.grid_frame(found))

    def rate_heatmaps(
        self,
        found: list[heatmap.RateHeatmap],
        floor: Optional[float] = None,
        axes: Optional[tuple[str, str]] = None,
    ) -> None:
        """Grids over two other rates (those `axes`, or each sweep's two varying ones): heatmaps/*.png,
        rate_heatmaps.csv."""
        if not found:
            if axes:
                self.console.print(
                    f"[dim]Heatmaps over ({', '.join(axes)}): no grid (2 x 2 or more) in the runs[/]"
                )
            return
        frame = heatmap.rate_frame(found)
        self._heatmaps(found, floor, "rate_heatmaps", "Heatmaps over other rates", frame)

    def _heatmaps(
        self,
        found: Sequence[heatmap.Heatmap | heatmap.RateHeatmap],
        floor: Optional[float],
        name: str,
        title: str,
        frame: pd.DataFrame,
    ) -> None:
        pooled = "pools the runs of every sweep (--pool)" if found[0].pooled else "holds one sweep's runs"
        lines = [f"### {title}", "", f"Each grid {pooled}.", ""]
        folder = self.out / "heatmaps"
        for h in found:
            self._figure(folder, h.name, self.renderer.submit(heatmap.save, h, folder, floor))
            lines += [f"![{h.name}](heatmaps/{h.name}.png)", "", f"{h.title}: {h.caption}", ""]
            self.console.print(escape(f"{h.title}: {h.caption}"))
        self.frames[name] = frame
        if "csv" in self.formats:
            self._write(f"{name}.csv", render.frame_to_csv(frame))
        self.sections[name] = "\n".join(lines)

    def curves(self, sets: list[curves.CurveSet]) -> None:
        if not sets:
            self.console.print(
                "[dim]Curves: no heatmap with a best cell off the lambda = 1 diagonal to compare[/]"
            )
            return
        lines = ["### Convergence (training loss and dev metric, mean ± std over seeds)", ""]
        folder = self.out / "curves"
        for cs in sets:
            job = self.renderer.submit(curves.render, self.coll.root, cs, folder)
            self._curves.append(self._figure(folder, cs.name, job))
            lines += [f"![{cs.name}](curves/{cs.name}.png)", "", cs.title, ""]
            self.console.print(escape(f"{cs.title}: curves/{cs.name}.png"))
        self.sections["curves"] = "\n".join(lines)

    def _figure(self, folder: Path, stem: str, job: Future) -> Future:
        """Remember a figure being drawn: its files, its PNG for W&B, the job to wait for."""
        paths = figure_paths(folder, stem)
        self.written += paths
        self.images[stem] = paths[0]
        self._jobs.append(job)
        return job

    def finish(self) -> None:
        """Wait for the figures; then write what depends on them (curves.csv)."""
        for job in self._jobs:
            job.result()
        self.renderer.close()
        if self._curves:
            self.frames["curves"] = pd.concat([job.result() for job in self._curves], ignore_index=True)
            if "csv" in self.formats:
                self._write("curves.csv", render.frame_to_csv(self.frames["curves"]))

    def claims(
        self, found: list[heatmap.Heatmap], margin: float = verdicts.DEFAULT_MARGIN, pool: bool = False
    ) -> None:
        """The verdicts on the paper's claims; `margin` and `pool` as in commands.run."""
        self.verdicts = verdicts.all_verdicts(self.coll, found, margin, pool)
        text = verdicts.to_markdown(self.verdicts, margin, pool)
        self.sections["verdicts"] = text
        self.frames["verdicts"] = verdicts.frame(self.verdicts)
        if "md" in self.formats:
            self._write("verdicts.md", text)
        if "csv" in self.formats:
            self._write("verdicts.csv", render.frame_to_csv(self.frames["verdicts"]))
        self.console.print("[bold]Verdicts[/]")
        for line in verdicts.overall(self.verdicts):
            self.console.print(f"  {escape(line)}")
        for v in self.verdicts:
            self.console.print(f"  [dim]{escape(v.line)}[/]")

    def runs_csv(self) -> None:
        """Every run as one CSV line, for analyses the tables do not cover; `extra` holds every keyed
        setting without a column (the keys the collector builds from them stay inside)."""
        keys = ["setting", "grid", "variant", "base"]
        self._write("runs.csv", render.frame_to_csv(self.coll.runs.drop(columns=keys)))

    def markdown(self, name: str, title: str) -> Path:
        """All sections in one Markdown file (report.md for `all`, summary.md for `summary`)."""
        return self._write(
            name, f"# {title}\n\n" + "\n".join(self.sections[s] for s in SECTIONS if s in self.sections)
        )
