"""Table 1 and Table 2 from hand-made records, checked against expected Markdown and CSV fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from qvtune.collect import render, tables
from qvtune.collect.records import load
from tests.helpers.sample_records import make_record, write_record

FIXTURES = Path(__file__).parent / "fixtures" / "collect"
T1 = dict(model="roberta-base", task="mnli", rank=8, sweep="table1")
T1_VALUES = {  # seed -> value; None: no record; (value, status) for runs that did not complete
    "q": {0: 0.750, 1: 0.748, 2: (0.752, "diverged")},
    "k": {0: 0.733, 1: (None, "failed"), 2: 0.735},
    "v": {0: 0.809, 1: 0.811, 2: 0.810},
    "qk": {0: 0.778, 1: 0.780},
    "qv": {0: 0.820, 1: 0.822, 2: 0.824},
    "qkv": {0: 0.826, 1: 0.828, 2: 0.827},
}
T2 = dict(model="roberta-base", sweep="table2", epochs=10)
T2_VALUES = {  # (method, targets, rank, lambda) -> task -> per-seed values; method None: before fine-tune
    (None, "qkv", None, 1): {"rte": [0.45, 0.46], "mrpc": [0.66, 0.67]},
    ("full", "qkv", None, 1): {"rte": [0.73, 0.74], "mrpc": [0.84, 0.85]},
    ("lora", "qkv", 8, 1): {"rte": [0.70, 0.71], "mrpc": [0.85, 0.86]},
    ("full", "qv", None, 8): {"rte": [0.72, 0.73], "mrpc": [0.88, 0.89]},
    ("lora", "qv", 16, 8): {"rte": [0.72, 0.74], "mrpc": [0.90, 0.90]},
}


def table1_store(root: Path) -> Path:
    for targets, seeds in T1_VALUES.items():
        for seed, value in seeds.items():
            value, status = value if isinstance(value, tuple) else (value, "completed")
            write_record(
                root, make_record(**T1, targets=targets, seed=seed, value=value, status=status), "table1"
            )
    write_record(root, make_record(**{**T1, "rank": 4}, targets="qv", seed=0, value=0.820), "table1")
    # left out by the Table 1 rule: lambda != 1, and lambda = 1 runs of another sweep when a table1
    # sweep exists
    write_record(root, make_record(**T1, targets="qv", lam=4, seed=0, value=0.9), "table1")
    write_record(
        root, make_record(**{**T1, "sweep": "heatmap"}, targets="v", lr=2e-4, seed=0, value=0.95), "heatmap"
    )
    return root


def table2_store(root: Path) -> Path:
    for (method, targets, rank, lam), tasks in T2_VALUES.items():
        for task, values in tasks.items():
            for seed, value in enumerate(values):
                kw = dict(task=task, targets=targets, rank=rank, lam=lam, seed=seed, value=value)
                if method is None:
                    record = make_record(**{**T2, "epochs": 0}, method="full", **kw)
                else:
                    record = make_record(**T2, method=method, **kw)
                write_record(root, record, "table2")
    return root


def check_fixture(name: str, text: str) -> None:
    """Compare with tests/fixtures/collect/<name>.

    UPDATE_FIXTURES=1 rewrites it after a deliberate change.
    """
    import os

    path = FIXTURES / name
    if os.environ.get("UPDATE_FIXTURES"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_table1_layout(tmp_path: Path) -> None:
    t = tables.table1(load(table1_store(tmp_path)))
    assert t.rows == ["MNLI(R) r = 4", "MNLI(R) r = 8"]
    assert t.columns == ["q", "k", "v", "qk", "qv", "qkv"]
    cells = t.cells.set_index(["row", "column"])
    r8 = "MNLI(R) r = 8"
    assert cells.loc[(r8, "q"), "mean"] == pytest.approx(0.750)  # the diverged seed counts
    assert cells.loc[(r8, "q"), "diverged"] == 1
    assert cells.loc[(r8, "k"), ["n", "n_expected", "failed"]].tolist() == [2, 3, 1]
    assert cells.loc[(r8, "qk"), ["n", "n_expected"]].tolist() == [2, 3]
    assert cells.loc[(r8, "v"), "std"] == pytest.approx(0.001)
    assert cells.loc[(r8, "v"), "lr"] == pytest.approx(1e-4)  # not the heatmap sweep's 2e-4 run
    assert cells.loc[(r8, "qv"), "mean"] == pytest.approx(0.822)  # not the lambda = 4 run
    places = cells.loc[r8, "place"].to_dict()
    assert places == {"q": 0, "k": 0, "v": 3, "qk": 0, "qv": 2, "qkv": 1}
    assert cells.loc[(r8, "qkv"), "paper"] == 0.827
    assert cells.loc[(r8, "qkv"), "diff"] == pytest.approx(0.0)
    check_fixture("table1.md", render.to_markdown(t))
    check_fixture("table1.csv", render.to_csv(t))


def test_table1_markdown_cells(tmp_path: Path) -> None:
    """The cell texts users read: marks, spread, seed counts, statuses and the paper's value."""
    md = render.to_markdown(tables.table1(load(table1_store(tmp_path))))
    row = next(line for line in md.splitlines() if line.startswith("| MNLI(R) r = 8"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0.750 ± 0.002 (3, 1 diverged) [paper 0.749, Δ +0.001]"
    assert cells[2] == "0.734 ± 0.001 (2/3, 1 failed) [paper 0.733, Δ +0.001]"
    assert cells[3] == "0.810³ ± 0.001 (3) [paper 0.809, Δ +0.001]"
    assert cells[4] == "0.779 ± 0.001 (2/3) [paper 0.778, Δ +0.001]"
    assert cells[5] == "0.822² ± 0.002 (3) [paper 0.820, Δ +0.002]"
    assert cells[6] == "**0.827**¹ ± 0.001 (3) [paper 0.827, Δ +0.000]"


def test_table1_latex(tmp_path: Path) -> None:
    tex = render.to_latex(tables.table1(load(table1_store(tmp_path))))
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert (
        "\\textbf{0.827}" in tex and "\\underline{0.822}" in tex and "\\underline{\\underline{0.810}}" in tex
    )
    assert "$\\mathbf{W}_q$, $\\mathbf{W}_k$, $\\mathbf{W}_v$" in tex
    assert tex.count("\\\\\n") == 3  # header and two rows


def test_table2_layout(tmp_path: Path) -> None:
    t = tables.table2(load(table2_store(tmp_path)))
    assert t.rows == [
        "Before Fine-tune",
        "Full Fine-tune (QKV)",
        "LoRA (QKV) r = 8",
        "Full Fine-tune (QV) λ = 8",
        "LoRA (QV) r = 16, λ = 8",
    ]
    assert t.columns == ["rte", "mrpc"]
    cells = t.cells.set_index(["row", "column"])
    assert cells.loc[("LoRA (QV) r = 16, λ = 8", "mrpc"), "paper"] == pytest.approx(0.8995)
    assert cells.loc[("Before Fine-tune", "rte"), "paper"] == pytest.approx(0.4512)
    assert cells.loc[("LoRA (QV) r = 16, λ = 8", "mrpc"), "place"] == 1
    assert cells.loc[("Full Fine-tune (QV) λ = 8", "mrpc"), "place"] == 2
    assert cells.loc[("Before Fine-tune", "rte"), "place"] == 0  # the baseline is not ranked
    params = t.lead["Trainable #Param (M)"]
    assert params["Before Fine-tune"] == "0.00 [paper 0.00]"
    assert params["LoRA (QV) r = 16, λ = 8"] == "1.18 [paper 1.77]"  # the true count: head once
    check_fixture("table2.md", render.to_markdown(t))
    check_fixture("table2.csv", render.to_csv(t))


def test_table2_uses_only_its_sweep(tmp_path: Path) -> None:
    table2_store(tmp_path)
    write_record(
        tmp_path, make_record(task="rte", targets="qkv", epochs=3, value=0.99, sweep="table1"), "table1"
    )
    t = tables.table2(load(tmp_path))
    assert t.cells["mean"].max() < 0.99
    assert any("Only runs of the table2 sweep" in note for note in t.notes)


def test_empty_tables(tmp_path: Path) -> None:
    write_record(tmp_path, make_record(method="full", targets="q", rank=None))
    coll = load(tmp_path)
    assert tables.table1(coll).empty and tables.table2(coll).empty


def test_terminal_table(tmp_path: Path) -> None:
    """On a terminal the places are styles (bold, underline, double underline) instead of Markdown marks."""
    import io

    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=250, force_terminal=True, color_system="standard")
    console.print(render.to_rich(tables.table1(load(table1_store(tmp_path)))))
    text = buffer.getvalue()
    assert "\x1b[1m0.827" in text  # bold
    assert "\x1b[4m0.822" in text  # underline
    assert "\x1b[21m0.810" in text  # double underline
    assert "paper 0.827 Δ+0.000" in text


def test_compare_has_a_column_per_target_set_and_the_block_rates(tmp_path: Path) -> None:
    """Any target set of the registry is a column (after the paper's, by size); lam_o, lam_mlp and the
    LoRA+ ratio are columns of the runs (1, 1 and NaN for records written before they existed)."""
    for targets, value in (("qv", 0.7), ("qkvo+mlp", 0.8), ("qvo", 0.75), ("v+up+down", 0.6)):
        write_record(tmp_path, make_record(task="rte", targets=targets, value=value))
    block = {"lam_o": 2.0, "lam_mlp": 0.5, "optim": {"loraplus_ratio": 16}}
    write_record(tmp_path, make_record(task="rte", targets="qkvo+mlp", lr=3e-4, extra_config=block))
    coll = load(tmp_path)
    t = tables.compare(coll)
    assert t.columns == ["qv", "qvo", "v+up+down", "qkvo+mlp"]
    assert t.latex_labels["v+up+down"] == "$\\mathbf{W}_v$, $\\mathbf{W}_{up}$, $\\mathbf{W}_{down}$"
    runs = coll.runs.set_index("lr")
    assert (runs.loc[3e-4, ["lam_o", "lam_mlp", "loraplus_ratio"]] == [2.0, 0.5, 16.0]).all()
    old = runs.loc[1e-4]
    assert (old["lam_o"] == 1).all() and (old["lam_mlp"] == 1).all() and old["loraplus_ratio"].isna().all()
