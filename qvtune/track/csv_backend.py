"""<run_dir>/metrics.csv, in long format: a header `step,name,value`, then one row per logged value
(train/loss, update_norm/q, lr/qk, eval/accuracy, ...), appended as the run goes; at the end the
summary's numbers as `summary/...` rows (summary/best/accuracy, summary/steps) at the last step.
`pandas.read_csv(path).pivot_table(index="step", columns="name", values="value")` gives one column
per name. The config, run key and status are in the result.json beside it.

Long rather than wide, since names appear as the run goes (the first evaluation's) and a row is
never rewritten to add a column. A session that resumes from an earlier checkpoint than the step
its run had reached logs those steps again: the rows from its first step on are dropped first."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional, TextIO

from qvtune.common.files import atomic_write
from qvtune.config.rates import LearningRates
from qvtune.config.schema import RunConfig
from qvtune.track.common import numbers

CSV_FILE = "metrics.csv"

HEADER = ["step", "name", "value"]


class CsvBackend:
    def __init__(self, cfg: RunConfig, key: str, rates: LearningRates, run_dir: Path):
        self.path = run_dir / CSV_FILE
        self.file: Optional[TextIO] = None
        self.step = 0

    def _open(self, first_step: Optional[int]) -> TextIO:
        """The file to append to, once the rows from `first_step` on (None: none) are dropped."""
        if self.file is None:
            kept = [HEADER]
            if self.path.exists():
                with self.path.open(newline="") as f:
                    rows = list(csv.reader(f))[1:]
                # a row cut short by a killed job goes too
                whole = [row for row in rows if len(row) == 3 and row[0].isdigit()]
                kept += [row for row in whole if first_step is None or int(row[0]) < first_step]
            text = io.StringIO()
            csv.writer(text).writerows(kept)
            atomic_write(self.path, lambda f: f.write(text.getvalue().encode()))
            # line-buffered: a killed run keeps the rows it logged
            self.file = self.path.open("a", newline="", buffering=1)
        return self.file

    def log(self, values: dict[str, float], step: int) -> None:
        rows = [[step, name, value] for name, value in values.items()]
        csv.writer(self._open(first_step=step)).writerows(rows)
        self.step = step

    def finish(self, summary: dict[str, Any], exit_code: int) -> None:
        file = self._open(first_step=None)
        csv.writer(file).writerows([self.step, name, value] for name, value in numbers(summary).items())
        file.close()
