"""Table 1 and Table 2 from hand-made records, checked against expected Markdown and CSV fixtures."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from qvtune.collect import render, tables
from qvtune.collect.records import load
from tests.helpers.sample_records import harness_section, make_record, write_record

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


def test_table_note_names_the_sweeps_it_used(tmp_path: Path) -> None:
    table2_store(tmp_path)
    write_record(
        tmp_path, make_record(task="rte", targets="qv", epochs=3, value=0.5, sweep="table2-text"), "t2text"
    )
    t = tables.table2(load(tmp_path))
    assert any("Only runs of the table2, table2-text sweeps are used" in note for note in t.notes)


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


TEXT = dict(model="smollm2", task="sst2", text=True, method="lora", rank=8)
ZERO_SHOT = {0: 0.55, 1: 0.57}  # seed -> the untuned model's accuracy on SST-2 as text


def text_store(root: Path) -> Path:
    """SST-2 as text on smollm2: LoRA on q, v, qv (3 seeds, a table1-text sweep); its zero-shot runs
    (epochs = 0, 2 seeds, outside sweeps); a zero-shot run scored on another metric; kv-recall zero-shot
    only (no tuned row to stand beside)."""
    for targets, base in (("q", 0.80), ("v", 0.84), ("qv", 0.86)):
        for seed in (0, 1, 2):
            record = make_record(
                **TEXT, targets=targets, seed=seed, value=base + 0.001 * seed, sweep="table1-text"
            )
            write_record(root, record, "table1-text")
    for seed, value in ZERO_SHOT.items():
        write_record(root, make_record(**TEXT, targets="qv", epochs=0, seed=seed, value=value))
    other = make_record(**TEXT, targets="qv", epochs=0, seed=5, value=0.01, extra_config={"max_len": 256})
    other.metric = other.config["task"]["metric"] = "exact_match"  # same task, another headline metric
    write_record(root, other)
    write_record(root, make_record(model="smollm2", task="kv-recall", text=True, epochs=0, value=0.1))
    return root


def test_a_text_task_has_its_zero_shot_row_beside_table1_and_the_comparison(tmp_path: Path) -> None:
    coll = load(text_store(tmp_path))
    for t in (tables.table1(coll), tables.compare(coll)):
        before = "SST-2 (text)(smollm2) Before Fine-tune"
        assert t.rows[0] == before and len(t.rows) == 2  # no kv-recall row: nothing tuned to compare
        cells = t.cells.set_index(["row", "column"])
        assert sorted(cells.loc[before].index) == ["q", "qv", "v"]  # under each weight type tuned
        zero = cells.loc[(before, "qv")]
        assert zero["mean"] == pytest.approx(0.56) and zero["std"] == pytest.approx(0.01 * 2**0.5)
        assert (zero["n"], zero["n_expected"], zero["place"]) == (2, 2, 0)  # its own seeds; not ranked
        assert np.isnan(zero["paper"]) and zero["method"] == "" and zero["targets"] == ""
        assert cells.loc[(t.rows[1], "qv"), "place"] == 1
        assert any("zero-shot" in note for note in t.notes)
        row = next(line for line in render.to_markdown(t).splitlines() if line.startswith(f"| {before}"))
        assert "0.560 ± 0.014 (2)" in row
    assert any("table1 sweep has no epochs = 0 run" in note for note in tables.table1(coll).notes)


def test_table2_shows_the_zero_shot_row_of_a_text_task(tmp_path: Path) -> None:
    coll = load(text_store(tmp_path))
    t = tables.table2(coll)
    assert t.rows[0] == "Before Fine-tune" and t.columns == ["kv-recall-text", "sst2-text"]
    cells = t.cells.set_index(["row", "column"])
    assert cells.loc[("Before Fine-tune", "sst2-text"), "mean"] == pytest.approx(0.56)  # accuracy only
    assert cells.loc[("Before Fine-tune", "kv-recall-text"), "metric"] == "exact_match"
    assert any("untuned model answering zero-shot" in note for note in t.notes)


def test_a_classifier_gets_the_same_before_row_in_table1(tmp_path: Path) -> None:
    """Both formats alike: the epochs = 0 evaluation of the fresh head beside Table 1, the paper's
    Before Fine-tune value (Table 2) next to it. max_steps = 0 takes no step either, whatever its
    epochs: a baseline, never a tuned cell."""
    for targets, seed in itertools.product(("v", "qkv"), (0, 1)):
        write_record(tmp_path, make_record(**T1, targets=targets, seed=seed, value=0.8), "table1")
    for seed, value in ((0, 0.33), (1, 0.35)):
        write_record(tmp_path, make_record(**T1, targets="qv", epochs=0, seed=seed, value=value), "table1")
    no_steps = make_record(**T1, targets="qv", seed=0, value=0.3, extra_config={"max_steps": 0})
    write_record(tmp_path, no_steps, "table1")
    coll = load(tmp_path)
    assert coll.runs.set_index("value").loc[0.3, "tuned"] == False  # noqa: E712
    t = tables.table1(coll)
    assert t.rows == ["MNLI(R) Before Fine-tune", "MNLI(R) r = 8"]
    cells = t.cells.set_index(["row", "column"])
    assert ("MNLI(R) r = 8", "qv") not in cells.index
    zero = cells.loc[("MNLI(R) Before Fine-tune", "v")]
    assert zero["mean"] == pytest.approx(0.34) and zero["paper"] == pytest.approx(0.3295)
    assert zero["sweeps"] == "table1" and zero["alternatives"] == 1  # the max_steps = 0 setting
    assert any("the fresh head" in note for note in t.notes)


HARNESS_ACC = {1: 0.50, 4: 0.54}  # lambda -> arc_easy accuracy of the tuned model (seed s adds 0.002 s)


def harness_store(root: Path) -> Path:
    """smollm2 tuned on SST-2 as text, scored with the harness: qv at lambda 1 and 4 (3 seeds; lambda 4
    also on hellaswag), q whose harness failed, and the base model's scores from epochs = 0 runs."""
    for (lam, acc), seed in itertools.product(HARNESS_ACC.items(), (0, 1, 2)):
        scores = {"arc_easy": {"acc": acc + 0.002 * seed, "acc_norm": acc - 0.01}}
        if lam == 4:
            scores["hellaswag"] = {"acc": 0.3, "acc_norm": None}  # null: N/A in lm-eval
        section = harness_section(scores, limit=100, num_fewshot=0)
        write_record(root, make_record(**TEXT, targets="qv", lam=lam, seed=seed, harness=section))
        failed = harness_section(limit=100, num_fewshot=0, error="ConnectionError: arc_easy is not cached")
        record = make_record(**TEXT, targets="q", seed=seed, harness=failed, harness_tasks=["arc_easy"])
        write_record(root, record)
    for seed in (0, 1):
        section = harness_section({"arc_easy": {"acc": 0.40, "acc_norm": 0.41}}, limit=100, num_fewshot=0)
        write_record(root, make_record(**TEXT, targets="qv", epochs=0, seed=seed, harness=section))
    write_record(root, make_record(**TEXT, targets="v", seed=0))  # no harness: not a row
    return root


def test_the_harness_table(tmp_path: Path) -> None:
    t = tables.harness(load(harness_store(tmp_path)))
    assert t.columns == ["arc_easy/acc", "arc_easy/acc_norm", "hellaswag/acc", "hellaswag/acc_norm"]
    before, q = "Before Fine-tune (smollm2)", "SST-2 (text)(smollm2) LoRA (Q) r = 8, λ = 1"
    qv1, qv4 = (f"SST-2 (text)(smollm2) LoRA (QV) r = 8, λ = {lam}" for lam in (1, 4))
    assert t.rows == [before, q, qv1, qv4]
    cells = t.cells.set_index(["row", "column"])
    assert cells.loc[(qv4, "arc_easy/acc"), ["mean", "n", "place"]].tolist() == [pytest.approx(0.542), 3, 1]
    assert cells.loc[(qv4, "arc_easy/acc"), "std"] == pytest.approx(0.002)
    assert cells.loc[(before, "arc_easy/acc"), ["mean", "n", "n_expected", "place"]].tolist() == [
        pytest.approx(0.40),
        2,
        2,
        0,
    ]
    # a failed harness and an N/A score are missing, never 0; a task not asked for has no cell
    assert np.isnan(cells.loc[(q, "arc_easy/acc"), "mean"]) and cells.loc[(q, "arc_easy/acc"), "n"] == 0
    assert np.isnan(cells.loc[(qv4, "hellaswag/acc_norm"), "mean"])
    assert (qv1, "hellaswag/acc") not in cells.index and (q, "hellaswag/acc") not in cells.index
    assert "3 run(s) have no harness scores ('-'): ConnectionError: arc_easy is not cached" in t.notes
    assert "The harness scored limit 100, 0-shot." in t.notes
    md = render.to_markdown(t)
    q_row = next(line for line in md.splitlines() if line.startswith(f"| {q} "))
    assert [c.strip() for c in q_row.strip("|").split("|")][1:] == ["- (0/3)", "- (0/3)", "", ""]


def test_no_harness_table_without_harness_runs(tmp_path: Path) -> None:
    assert tables.harness(load(table1_store(tmp_path))).empty


KV = dict(model="smollm2", task="kv-recall", text=True, method="lora", rank=8)
KV_ROW = "KV-recall (text)(smollm2)"
KV_VALUES = {4: (0.60, 0.20), 8: (0.40, 0.05)}  # pairs -> (tuned qv, zero-shot): both seeds alike


def kv_store(root: Path, zero_shot: tuple[int, ...] = (4, 8)) -> Path:
    """kv-recall with 4 and with 8 key-value pairs, the same seeds: LoRA on v, qv and qkv, and the
    zero-shot runs (epochs = 0, a full fine-tune's config) of the variants in `zero_shot`."""
    for (pairs, (tuned, zero)), seed in itertools.product(KV_VALUES.items(), (0, 1)):
        task = {"kv_recall": {"pairs": pairs, "train_size": 3000, "eval_size": 500, "data_seed": 1234}}
        for targets, drop in (("v", 0.05), ("qv", 0.0), ("qkv", 0.01)):
            record = make_record(**KV, targets=targets, seed=seed, value=tuned - drop, task_settings=task)
            write_record(root, record)
        if pairs in zero_shot:
            record = make_record(
                **{**KV, "method": "full"}, targets="qkv", epochs=0, seed=seed, value=zero, task_settings=task
            )
            write_record(root, record)
    return root


def test_two_kv_recall_variants_stay_two_cells_with_their_own_zero_shot_rows(tmp_path: Path) -> None:
    """pairs = 4 and pairs = 8 with the same seeds: never pooled, never duplicates; each variant's
    zero-shot row stands beside its own tuned row, the non-default variant named."""
    coll = load(kv_store(tmp_path))
    assert coll.duplicates == 0 and len(coll.runs) == 16
    eight = "[task.kv_recall.pairs=8]"
    for t, method in ((tables.table1(coll), ""), (tables.compare(coll), " LoRA")):  # compare names methods
        tuned_row = f"{KV_ROW}{method} r = 8"
        assert t.rows == [
            f"{KV_ROW} Before Fine-tune",
            tuned_row,
            f"{KV_ROW} Before Fine-tune {eight}",
            f"{tuned_row} {eight}",
        ]
        cells = t.cells.set_index(["row", "column"])
        for pairs, suffix in ((4, ""), (8, f" {eight}")):
            tuned, zero = KV_VALUES[pairs]
            assert cells.loc[(f"{tuned_row}{suffix}", "qv"), ["mean", "n"]].tolist() == [
                pytest.approx(tuned),
                2,
            ]
            before = cells.loc[(f"{KV_ROW} Before Fine-tune{suffix}", "qv"), ["mean", "n"]]
            assert before.tolist() == [pytest.approx(zero), 2]
        assert (cells["alternatives"] == 0).all()
        assert tables.NAMED_NOTE in t.notes
    t = tables.table2(coll)
    assert t.rows == [
        "Before Fine-tune",
        f"Before Fine-tune {eight}",
        "LoRA (QKV) r = 8",
        f"LoRA (QKV) r = 8 {eight}",
        "LoRA (QV) r = 8, λ = 1",
        f"LoRA (QV) r = 8, λ = 1 {eight}",
    ]
    t2 = t.cells.set_index(["row", "column"])
    assert t2.loc[(f"Before Fine-tune {eight}", "kv-recall-text"), "mean"] == pytest.approx(KV_VALUES[8][1])
    assert t2.loc[(f"LoRA (QKV) r = 8 {eight}", "kv-recall-text"), "mean"] == pytest.approx(0.39)
    # ranked within its variant's data: the best of pairs = 8 is first there, not third in the column
    assert t2.loc[(f"LoRA (QV) r = 8, λ = 1 {eight}", "kv-recall-text"), "place"] == 1
    assert t2.loc[("LoRA (QV) r = 8, λ = 1", "kv-recall-text"), "place"] == 1
    assert tables.PLACES_NOTE in t.notes


def test_a_zero_shot_run_of_another_variant_is_not_a_before_row(tmp_path: Path) -> None:
    """Only pairs = 8 was evaluated untuned: the tuned pairs = 4 row gets no Before Fine-tune row."""
    t = tables.table1(load(kv_store(tmp_path, zero_shot=(8,))))
    eight = "[task.kv_recall.pairs=8]"
    assert t.rows == [f"{KV_ROW} r = 8", f"{KV_ROW} Before Fine-tune {eight}", f"{KV_ROW} r = 8 {eight}"]


def test_runs_that_differ_in_max_train_samples_are_not_merged(tmp_path: Path) -> None:
    """A cell never picks between (or pools) runs trained on other data; the epochs = 0 run, which
    trains on nothing, is the Before Fine-tune row of both."""
    for seed, (samples, value) in itertools.product((0, 1), ((None, 0.82), (1000, 0.70))):
        extra = {"max_train_samples": samples}
        for targets in ("v", "qv"):
            record = make_record(**T1, targets=targets, seed=seed, value=value, extra_config=extra)
            write_record(tmp_path, record, "table1")
        if samples is None:
            write_record(tmp_path, make_record(**T1, targets="qv", epochs=0, seed=seed, value=0.33), "table1")
    t = tables.table1(load(tmp_path))
    assert t.rows == ["MNLI(R) Before Fine-tune", "MNLI(R) r = 8", "MNLI(R) r = 8 [max_train_samples=1000]"]
    cells = t.cells.set_index(["row", "column"])
    assert cells.loc[("MNLI(R) r = 8", "qv"), "mean"] == pytest.approx(0.82)
    assert cells.loc[("MNLI(R) r = 8 [max_train_samples=1000]", "qv"), "mean"] == pytest.approx(0.70)
    assert cells.loc[("MNLI(R) r = 8 [max_train_samples=1000]", "qv"), ["n", "alternatives"]].tolist() == [
        2,
        0,
    ]
    assert cells.loc[("MNLI(R) Before Fine-tune", "v"), "mean"] == pytest.approx(0.33)
