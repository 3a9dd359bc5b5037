"""From a real run to a table cell: a tiny sweep over the weight types writes records, the collector
reads them into the comparison table, and `python -m qvtune.collect summary` writes it as Markdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from qvtune.collect import tables
from qvtune.collect.records import load
from tests.helpers import records, run_cli

TARGETS = ["q", "k", "v", "qv", "qkv"]
# tiny-bert's default init (std 0.02) gives features that hardly depend on the input, so every run would
# predict one class and score alike; at std 0.3 the five runs score differently and a cell put in the
# wrong column shows.
ARGS = [
    "model=tiny-bert",
    "+model.arch.initializer_range=0.3",
    "task=synthetic",
    f"targets={','.join(TARGETS)}",
    "lr=1e-2",
    "epochs=1",
    "task.synthetic.train_size=320",
    "task.synthetic.eval_size=128",
    "wandb.mode=disabled",
]


def markdown_row(text: str, row: str) -> dict[str, str]:
    """The cells of one row of a Markdown table in `text`, by column header."""
    lines = text.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.startswith("| ") and line.count("|") > 2)
    header = [h.strip() for h in lines[header_at].strip("|").split("|")]
    [line] = [line for line in lines[header_at + 2 :] if line.startswith(f"| {row} |")]
    return dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))


@pytest.mark.slow  # 17 s; tests/test_collect_*.py check the tables and Markdown from written records
def test_real_runs_reach_the_comparison_table_and_its_markdown(tmp_path: Path) -> None:
    results, out = tmp_path / "results", tmp_path / "collected"
    proc = run_cli("-m", *ARGS, f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {rec["config"]["targets"]: rec for rec in records(results)}
    assert sorted(recs) == sorted(TARGETS)
    assert all(rec["status"] == "completed" and rec["steps"] == 10 for rec in recs.values())
    values = {t: rec["final"][rec["metric"]] for t, rec in recs.items()}
    assert all(rec["metric"] == "accuracy" for rec in recs.values())
    assert all(0 <= v <= 1 for v in values.values())
    assert len(set(values.values())) >= 3, values  # else the check below could not tell the columns apart

    coll = load(results)
    assert coll.problems == [] and coll.duplicates == 0 and len(coll.runs) == 5
    table = tables.compare(coll)
    assert table.columns == TARGETS
    assert len(table.rows) == 1
    [row] = table.rows
    assert row == "Synthetic(tiny-bert) LoRA r = 8"
    cells = table.cells.set_index("column")
    assert sorted(cells.index) == sorted(TARGETS) and set(cells["row"]) == {row}
    for t in TARGETS:
        cell = cells.loc[t]
        assert cell["mean"] == pytest.approx(values[t], rel=1e-12), t
        assert cell["n"] == 1 and cell["n_expected"] == 1 and cell["completed"] == 1, t
        assert cell["failed"] == cell["running"] == cell["diverged"] == 0, t

    summary = run_cli(
        "summary",
        "--results",
        str(results),
        "--out",
        str(out),
        "--wandb",
        "disabled",
        cwd=tmp_path,
        timeout=300,
        module="qvtune.collect",
    )
    assert summary.returncode == 0, summary.stderr[-3000:] + summary.stdout[-3000:]
    compare_md = out / "compare.md"
    assert compare_md.exists(), sorted(p.name for p in out.iterdir())
    text = compare_md.read_text(encoding="utf-8")
    shown = markdown_row(text, row)
    for t in TARGETS:
        # "0.531 (1)", "**0.547**¹ (1)": the value to 3 decimals, then the seed count
        cell_text = shown[t].replace("**", "")
        assert cell_text.startswith(f"{values[t]:.3f}"), (t, shown[t])
        assert "(1)" in cell_text, (t, shown[t])
