"""Text tasks' data and checks (qvtune.data.text): the generators, custom files with column mappings,
answer-only loss masks, the chat template, answer extraction and scores, validation and run keys."""

import copy
import json
from functools import cache

import numpy as np
import pytest

from qvtune.config.validate import validate
from qvtune.data.encode import collate, encode_task, encode_text
from qvtune.data.load import load_task
from qvtune.data.tasks import Split
from qvtune.data.text import IGNORE, extract, prompt_ids, text_scores
from qvtune.data.vocab import SPECIAL_TOKENS, TEXT_VOCAB, WORDS, builtin_tokenizer
from qvtune.store.identity import run_key
from tests.helpers import make_config

TINY = ("model=tiny-llama", "wandb.mode=disabled")


@cache
def _composed(*overrides: str):
    return make_config(*TINY, *overrides)


def text_config(*overrides: str, **changes):
    """tiny-llama's config with these overrides (composed once per set: composing takes a while),
    then `changes` set on its task."""
    cfg = copy.deepcopy(_composed(*overrides))
    for key, value in changes.items():
        setattr(cfg.task, key, value)
    return cfg


def test_text_vocabulary_appends_and_the_classifiers_tokenizer_is_unchanged():
    head, text = builtin_tokenizer(), builtin_tokenizer(text=True)
    assert len(head) == len(SPECIAL_TOKENS + WORDS) == 108
    assert [text.convert_tokens_to_ids(w) for w in WORDS] == [head.convert_tokens_to_ids(w) for w in WORDS]
    assert len(text) == len(TEXT_VOCAB) and text.eos_token == "[EOS]"
    ids = text("12 + 345 =", add_special_tokens=False)["input_ids"]
    assert text.decode(ids) == "12 + 345 =" and len(ids) == 7  # digits, glued back when decoded
    assert head("cat 12")["input_ids"] == [2, 5, 1, 3]  # the classifiers': [CLS] cat [UNK] [SEP] as before


def test_kv_recall_is_deterministic_sized_and_answered_by_the_key():
    cfg = text_config("task=kv-recall")
    cfg.task.kv_recall.pairs, cfg.task.kv_recall.train_size = 3, 50
    a, b = load_task(cfg.task, None), load_task(cfg.task, None)
    assert a.fingerprint == b.fingerprint and a.train.columns == b.train.columns
    assert len(a.train) == 50 and len(a.evals["validation"]) == 500
    raw = load_task(cfg.task, None).train  # prompts "<pairs>\nkey: k\nvalue:"
    for prompt, answer in zip(raw.columns[0], raw.answers):
        pairs, key = prompt.split("\nkey: ")
        table = dict(p.split() for p in pairs.split(", "))
        assert len(table) == 3 and table[key.removesuffix("\nvalue:")] == answer
    cfg.task.kv_recall.data_seed = 7
    other = load_task(cfg.task, None)
    assert other.fingerprint != a.fingerprint


def test_arithmetic_sums_with_the_digits_asked_for():
    cfg = text_config("task=arithmetic")
    cfg.task.arithmetic.digits, cfg.task.arithmetic.train_size = 3, 40
    data = load_task(cfg.task, None)
    assert len(data.train) == 40
    for prompt, answer in zip(data.train.columns[0], data.train.answers):
        a, b = prompt.removesuffix(" =").split(" + ")
        assert int(a) + int(b) == int(answer) and max(len(a), len(b)) <= 3
    assert load_task(cfg.task, None).train.columns == data.train.columns


def test_glue_task_as_text_uses_its_label_words():
    cfg = text_config("task=synthetic", "task.format=text")
    cfg.task.synthetic.train_size = 20
    data = load_task(cfg.task, None)
    assert data.train.answers == [["no", "yes"][y] for y in data.train.labels]
    assert data.train.columns[0][0].startswith("list: ") and "\nquery: " in data.train.columns[0][0]
    cfg.task.format = "head"
    head = load_task(cfg.task, None)
    assert head.fingerprint != data.fingerprint  # the tokenization cache keeps them apart


def test_custom_jsonl_and_csv_with_column_mappings(tmp_path):
    rows = [{"q": f"what is {i}", "a": f"answer {i}", "extra": i} for i in range(20)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"q": "dev q", "a": "dev a", "extra": 0}) + "\n")
    cfg = text_config(
        "task=custom", f"task.source={train}", f"task.eval_source={dev}", "task.text_fields=[q]",
        "task.response_field=a", "task.prompt='Q: {q} A:'",
    )  # fmt: skip
    assert validate(cfg) == []
    data = load_task(cfg.task, None)
    assert data.train.columns[0][3] == "Q: what is 3 A:" and data.train.answers[3] == "answer 3"
    assert data.evals["validation"].answers == ["dev a"]

    csv = tmp_path / "alpaca.csv"
    csv.write_text(
        "instruction,input,output\n" + "".join(f"add one,{i},{i + 1}\n" for i in range(30)) + "greet,,hello\n"
    )
    cfg = text_config(
        "task=custom", f"task.source={csv}", "task.text_fields=[instruction,input]",
        "task.response_field=output", "task.prompt='{instruction}: {input} ->'", "task.holdout=0.25",
    )  # fmt: skip
    data = load_task(cfg.task, None)
    assert len(data.train) + len(data.evals["validation"]) == 31 and len(data.evals["validation"]) == 8
    pairs = dict(zip(data.train.columns[0], data.train.answers))
    adds = {p: a for p, a in pairs.items() if p.startswith("add one: ")}
    assert all(int(p.split()[2]) + 1 == int(a) for p, a in adds.items()) and len(adds) >= len(pairs) - 1
    assert pairs.get("greet:  ->", "hello") == "hello"  # an empty input is "" (where it is in train)

    bad = text_config("task=custom", f"task.source={csv}")  # default columns prompt/response
    with pytest.raises(ValueError, match=r"columns \['prompt', 'response'\] not found"):
        _ = load_task(bad.task, None).train


def test_answer_only_loss_masks_prompt_and_padding_and_keeps_eos():
    tok = builtin_tokenizer(text=True)
    task = text_config("task=kv-recall").task
    split = Split([["cat red, dog blue\nkey: dog\nvalue:", "cat red\nkey: cat\nvalue:"]], np.array([-1, -1]))
    split.answers = ["blue", "red"]
    enc = encode_text(tok, split, 64, task)
    batch = collate(enc, np.array([0, 1]), tok.pad_token_id, None)
    labels, ids = batch["labels"].numpy(), batch["input_ids"].numpy()
    for row in range(2):
        n, p = int(enc.lengths[row]), int(enc.prompt_lengths[row])
        assert (labels[row, :p] == IGNORE).all() and (labels[row, n:] == IGNORE).all()
        assert labels[row, p:n].tolist() == ids[row, p:n].tolist()
        assert tok.decode(ids[row, p : n - 1]) == split.answers[row] and ids[row, n - 1] == tok.eos_token_id
        assert ids[row, 0] == tok.bos_token_id  # plain template: the tokenizer's BOS
    assert (ids[1, int(enc.lengths[1]) :] == tok.pad_token_id).all()
    cut = encode_text(tok, split, 8, task)  # too long: the prompt loses its start, the answer stays
    assert (
        cut.lengths.max() <= 8 and tok.decode(cut.ids[cut.offsets[0] + cut.prompt_lengths[0] :][:1]) == "blue"
    )


def test_chat_template_where_the_tokenizer_has_one_else_the_plain_prompt(tmp_path):
    tok = builtin_tokenizer(text=True)
    task = text_config("task=kv-recall").task
    plain = prompt_ids(tok, ["key: cat"], chat=False)[0]
    assert tok.convert_ids_to_tokens(plain) == ["[CLS]", "key", ":", "cat"]
    tok.chat_template = (
        "{% for m in messages %}[CLS] question : {{ m['content'] }} [SEP]{% endfor %}"
        "{% if add_generation_prompt %} answer :{% endif %}"
    )
    chat = prompt_ids(tok, ["key: cat"], chat=True)[0]
    assert tok.convert_ids_to_tokens(chat) == [
        "[CLS]",
        "question",
        ":",
        "key",
        ":",
        "cat",
        "[SEP]",
        "answer",
        ":",
    ]
    split = Split([["key: cat"]], np.array([-1]), ["red"])
    assert encode_text(tok, split, 32, task).ids.tolist()[: len(chat)] == chat  # chat_template=true: used
    task.chat_template = False
    assert encode_text(tok, split, 32, task).ids.tolist()[: len(plain) + 1] == plain + [
        tok.convert_tokens_to_ids("red")
    ]
    # the tokenization cache keeps the chat and plain encodings apart
    cfg = text_config("task=kv-recall")
    cfg.task.kv_recall.train_size, cfg.task.kv_recall.eval_size = 4, 2
    with_chat, _ = encode_task(tok, load_task(cfg.task, None), "kv", 32, tmp_path)
    without, _ = encode_task(builtin_tokenizer(text=True), load_task(cfg.task, None), "kv", 32, tmp_path)
    assert with_chat.ids.tolist() != without.ids.tolist() and len(list(tmp_path.iterdir())) == 4


def test_exact_match_extraction_and_normalisation():
    gsm = text_config("task=gsm8k").task
    assert extract("She pays 3 * 4 = 12 dollars.\n#### 1,234", gsm) == "1234"
    assert extract("#### 72.0 apples", gsm) == "72" and extract("72", gsm) == ""  # no marker: no answer
    sst = text_config("task=sst2", "task.format=text").task
    assert extract("  Positive.\n", sst) == "positive" and extract("very  positive!", sst) == "very positive"
    number = text_config("task=arithmetic").task
    assert extract("the sum is 5 6", number) == "5" and extract("= -12", number) == "-12"
    sst.normalize = "none"
    assert extract(" Positive ", sst) == "Positive"


def test_text_scores_rank_accuracy_and_classification_metrics_of_the_ranked_label():
    task = text_config("task=mrpc", "task.format=text").task  # accuracy, f1
    labels = np.array([0, 1, 1, 0])
    ranks = np.array([[-0.1, -2.0], [-3.0, -0.5], [-0.2, -0.4], [-1.0, -0.9]])  # picks 0, 1, 0, 1
    scores = text_scores(task, ["No.", "yes", "yes", "maybe"], ["no", "yes", "yes", "no"], labels, ranks)
    assert scores["exact_match"] == 0.75 and scores["rank_accuracy"] == 0.5 == scores["accuracy"]
    assert scores["f1"] == pytest.approx(0.5)
    stsb = text_config("task=stsb", "task.format=text").task  # pearson of the number written
    scores = text_scores(stsb, ["1", "2.1", "2.9", "oops"], ["1.0", "2.0", "3.0", "4.0"], labels, None)
    pearson = np.corrcoef([1, 2.1, 2.9, 2.1], [1, 2, 3, 4])[0, 1]  # "oops": the median of those found
    assert scores["exact_match"] == 0.25 and scores["pearson"] == pytest.approx(pearson)
    assert "rank_accuracy" not in scores


@pytest.mark.parametrize(
    "task, changes, message",
    [
        ("kv-recall", {"format": "head"}, "task=kv-recall has no labels, its answers are text"),
        ("sst2", {"label_words": ["bad"]}, "needs the answer text of each of its 2"),
        ("sst2", {"format": "prose"}, "task.format='prose': expected one of head, text"),
        ("kv-recall", {"prompt": "{nope}"}, "{nope} is not among task.text_fields [pairs, key]"),
        ("kv-recall", {"metric": "accuracy"}, "metric 'accuracy' ranks label words, and it has none"),
        ("kv-recall", {"normalize": "fuzzy"}, "task.normalize='fuzzy': expected one of text, number"),
        ("kv-recall", {"max_new_tokens": 0}, "task.max_new_tokens=0: expected an integer >= 1"),
        ("custom", {}, "give task.source=FILE_OR_HUB_ID"),
        ("custom", {"source": "./missing.jsonl"}, "task.source=./missing.jsonl: no such file"),
        ("custom", {"source": "./notes.txt"}, "expected a .json, .jsonl, .csv, .parquet file or a hub"),
        ("sst2", {"format": "head", "metric": "exact_match"}, "metric 'exact_match' needs task.format=text"),
    ],
)
def test_bad_text_settings_fail_in_one_line(task, changes, message):
    overrides = ("task=" + task,) if task in ("kv-recall", "custom") else (f"task={task}", "task.format=text")
    errors = validate(text_config(*overrides, **changes))
    assert any(message in e for e in errors), errors


def test_an_encoder_is_refused_for_text_and_a_pack_is_not():
    cfg = text_config("task=kv-recall")
    cfg.model.arch = {"model_type": "bert"}
    assert any("is an encoder (bert); text tasks need a decoder" in e for e in validate(cfg))
    cfg = text_config("task=kv-recall")
    cfg.pack = [{"lr": 1e-3}, {"lr": 1e-2}]
    assert validate(cfg) == []


def test_presets_validate_and_classifier_keys_ignore_the_text_settings():
    for task in ("sst2", "rte", "mrpc", "mnli", "stsb"):
        assert validate(text_config(f"task={task}", "task.format=text")) == [], task
    for task in ("kv-recall", "arithmetic", "gsm8k", "alpaca"):
        assert validate(text_config(f"task={task}")) == [], task
    head = text_config("task=sst2")
    key = run_key(head, "fp32")
    head.task.prompt, head.task.label_words, head.task.max_new_tokens = None, None, 16
    assert run_key(head, "fp32") == key  # the yaml's text settings do not move a classifier's key
    assert run_key(text_config("task=sst2", "task.format=text"), "fp32") != run_key(
        text_config("task=sst2"), "fp32"
    )
    text = text_config("task=sst2", "task.format=text")
    assert run_key(text_config("task=sst2", "task.format=text", max_new_tokens=2), "fp32") != run_key(
        text, "fp32"
    )
