"""python -m qvtune.collect end to end: outputs, determinism, demo summary, W&B, and no heavy imports."""

from __future__ import annotations

import csv
import io
import itertools
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from rich.console import Console

from qvtune.collect import summary
from qvtune.collect.__main__ import main
from tests.helpers.sample_records import demo_records, harness_section, make_record, write_record

# qvtune's modules a collection may import: none of them imports torch or the training code
# what collecting may import of qvtune: no model, data or training loop (train.runtime resolves a
# precision and imports torch only when asked for a device)
LIGHT = ("qvtune", "qvtune.status", "qvtune.train", "qvtune.train.runtime")
LIGHT_PACKAGES = ("collect", "config", "store", "common")
COLLECT_MODULES = (
    "__main__",
    "commands",
    "curves",
    "figures",
    "heatmap",
    "labels",
    "paper",
    "records",
    "render",
    "report",
    "tables",
    "verdicts",
    "wandb_log",
)


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A demo-sized store (minilm, synthetic task) with a failed run, a running run and a corrupt file."""
    root = tmp_path / "results"
    for record in demo_records(seeds=(0, 1, 2)):
        write_record(root, record, "demo")
    write_record(
        root,
        make_record(model="minilm", task="synthetic", targets="k", rank=8, seed=3, epochs=1, status="failed"),
        "demo",
    )
    write_record(
        root,
        make_record(
            model="minilm", task="synthetic", targets="q", rank=8, seed=3, epochs=1, status="running"
        ),
        "demo",
    )
    (root / "demo" / "broken").mkdir(parents=True)
    (root / "demo" / "broken" / "result.json").write_text('{"schema": 1, "status": "compl')
    return root


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip writing PNG/PDF (the slow part) where a test is about the rest; other tests render them."""
    from qvtune.collect import curves, heatmap
    from qvtune.common.figures import figure_paths

    for module in (curves, heatmap):
        monkeypatch.setattr(module, "save_figure", lambda fig, folder, stem: figure_paths(folder, stem))


def collect(*args: str) -> int:
    return main([*args, "--wandb", "disabled"])


def test_all_writes_everything(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert collect("all", "--results", str(demo), "--out", str(out)) == 0
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    for name in ("table1", "table2", "compare"):
        assert {f"{name}.md", f"{name}.tex", f"{name}.csv"} <= files
    assert {
        "verdicts.md",
        "verdicts.csv",
        "heatmaps.csv",
        "curves.csv",
        "runs.csv",
        "report.md",
        "heatmaps/heatmap_minilm_synthetic_lora_qv_r8.png",
        "heatmaps/heatmap_minilm_synthetic_lora_qv_r8.pdf",
        "curves/curves_minilm_synthetic_lora_qv_r8.png",
    } <= files
    report = (out / "report.md").read_text()
    assert "`demo/broken/result.json`: unreadable" in report  # reported by path, and collection went on
    assert "1 failed" in report and "1 running" in report
    assert "| Synthetic(minilm) r = 8 |" in (out / "table1.md").read_text()
    printed = capsys.readouterr().out
    assert "skipped" in printed and "broken" in printed


def test_formats_and_filters(demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert collect("table1", "targets=q,k", "--format", "md", "--results", str(demo), "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["table1.md"]
    row = next(
        line for line in (out / "table1.md").read_text().splitlines() if line.startswith("| Synthetic")
    )
    cells = [c.strip() for c in row.strip("|").split("|")]  # the paper's six columns, only q and k filled
    assert cells == [
        "Synthetic(minilm) r = 8",
        "**0.713**¹ ± 0.001 (3/4, 1 running)",
        "0.693² ± 0.001 (3/4, 1 failed)",
        "",
        "",
        "",
        "",
    ]


def test_same_records_same_bytes(demo: Path, tmp_path: Path, no_figures: None) -> None:
    """Markdown and CSV are byte-identical from one collection to the next, wherever the store lives."""
    copy = tmp_path / "elsewhere" / "store"
    shutil.copytree(demo, copy)
    for results, out in ((demo, tmp_path / "a"), (copy, tmp_path / "b")):
        assert collect("all", "--results", str(results), "--out", str(out)) == 0

    def texts(out: Path) -> dict[str, bytes]:
        return {
            p.relative_to(out).as_posix(): p.read_bytes()
            for p in out.rglob("*")
            if p.suffix in (".md", ".csv")
        }

    first = texts(tmp_path / "a")
    assert len(first) == 12
    assert texts(tmp_path / "b") == first


def test_summary_for_the_demo(demo: Path, tmp_path: Path, no_figures: None) -> None:
    buffer = io.StringIO()
    report = summary(demo, tmp_path / "out", console=Console(file=buffer, width=160))
    printed = buffer.getvalue()
    assert "Weight types compared" in printed and "Synthetic(minilm) LoRA r = 8" in printed
    assert "tuning v beats tuning k: supported" in printed
    heatmap_png = tmp_path / "out" / "heatmaps" / "heatmap_minilm_synthetic_lora_qv_r8.png"
    assert report.images == {"heatmap_minilm_synthetic_lora_qv_r8": heatmap_png}
    compare = report.tables[0]
    assert compare.columns == ["q", "k", "v", "qv", "qkv"] and compare.rows == [
        "Synthetic(minilm) LoRA r = 8"
    ]
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# qvtune: summary")


def test_curves_for_chosen_settings(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_figures: None
) -> None:
    out = tmp_path / "out"
    assert collect("curves", "targets=qv", "lr=1e-4", "--results", str(demo), "--out", str(out)) == 0
    settings = {line.split('"')[1] for line in (out / "curves.csv").read_text().splitlines()[1:]}
    assert settings == {"η_QK=1e-4, η_V=1e-4, λ=1", "η_QK=1e-4, η_V=4e-4, λ=4"}
    monkeypatch.setattr("qvtune.collect.curves.MAX_SETTINGS", 3)
    # too many to draw
    assert collect("curves", "model=minilm", "--results", str(demo), "--out", str(out)) == 2


def test_pool_and_margin_options(tmp_path: Path, no_figures: None) -> None:
    """--pool puts Table 1's runs into the grid's heatmap; --margin is claim 2's margin, printed with it."""
    root = tmp_path / "results"
    for qk, v, seed in itertools.product((1e-4, 4e-4), (1e-4, 4e-4), (0, 1, 2)):
        record = make_record(targets="qv", lr=qk, lam=None, lr_v=v, seed=seed, sweep="grid")
        write_record(root, record, "grid")
    for targets, seed in itertools.product(("qv", "qkv"), (0, 1, 2)):
        write_record(root, make_record(targets=targets, lr=2e-3, seed=seed, sweep="table1"), "table1")

    def heatmaps(*flags: str) -> set[tuple[str, str, str]]:
        out = tmp_path / "out"
        assert collect("heatmap", "--format", "csv", "--results", str(root), "--out", str(out), *flags) == 0
        with open(out / "heatmaps.csv", newline="") as f:
            return {(row["heatmap"], row["sweeps"], row["lr"]) for row in csv.DictReader(f)}

    own = "heatmap_grid_roberta-base_mnli_lora_qv_r8"
    assert heatmaps() == {(own, "grid", lr) for lr in ("0.0001", "0.0004")}
    pooled = "heatmap_roberta-base_mnli_lora_qv_r8"
    assert heatmaps("--pool") == {(pooled, "grid,table1", lr) for lr in ("0.0001", "0.0004", "0.002")}
    report = summary(root, tmp_path / "summary", console=Console(file=io.StringIO()), pool=True)
    assert set(report.images) == {pooled}

    out = tmp_path / "margin"
    assert collect("summary", "--margin", "0.05", "--results", str(root), "--out", str(out)) == 0
    text = (out / "verdicts.md").read_text()
    assert "qv matches qkv (or is better) within ±0.05: supported" in text and "inside ±0.05" in text
    with pytest.raises(SystemExit):
        collect("summary", "--margin", "0", "--results", str(root))


def test_missing_and_empty_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert collect("all", "--results", str(tmp_path / "nope")) == 2
    (tmp_path / "empty").mkdir()
    assert collect("all", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "out")) == 0
    assert "nothing to collect" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        collect("all", "mnli")  # a filter needs key=value


def test_wandb_summary_run(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_figures: None
) -> None:
    """Logged lazily, with files under --out; a stand-in module records the calls."""
    calls: dict = {"log": {}, "summary": {}}

    class Run:
        summary = calls["summary"]

        def log(self, data: dict) -> None:
            calls["log"].update(data)

        def finish(self) -> None:
            calls["finished"] = True

    def init(**kwargs):
        calls["init"] = kwargs
        return Run()

    fake = types.SimpleNamespace(
        init=init, Table=lambda dataframe: ("table", len(dataframe)), Image=lambda path: ("image", path)
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "out"
    assert main(["summary", "--results", str(demo), "--out", str(out)]) == 0  # offline by default
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(out)
    assert {
        "tables/compare",
        "tables/verdicts",
        "tables/heatmaps",
        "figures/heatmap_minilm_synthetic_lora_qv_r8",
    } <= set(calls["log"])
    assert calls["summary"]["verdict/v>k"].startswith("tuning v beats tuning k")
    assert calls["finished"]


def test_no_torch_or_training_code(demo: Path) -> None:
    """Collecting imports neither torch, transformers, peft nor qvtune's training modules."""
    code = (
        "import sys\n"
        + "".join(f"import qvtune.collect.{m}\n" for m in COLLECT_MODULES)
        + f"qvtune.collect.tables.table1(qvtune.collect.records.load({str(demo)!r}))\n"
        "heavy = sorted(m for m in sys.modules\n"
        "               if m.split('.')[0] in ('torch', 'transformers', 'peft', 'wandb')\n"
        f"               or (m.startswith('qvtune') and m not in {LIGHT!r}\n"
        f"                   and m.split('.')[1] not in {LIGHT_PACKAGES!r}))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_heatmap_axes_on_request(tmp_path: Path, no_figures: None, capsys: pytest.CaptureFixture) -> None:
    """--axes draws the heatmaps over two rates; an unknown one is refused in one line naming the rest."""
    root = tmp_path / "results"
    for lam, ratio, seed in itertools.product((1, 4), (None, 16), (0, 1)):
        settings = {"optim": {"loraplus_ratio": ratio}}
        write_record(root, make_record(lam=lam, seed=seed, sweep="loraplus", extra_config=settings), "s")
    out = tmp_path / "out"
    assert (
        collect(
            "heatmap",
            "--format",
            "csv",
            "--axes",
            "loraplus_ratio,lam",
            "--results",
            str(root),
            "--out",
            str(out),
        )
        == 0
    )
    assert [p.name for p in out.iterdir()] == ["rate_heatmaps.csv"]  # not Figure 1's: not asked
    with open(out / "rate_heatmaps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["y_rate"], r["y"], r["x_rate"], r["x"]) for r in rows} == {
        ("loraplus_ratio", y, "lam", x) for y in ("1", "16") for x in ("1", "4")
    }
    assert "sweep loraplus · R x λ" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        collect("heatmap", "--axes", "lam,eta", "--results", str(root))
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown rate 'eta'" in err and "lam_mlp, loraplus_ratio, head_lr" in err


def test_all_writes_the_harness_scores(tmp_path: Path, no_figures: None) -> None:
    """Runs with harness scores: a column per task/metric in runs.csv, and harness.md/.csv/.tex."""
    root = tmp_path / "results"
    text = dict(model="smollm2", task="kv-recall", text=True)
    for seed in (0, 1):
        section = harness_section({"arc_easy": {"acc": 0.5 + 0.1 * seed}}, limit=20)
        write_record(root, make_record(**text, seed=seed, harness=section))
        failed = harness_section(limit=20, error="E: gone")
        write_record(
            root, make_record(**text, seed=seed, epochs=0, harness=failed, harness_tasks=["arc_easy"])
        )
    out = tmp_path / "out"
    assert collect("all", "--results", str(root), "--out", str(out)) == 0
    assert {"harness.md", "harness.csv", "harness.tex"} <= {p.name for p in out.iterdir()}
    with open(out / "runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    assert sorted(r["harness:arc_easy/acc"] for r in runs) == ["", "", "0.5", "0.6"]  # failed: empty, not 0
    assert sorted(r["harness_error"] for r in runs) == ["", "", "E: gone", "E: gone"]
    harness_md = (out / "harness.md").read_text()
    assert "| Before Fine-tune (smollm2) | - (0/2) |" in harness_md and "**0.550**¹ ± 0.071 (2)" in harness_md
    assert "- 2 run(s) have no harness scores ('-'): E: gone" in harness_md
    assert "### lm-evaluation-harness scores" in (out / "report.md").read_text()
