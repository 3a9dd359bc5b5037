"""Packed text runs (task.format=text: a causal LM trained on its answers, tiny-llama on the CPU in fp32):
every member of a pack trains, evaluates, ranks and writes its answers as its lone run does, for packs
that differ in learning rates and in targets; the sweeper packs a text sweep, whose records are those
of its runs alone (slow); a dry run of a text task says that it answers in text."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from qvtune.config.validate import member_configs, validate
from qvtune.data.encode import collate, encode_task
from qvtune.data.load import load_task
from qvtune.data.text import answer_ids, answer_prefix
from qvtune.model.load import load_model, load_tokenizer
from qvtune.model.pack import answer_logprobs
from qvtune.model.runs import attach
from qvtune.sweep.packs import form_packs, pack_overrides
from qvtune.sweep.plan import Job, lookup
from qvtune.train.generate import generate, rank_scores
from qvtune.train.loop import Member, train
from tests.helpers import make_config, run_cli
from tests.test_pack import assert_same_run
from tests.test_pack_runs import assert_same_record, by_key, store

CPU = torch.device("cpu")
TINY = (
    "model=tiny-llama",
    "batch_size=16",
    "epochs=2",
    "eval_every=3",
    "rank=4",
    "lr=5e-2",
    "wandb.mode=disabled",
)
TASKS = {  # kv-recall: exact_match; synthetic as text: label words too (rank_accuracy, accuracy, f1)
    "kv-recall": ("task=kv-recall", "task.kv_recall.train_size=48", "task.kv_recall.eval_size=12"),
    "synthetic": (
        "task=synthetic",
        "task.format=text",
        "task.synthetic.train_size=48",
        "task.synthetic.eval_size=12",
    ),
}
NO_DROPOUT = ("attention_dropout=0", "dropout=0")


@cache
def _composed(*overrides: str):
    return make_config(*overrides)


def config(*overrides: str):
    return copy.deepcopy(_composed(*overrides))


@cache
def _data(task: str):
    """The task's tokenizer and encoded splits (the tokenization cache in a folder of its own)."""
    import tempfile

    cfg = config(*TINY, *TASKS[task])
    tok = load_tokenizer(cfg.model, text=True)
    with tempfile.TemporaryDirectory() as folder:
        return tok, *encode_task(tok, load_task(cfg.task, None), task, cfg.max_len, Path(folder))


def trained(configs, folder: Path, task: str):
    """The runs of `configs` (one: alone, as a PEFT model; several: one pack) trained through the loop:
    the members' TrainStates and parameter tables, and the trained model."""
    tok, train_data, evals = _data(task)
    first = configs[0]
    model, parts = attach(
        load_model(first.model, 2, first.seed, first.attention_dropout, causal=True), configs
    )
    members = [Member(p.groups, p.norms, folder / f"{i}.pt", lambda v, s: None) for i, p in enumerate(parts)]
    outcomes = train(
        model, members, train_data, evals, first.task, first, pad_id=tok.pad_token_id, device=CPU,
        precision="fp32", tokenizer=tok,
    )  # fmt: skip
    return [o.state for o in sorted(outcomes, key=lambda o: o.index)], [p.table for p in parts], model


def answers(model, member: int, task: str):
    """What a trained member writes on the dev split (greedy), and the log-probability it gives each
    example's own answer: continuous, so a member that read another member's adapters would show."""
    tok, _, evals = _data(task)
    data, cfg = evals["validation"], config(*TINY, *TASKS[task])
    model.eval()
    one = model.alone(member)
    gold = collate(data, np.arange(len(data)), tok.pad_token_id, None)
    labels = gold.pop("labels")
    with torch.no_grad():
        scores = answer_logprobs(one.lm, labels, **gold)[0]
    return generate(one, data, tok, cfg.task.max_new_tokens, cfg, CPU), scores


@pytest.mark.parametrize(
    "task, differ, dropout",
    [
        ("kv-recall", ["lam=1", "lam=4", "targets=v lam=2"], NO_DROPOUT),
        ("synthetic", ["lam=1", "targets=qkv lam=8"], NO_DROPOUT),
        # the attention's dropout and LoRA's: a pack that differs in rates draws its lone runs' masks
        ("kv-recall", ["lam=1", "lam=4"], ("attention_dropout=0.1", "dropout=0.1")),
    ],
    ids=["kv-recall", "synthetic-label-words", "kv-recall-dropout"],
)
def test_every_text_member_trains_and_evaluates_as_it_would_alone(tmp_path, task, differ, dropout):
    configs = [config(*TINY, *TASKS[task], *dropout, *d.split()) for d in differ]
    together, tables, pack = trained(configs, tmp_path, task)
    expected = {"exact_match", "loss"} | (
        {"rank_accuracy", "accuracy", "f1"} if task == "synthetic" else set()
    )
    for i, cfg in enumerate(configs):
        [single], [table], lone = trained([cfg], tmp_path / f"alone{i}", task)
        assert tables[i] == table  # the record's parameter counts: no head, the LM head frozen
        assert single.step == 6 and len(single.history) == 2  # long enough to drift if it could
        assert set(single.history[-1]["metrics"]) == expected
        assert_same_run(together[i], single)
        (written, scores), (lone_written, lone_scores) = answers(pack, i, task), answers(lone, 0, task)
        assert written == lone_written and torch.allclose(scores, lone_scores, rtol=1e-5)
    # the members really differ: otherwise equal records would prove nothing
    assert len({round(s.train_loss[-1][1], 6) for s in together}) == len(configs)


def test_each_member_writes_and_ranks_the_answers_of_its_lone_model():
    """Decoding (greedy, KV cache, left-padded batches) and label ranking through a pack's `alone`: a
    member's answers are those of its lone PEFT model carrying the same tensors, and differ between
    members (tensors moved off their initialisation, where B = 0 makes every member the base)."""
    configs = [
        config(*TINY, *TASKS["synthetic"], *NO_DROPOUT, t) for t in ("targets=qv", "targets=v", "targets=qkv")
    ]
    tok, _, evals = _data("synthetic")
    data = evals["validation"]
    pack, _ = attach(load_model(configs[0].model, 2, 0, 0.0, causal=True), configs)
    lone = [attach(load_model(c.model, 2, 0, 0.0, causal=True), [c])[0] for c in configs]
    words = answer_ids(tok, list(configs[0].task.label_words), answer_prefix(configs[0].task, tok))
    written, ranked = [], []
    with torch.no_grad():
        for i, (member, alone) in enumerate(zip(pack.members, lone)):
            mine = dict(alone.model.named_parameters())
            gen = torch.Generator().manual_seed(i)
            for name, p, _ in member.named:
                p.add_(torch.randn(p.shape, generator=gen))
                mine[name].copy_(p)
    pack.eval()
    for i, alone in enumerate(lone):
        alone.eval()
        answers = generate(pack.alone(i), data, tok, 3, configs[i], CPU)
        assert answers == generate(alone, data, tok, 3, configs[i], CPU)
        scores = rank_scores(pack.alone(i), data, words, tok.pad_token_id, configs[i], CPU)
        assert np.allclose(
            scores, rank_scores(alone, data, words, tok.pad_token_id, configs[i], CPU), rtol=1e-5
        )
        written.append(answers)
        ranked.append(scores)
    assert all(any(a) for a in written) and len({tuple(a) for a in written}) == len(configs)
    assert not np.allclose(ranked[0], ranked[1])


def test_the_sweeper_packs_a_text_sweep_and_each_pack_validates(tmp_path):
    """A text grid's jobs form packs (qvtune.sweep.packs, as with hydra.sweeper.pack=2), and a pack's one
    job validates into its members' runs; a run the harness scores stays alone."""
    text = ("model=tiny-llama", "task=kv-recall", f"results_dir={tmp_path}")
    base = make_config(*text)
    jobs = []
    for lr, targets in [("0.01", "q"), ("0.01", "v"), ("0.03", "q"), ("0.03", "v")]:
        cfg = copy.deepcopy(base)
        cfg.lr, cfg.targets = float(lr), targets
        jobs.append(Job([f"lr={lr}", f"targets={targets}"], *lookup(cfg, False), cfg))
    packs = form_packs(jobs, 2)
    assert [[j.overrides for j in p] for p in packs] == [
        [["lr=0.01", "targets=q"], ["lr=0.03", "targets=q"]],
        [["lr=0.01", "targets=v"], ["lr=0.03", "targets=v"]],
    ]
    cfg = make_config(*text, *pack_overrides(packs[0]))
    assert validate(cfg) == []
    assert [(m.lr, m.targets) for m in member_configs(cfg)] == [(0.01, "q"), (0.03, "q")]
    harness = copy.deepcopy(base)
    harness.harness.tasks = ["arc_easy"]
    alone = [Job([], key, jobs[0].run, harness) for key in ("a", "b")]
    assert [len(p) for p in form_packs(alone, 2)] == [1, 1]
    harness.pack = [{"lr": 1e-2}, {"lr": 3e-2}]
    assert any(e.startswith("pack: harness.tasks:") for e in validate(harness))


def test_a_dry_run_of_a_text_task_says_it_answers_in_text(capsys):
    from qvtune.run import dry_run

    dry_run(make_config("model=tiny-llama", "task=kv-recall"))
    text = capsys.readouterr().out.splitlines()[0]
    assert text.startswith("tiny-llama lora QV") and text.endswith(", text answers") and "labels" not in text
    dry_run(make_config("model=tiny-llama", "task=synthetic"))
    assert capsys.readouterr().out.splitlines()[0].endswith(", 2 labels")  # a classifier's head


@pytest.mark.slow  # three sweeps through the entry point; the packs themselves are checked above
def test_a_packed_text_sweep_writes_the_records_of_its_runs_alone(tmp_path: Path) -> None:
    grid = [*TINY, *TASKS["kv-recall"], "threads=1", "lam=1,4", "targets=qv,v"]
    plan = run_cli("-m", *grid, *store(tmp_path, "packed"), "hydra.sweeper.pack=4", "plan=true", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "4 runs to launch as 1 jobs: 1 packs, 0 alone" in plan.stdout
    packed = run_cli("-m", *grid, *store(tmp_path, "packed"), "hydra.sweeper.pack=4", cwd=tmp_path)
    assert packed.returncode == 0, packed.stderr[-3000:]
    assert "training 4 runs as one pack" in packed.stderr + packed.stdout
    alone = run_cli("-m", *grid, *store(tmp_path, "alone"), cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    got, want = by_key(tmp_path / "packed"), by_key(tmp_path / "alone")
    assert sorted(got) == sorted(want) and len(got) == 4  # keyed as if alone
    for key, record in got.items():
        assert len(record["packed_with"]) == 3 and want[key]["packed_with"] is None
        assert record["metric"] == "exact_match" and {"exact_match", "loss"} <= set(record["final"])
        assert_same_record(record, want[key])
        assert [h["step"] for h in record["history"]] == [h["step"] for h in want[key]["history"]]
        for h, w in zip(record["history"], want[key]["history"]):
            assert h["metrics"] == pytest.approx(w["metrics"], rel=1e-5), f"dev metrics at step {h['step']}"
    assert len({r["final"]["loss"] for r in got.values()}) == 4
