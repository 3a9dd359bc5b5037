"""Loading records.

Every result.json below the folder, bad files reported and skipped, filters, duplicates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from qvtune.collect.labels import task_label
from qvtune.collect.records import OWN_COLUMNS, TABLE_CHOICES, TRAINING_ONLY, load, over_seeds, parse_filters
from qvtune.store.identity import IDENTITY, UNKEYED
from qvtune.store.record import CURVES_FILE, RESULT_FILE
from qvtune.store.store import result_files
from tests.helpers.sample_records import harness_section, make_record, write_record


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Three seeds of v and k on MNLI, with a failed, a diverged, a running run and some bad files."""
    root = tmp_path / "results"
    for seed in (0, 1, 2):
        write_record(root, make_record(targets="v", seed=seed), "table1")
    write_record(root, make_record(targets="k", seed=0))
    write_record(root, make_record(targets="k", seed=1, status="failed"))
    write_record(root, make_record(targets="k", seed=2, status="diverged", value=0.3295))
    write_record(root, make_record(targets="qv", seed=0, status="running"))
    # a folder name that lies: the record's config says QQP
    path = write_record(root, make_record(task="qqp", targets=["v", "q"], seed=0), "mnli-sweep")
    assert "mnli" in str(path)
    (root / "half" / "result.json").parent.mkdir(parents=True)
    (root / "half" / "result.json").write_text('{"status": "completed", "config": {"mod')
    (root / "list" / "result.json").parent.mkdir(parents=True)
    (root / "list" / "result.json").write_text("[1, 2, 3]")
    (root / "noconfig" / "result.json").parent.mkdir(parents=True)
    (root / "noconfig" / "result.json").write_text('{"status": "completed"}')
    bad_targets = make_record(seed=5)
    bad_targets.config["targets"] = "qx"
    write_record(root, bad_targets, "bad")
    return root


def test_reads_every_record_and_reports_bad_files(store: Path) -> None:
    coll = load(store)
    assert len(coll.runs) == 8
    assert sorted(coll.runs["status"].value_counts().items()) == [
        ("completed", 5),
        ("diverged", 1),
        ("failed", 1),
        ("running", 1),
    ]
    problems = dict(coll.problems)
    assert len(problems) == 4
    assert {"half/result.json", "list/result.json", "noconfig/result.json"} < set(problems)
    assert "half-written or corrupt" in problems["half/result.json"]
    assert "not a usable run record" in problems["list/result.json"]
    assert any("qx" in reason for reason in problems.values())


def test_config_decides_where_a_run_belongs(store: Path) -> None:
    runs = load(store).runs
    liar = runs[runs["path"].str.startswith("mnli-sweep/")]
    assert liar["task"].tolist() == ["qqp"]
    assert liar["targets"].tolist() == ["qv"]  # ["v", "q"] canonicalised


def test_values_by_status(store: Path) -> None:
    runs = load(store).runs.set_index(["targets", "seed"])
    assert runs.loc[("k", 2), "value"] == pytest.approx(0.3295)  # diverged: counts with what it scored
    assert math.isnan(runs.loc[("k", 1), "value"])  # failed: no score
    assert runs.loc[("k", 1), "error"].startswith("RuntimeError")


@pytest.mark.parametrize("status", ["completed", "diverged"])
def test_finished_record_without_final_metrics_is_reported(tmp_path: Path, status: str) -> None:
    """A finished run with nothing scored is a broken record, not a run that scored nothing."""
    record = make_record(status=status)
    record.final = {}
    path = write_record(tmp_path, record)
    coll = load(tmp_path)
    assert coll.runs.empty
    assert coll.problems == [
        (
            str(path.relative_to(tmp_path)),
            f"not a usable run record (incomplete: status {status} but no final metrics)",
        )
    ]


def test_finished_record_without_the_picked_metric_is_reported(tmp_path: Path) -> None:
    record = make_record()
    record.best = {"f1": 0.9}  # not the headline metric
    write_record(tmp_path, record)
    assert len(load(tmp_path).runs) == 1
    coll = load(tmp_path, pick="best")
    assert coll.runs.empty
    assert [reason for _, reason in coll.problems] == [
        "not a usable run record (incomplete: status completed but no best accuracy)"
    ]


@pytest.mark.parametrize(
    "place, value, reason",
    [
        ("final", "0.9", 'final.accuracy: string "0.9" where a number was expected'),
        ("final", True, "final.accuracy: bool true where a number was expected"),
        ("best", None, "best.accuracy: null where a number was expected"),
        ("history", "0.9", 'history[1].metrics.accuracy: string "0.9" where a number was expected'),
        ("history", [0.9], "history[1].metrics.accuracy: list where a number was expected"),
    ],
)
def test_metric_that_is_not_a_number_is_reported(
    tmp_path: Path, place: str, value: object, reason: str
) -> None:
    """float() would read "0.9" or true as a score: such a record is reported and left out."""
    record = make_record()
    metrics = record.history[1]["metrics"] if place == "history" else getattr(record, place)
    metrics["accuracy"] = value
    path = write_record(tmp_path, record)
    coll = load(tmp_path)
    assert coll.runs.empty
    assert coll.problems == [(str(path.relative_to(tmp_path)), f"not a usable run record ({reason})")]


def test_history_entry_that_is_not_an_evaluation_is_reported(tmp_path: Path) -> None:
    record = make_record()
    record.history[0] = {"step": 100, "epoch": 1.0}
    write_record(tmp_path, record)
    coll = load(tmp_path)
    assert coll.runs.empty
    assert "history[0]: not an evaluation" in coll.problems[0][1]


def test_nan_and_inf_metrics_are_numbers(tmp_path: Path) -> None:
    """A diverged run's loss is NaN or inf: legal, and the run counts with what it scored."""
    record = make_record(status="diverged", value=math.nan)
    record.final["loss"] = math.inf
    record.history[0]["metrics"]["loss"] = -math.inf
    write_record(tmp_path, record)
    coll = load(tmp_path)
    assert coll.problems == []
    assert coll.runs["status"].tolist() == ["diverged"] and math.isnan(coll.runs["value"].iloc[0])


def test_interrupted_run_counts_as_running(tmp_path: Path) -> None:
    """A killed run is not finished: its row says running, it is not scored, and it is counted where
    running runs are counted; a filter on its own status still finds it."""
    interrupted = make_record(seed=0, status="interrupted")
    assert interrupted.final  # evaluated before it was stopped: still no score
    write_record(tmp_path, interrupted)
    write_record(tmp_path, make_record(seed=1))
    coll = load(tmp_path)
    assert coll.problems == []
    assert coll.runs.sort_values("seed")["status"].tolist() == ["running", "completed"]
    stats = over_seeds(coll.runs, ["targets"]).iloc[0]
    assert (stats["n"], stats["completed"], stats["running"], stats["failed"]) == (1, 1, 1, 0)
    assert stats["mean"] == coll.runs.set_index("seed").loc[1, "value"]
    assert len(load(tmp_path, parse_filters(["status=interrupted"])).runs) == 1


def test_rates_are_rounded_as_run_keys_round_them(tmp_path: Path) -> None:
    """Two spellings of one rate are one setting; rates that differ in the 7th digit are two settings
    (two run keys), never duplicates of each other."""
    write_record(tmp_path, make_record(lr=1e-4, lam=3), "lam")
    write_record(tmp_path, make_record(lr=1e-4, lam=None, lr_v=3e-4), "lr_v")
    write_record(tmp_path, make_record(lr=1.0000001e-4, lam=3), "near")
    coll = load(tmp_path)
    assert coll.duplicates == 1
    runs = coll.runs.set_index(coll.runs["path"].str.split("/").str[0])
    assert runs.loc["lam", "lr_v"] == 3e-4 and runs.loc["lam", "lam"] == 3.0
    assert runs.loc["near", "lr"] == 1.0000001e-4
    assert runs.loc["near", "setting"] != runs.loc["lam", "setting"]


def test_full_fine_tune_has_no_rank(tmp_path: Path) -> None:
    write_record(tmp_path, make_record(method="full", targets="qkv", rank=None))
    runs = load(tmp_path).runs
    assert math.isnan(runs["rank"].iloc[0]) and math.isnan(runs["alpha"].iloc[0])


@pytest.mark.parametrize(
    "filters, expected",
    [
        (["task=mnli"], 7),
        (["task=qqp"], 1),
        (["model.name=roberta-base", "method.name=lora"], 8),
        (["model=roberta-base", "method=lora"], 8),
        (["targets=vq"], 2),
        (["targets=[q,v]"], 2),
        (["targets=k,v"], 6),
        (["rank=8", "lr=0.0001"], 8),
        (["lr=1e-4", "lam=1"], 8),
        (["status=completed"], 5),
        (["rank=16"], 0),
        (["no.such.key=1"], 0),
    ],
)
def test_filters(store: Path, filters: list[str], expected: int) -> None:
    assert len(load(store, parse_filters(filters)).runs) == expected


def test_filter_on_lambda_from_lr_v(tmp_path: Path) -> None:
    write_record(tmp_path, make_record(lr=1e-4, lam=None, lr_v=8e-4))
    write_record(tmp_path, make_record(lr=1e-4, lam=2))
    assert load(tmp_path, parse_filters(["lam=8"])).runs["lr_v"].tolist() == [pytest.approx(8e-4)]
    assert load(tmp_path, parse_filters(["lr_v=2e-4"])).runs["lam"].tolist() == [2.0]


def test_filter_syntax_error() -> None:
    with pytest.raises(ValueError, match="key=value"):
        parse_filters(["mnli"])


def test_duplicates_merge_and_keep_both_sweeps(tmp_path: Path) -> None:
    """The same setting and seed in two sweeps' folders is one run that belongs to both sweeps."""
    write_record(tmp_path, make_record(seed=0, sweep="heatmap"), "heatmap")
    write_record(tmp_path, make_record(seed=0, sweep="table1", status="failed"), "table1")
    coll = load(tmp_path)
    assert coll.duplicates == 1
    assert coll.runs["status"].tolist() == ["completed"]  # a completed record wins over a failed one
    assert coll.runs["sweep"].tolist() == ["heatmap,table1"]


def test_best_instead_of_final(tmp_path: Path) -> None:
    record = make_record()
    record.best = {"accuracy": 0.9}
    write_record(tmp_path, record)
    assert load(tmp_path).runs["value"].iloc[0] < 0.9
    assert load(tmp_path, pick="best").runs["value"].iloc[0] == 0.9


def test_tables_never_read_the_curves(store: Path) -> None:
    """The summaries alone make the rows: with every curves.json unreadable, nothing changes."""
    before = load(store)
    curves = list(store.rglob(CURVES_FILE))
    assert curves
    for path in curves:
        path.write_text("not json")
    after = load(store)
    assert after.runs.equals(before.runs) and after.problems == before.problems


def test_schema_1_records_with_inline_curves_load_alike(tmp_path: Path) -> None:
    """A record written before curves.json existed gives the same row.

    Schema 1 had the curves inside result.json.
    """
    record = make_record(seed=0, loss_points=50)
    write_record(tmp_path / "new", record)
    old = {**record.to_dict(), **asdict(record.curves), "schema": 1}
    for later in ("curves_file", "tokens", "precision", "device", "threads", "peak_gpu_mb", "traceback"):
        del old[later]
    path = tmp_path / "old" / record.run_key / RESULT_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old, indent=1, sort_keys=True))
    new_runs, old_runs = load(tmp_path / "new").runs, load(tmp_path / "old").runs
    assert old_runs.drop(columns="path").equals(new_runs.drop(columns="path"))


def test_missing_or_empty_folder(tmp_path: Path) -> None:
    assert result_files(tmp_path / "nothing") == []
    coll = load(tmp_path)
    assert coll.runs.empty and coll.problems == []


def test_a_setting_a_record_predates_is_its_baseline(tmp_path: Path) -> None:
    """A record written before a keyed setting existed and one that leaves it at its default are the
    same setting (its identity baseline); a record that sets it otherwise is another setting."""
    write_record(tmp_path, make_record(seed=0), "old")  # no eval_every, no optim: an earlier version's
    defaults = {"eval_every": 0, "optim": {"eps": 1e-8, "weight_decay": 0.0}}
    write_record(tmp_path, make_record(seed=1, extra_config=defaults), "default")
    write_record(tmp_path, make_record(seed=2, extra_config={"eval_every": 50}), "other")
    runs = load(tmp_path).runs
    runs = runs.set_index(runs["path"].str.split("/").str[0])
    assert runs.loc["old", "setting"] == runs.loc["default", "setting"] != runs.loc["other", "setting"]


def test_a_task_answered_as_text_is_its_own_task(tmp_path: Path) -> None:
    """The same data through a classification head and as text by a decoder are two tasks in the
    tables, never one cell."""
    write_record(tmp_path, make_record(task="sst2"), "head")
    write_record(
        tmp_path, make_record(task="sst2", extra_config={"task": {"name": "sst2", "format": "text"}}), "text"
    )
    runs = load(tmp_path).runs
    runs = runs.set_index(runs["path"].str.split("/").str[0])
    assert runs.loc["head", "task"] == "sst2" and runs.loc["text", "task"] == "sst2-text"
    assert task_label("sst2-text") == "SST-2 (text)" and task_label("kv-recall-text") == "KV-recall (text)"


@pytest.mark.parametrize(
    "settings, tuned",
    [({"epochs": 3}, True), ({"epochs": 0}, False), ({"epochs": 3, "max_steps": 0}, False)]
    + [({"epochs": 0, "max_steps": 20}, True)],
)
def test_a_run_is_tuned_when_it_takes_a_step(tmp_path: Path, settings: dict, tuned: bool) -> None:
    """epochs = 0 evaluates the untuned model unless max_steps asks for steps; max_steps = 0 takes none."""
    write_record(tmp_path, make_record(epochs=settings["epochs"], extra_config=settings))
    coll = load(tmp_path)
    assert coll.runs["tuned"].tolist() == [tuned]
    assert (len(coll.trained), len(coll.untuned)) == ((1, 0) if tuned else (0, 1))


def test_harness_scores_are_columns_and_a_failed_harness_is_missing(tmp_path: Path) -> None:
    scores = {"arc_easy": {"acc": 0.61, "acc_norm": None}, "gsm8k": {"exact_match,strict-match": 0.2}}
    write_record(tmp_path, make_record(seed=0, harness=harness_section(scores, limit=50)), "ok")
    failed = harness_section(limit=50, error="ValueError: no such task")
    write_record(tmp_path, make_record(seed=1, harness=failed, harness_tasks=["arc_easy"]), "failed")
    write_record(tmp_path, make_record(seed=2), "none")
    coll = load(tmp_path)
    assert coll.problems == []
    assert coll.harness_columns == [
        "harness:arc_easy/acc",
        "harness:arc_easy/acc_norm",
        "harness:gsm8k/exact_match,strict-match",
    ]
    assert "harness:arc_easy/acc_stderr" in coll.runs  # in runs.csv, not a column of the table
    runs = coll.runs.set_index(coll.runs["path"].str.split("/").str[0])
    assert runs.loc["ok", "harness:arc_easy/acc"] == 0.61 and runs.loc["ok", "harness_limit"] == 50
    assert math.isnan(runs.loc["ok", "harness:arc_easy/acc_norm"])  # N/A, not 0
    assert runs.loc["failed", "harness_error"] == "ValueError: no such task"
    assert runs.loc[["failed", "none"], coll.harness_columns].isna().all().all()
    assert runs.loc[["ok", "failed", "none"], "harness_tasks"].tolist() == ["arc_easy,gsm8k", "arc_easy", ""]


def test_a_harness_score_that_is_not_a_number_is_reported(tmp_path: Path) -> None:
    section = harness_section({"arc_easy": {"acc": 0.5}})
    section["tasks"]["arc_easy"]["acc"] = "0.5"
    write_record(tmp_path, make_record(harness=section))
    coll = load(tmp_path)
    assert coll.runs.empty
    assert coll.problems[0][1] == (
        'not a usable run record (harness.tasks.arc_easy.acc: string "0.5" where a number was expected)'
    )


KV = dict(model="smollm2", task="kv-recall", text=True, targets="qv")


def kv_recall(pairs: int) -> dict:
    """The kv-recall task's own settings (conf/task/kv-recall.yaml) with `pairs` key-value pairs."""
    return {"kv_recall": {"pairs": pairs, "train_size": 3000, "eval_size": 500, "data_seed": 1234}}


@pytest.mark.parametrize(
    "other",
    [
        dict(**KV, task_settings=kv_recall(8)),
        dict(task_settings={"metric": "f1"}),
        dict(extra_config={"model": {"name": "roberta-base", "source": "FacebookAI/roberta-base"}}),
        dict(extra_config={"max_train_samples": 1000}),
        dict(extra_config={"optim": {"weight_decay": 0.1}}),
        dict(extra_config={"layers": "first:2"}),
        dict(method="eva", extra_config={"method": {"name": "eva", "rho": 3.0}}),
    ],
    ids=[
        "kv_recall.pairs",
        "task.metric",
        "model.source",
        "max_train_samples",
        "weight_decay",
        "layers",
        "rho",
    ],
)
def test_runs_that_differ_in_a_keyed_setting_are_two_settings(tmp_path: Path, other: dict) -> None:
    """Whatever the setting (the task's data, its metric, the weights, the training data, the optimizer,
    the layers, a method's option), two runs of one seed that differ in it are never duplicates."""
    one = dict(**KV, task_settings=kv_recall(4)) if other.get("task") == "kv-recall" else {}
    if other.get("method") == "eva":
        one = dict(method="eva", extra_config={"method": {"name": "eva", "rho": 2.0}})
    write_record(tmp_path, make_record(seed=0, **one), "one")
    write_record(tmp_path, make_record(seed=0, **other), "other")
    coll = load(tmp_path)
    assert coll.problems == [] and coll.duplicates == 0
    assert coll.runs["setting"].nunique() == 2 and coll.runs["variant"].nunique() == 2


def test_copies_of_one_run_are_duplicates(tmp_path: Path) -> None:
    """Two records of one identity (a store copied into another) are one run; a setting the copy
    spells out at its baseline, or that an older record lacks, changes nothing."""
    for pairs in (4, 8):
        record = make_record(**KV, seed=0, task_settings=kv_recall(pairs))
        write_record(tmp_path, record, "store")
        write_record(tmp_path, record, "copy")
    spelled = make_record(
        **KV, seed=0, task_settings=kv_recall(4), extra_config={"optim": {"weight_decay": 0}}
    )
    write_record(tmp_path, spelled, "spelled")
    coll = load(tmp_path)
    assert (len(coll.runs), coll.duplicates) == (2, 3)


def test_a_method_option_a_record_predates_is_its_baseline(tmp_path: Path) -> None:
    write_record(tmp_path, make_record(method="eva", seed=0, extra_config={"method": {"name": "eva"}}), "old")
    write_record(
        tmp_path, make_record(method="eva", seed=1, extra_config={"method": {"name": "eva", "rho": 2.0}})
    )
    assert load(tmp_path).runs["setting"].nunique() == 1


def test_the_base_of_a_run_leaves_out_only_what_training_decides(tmp_path: Path) -> None:
    """An untuned run's score depends on the model, the task's data and how it is evaluated, not on
    what would train: a full fine-tune's epochs = 0 run shares its `base` with a tuned LoRA run at
    other rates, targets and training data, not with one at another max_len or kv-recall variant."""
    zero = make_record(
        **{**KV, "targets": "qkv"}, method="full", rank=None, epochs=0, task_settings=kv_recall(4)
    )
    write_record(tmp_path, zero, "zero")
    training = {"max_train_samples": 100, "batch_size": 8, "optim": {"weight_decay": 0.1}, "layers": [0]}
    tuned = make_record(**KV, lr=3e-4, lam=4, task_settings=kv_recall(4), extra_config=training)
    write_record(tmp_path, tuned, "tuned")
    longer = make_record(**KV, task_settings=kv_recall(4), extra_config={"max_len": 256})
    write_record(tmp_path, longer, "longer")
    write_record(tmp_path, make_record(**KV, task_settings=kv_recall(8)), "pairs8")
    runs = load(tmp_path).runs
    base = runs.set_index(runs["path"].str.split("/").str[0])["base"]
    assert base["zero"] == base["tuned"]
    assert len({base["zero"], base["longer"], base["pairs8"]}) == 3
    assert json.loads(base["pairs8"])["task.kv_recall.pairs"] == 8


def test_the_names_the_collector_leaves_out_are_keyed_settings() -> None:
    """Each name of OWN_COLUMNS, TABLE_CHOICES and TRAINING_ONLY is a keyed setting (or a group of
    them) of the identity: a renamed setting cannot silently drop out of a cell's identity."""
    keyed = [path for path, baseline in IDENTITY.items() if baseline is not UNKEYED]
    for name in (*OWN_COLUMNS, *TABLE_CHOICES, *TRAINING_ONLY):
        assert any(p == name or p.startswith(name + ".") for p in keyed), name
