"""Text tasks (task.format=text): a causal LM reads a prompt and writes the answer. Here: the tasks as
prompts and answers (GLUE and synthetic with label words; kv-recall and arithmetic generated; files or
hub sets with a response column, read through `datasets`), their tokens (the loss falls on the answer
and its EOS only), and how generated answers are compared and scored."""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from qvtune.config.schema import DATA_FILES, is_data_file, plain
from qvtune.data.tasks import Split, TaskData, _metric, load_labelled
from qvtune.data.vocab import WORDS

if TYPE_CHECKING:
    from qvtune.config.schema import ArithmeticSpec, KvRecallSpec, TaskConfig

IGNORE = -100  # the label of a token the loss skips (prompt, padding)


def load_text_task(task: TaskConfig, data_dir: Optional[str]) -> TaskData:
    """The task's prompts (task.prompt over its text_fields) and answers: a generated task's own, a
    response column's, or a labelled task's label words (STS-B's score as a number)."""
    if task.kv_recall is not None:
        data = kv_recall_task(task.kv_recall)
    elif task.arithmetic is not None:
        data = arithmetic_task(task.arithmetic)
    elif task.response_field is not None:
        data = records_task(task)
    else:
        data = load_labelled(task, data_dir)
    settings = [task.prompt, plain(task.text_fields), plain(task.label_words), task.response_field]
    fingerprint = hashlib.sha256((data.fingerprint + json.dumps(settings)).encode()).hexdigest()

    def read() -> tuple[Split, dict[str, Split]]:
        return as_text(data.train, task), {name: as_text(s, task) for name, s in data.evals.items()}

    return TaskData(fingerprint, data.eval_names, read, text=task)


def as_text(split: Split, task: TaskConfig) -> Split:
    """One column of prompts, the answers, and the label ids (-1 where the task has no labels)."""
    assert task.prompt is not None, "validate(): a text task has a prompt"
    rows = zip(*split.columns) if split.columns else iter([()] * len(split))
    prompts = [task.prompt.format_map(dict(zip(task.text_fields, row))) for row in rows]
    if split.answers is not None:
        return Split([prompts], np.full(len(split), -1, dtype=np.int64), split.answers)
    if task.num_labels == 1:  # a score (STS-B), written as a number
        return Split([prompts], np.full(len(split), -1, dtype=np.int64), [f"{x:.1f}" for x in split.labels])
    assert task.label_words, "validate(): a labelled text task has label words"
    words = task.label_words
    return Split([prompts], split.labels.astype(np.int64), [words[int(y)] for y in split.labels])


def _generated(name: str, spec: Any, knob: str, make: Callable[[Any, int], Split]) -> TaskData:
    """A generated task's TaskData: train and dev from one seeded generator, fingerprinted by its spec."""
    rng = np.random.default_rng(spec.data_seed)
    train, dev = make(rng, spec.train_size), make(rng, spec.eval_size)
    knobs = {k: getattr(spec, k) for k in (knob, "train_size", "eval_size", "data_seed")}
    key = json.dumps({"task": name, **knobs}, sort_keys=True)
    return TaskData(
        hashlib.sha256((key + "|".join(WORDS)).encode()).hexdigest(),
        ["validation"],
        lambda: (train, {"validation": dev}),
    )


def kv_recall_task(spec: KvRecallSpec) -> TaskData:
    """`pairs` key-value word pairs ("cat red, dog blue, ...") and a key: the answer is its value.

    The answer depends only on which pair's key matches the query, so it takes attention from the
    query (W_q) to the matching key (W_k) that reads out the value next to it (W_v).
    """
    vocab = np.array(WORDS)

    def make(rng: np.random.Generator, n: int) -> Split:
        pairs, keys, values = [], [], []
        for _ in range(n):
            words = vocab[rng.choice(len(vocab), size=2 * spec.pairs, replace=False)]
            ks, vs = words[: spec.pairs], words[spec.pairs :]
            pairs.append(", ".join(f"{k} {v}" for k, v in zip(ks, vs)))
            i = int(rng.integers(spec.pairs))
            keys.append(str(ks[i]))
            values.append(str(vs[i]))
        return Split([pairs, keys], np.full(n, -1, dtype=np.int64), values)

    return _generated("kv-recall", spec, "pairs", make)


def arithmetic_task(spec: ArithmeticSpec) -> TaskData:
    """a + b with operands of up to `digits` digits: the answer is the sum (no retrieval involved)."""

    def make(rng: np.random.Generator, n: int) -> Split:
        a, b = rng.integers(10**spec.digits, size=(2, n))
        answers = [str(x) for x in a + b]
        return Split([[str(x) for x in a], [str(x) for x in b]], np.full(n, -1, np.int64), answers)

    return _generated("arithmetic", spec, "digits", make)


def records_task(task: TaskConfig) -> TaskData:
    """Prompt fields and a response column from a local JSON/JSONL/CSV/Parquet file (task.source, its
    dev file task.eval_source) or a hub data set (task.source, or the preset's hub_path/hub_name), read
    through `datasets`. Without a dev split, a `holdout` fraction of the train rows (fixed seed)."""
    import datasets

    columns = [*task.text_fields, str(task.response_field)]
    source = task.source or task.hub_path
    assert source, "validate(): a response task names its data (task.source or hub_path)"
    if is_data_file(source):
        files = {"train": str(Path(source).expanduser())}
        if task.eval_source:
            files["validation"] = str(Path(task.eval_source).expanduser())
        digest = hashlib.sha256()
        for path in files.values():
            digest.update(Path(path).read_bytes())
        fingerprint = digest.hexdigest()
        builder = DATA_FILES[Path(source).suffix.lower()]
        train_name = "train"
        eval_names = ["validation"]

        # a CSV's columns are text as written (no numbers, no NaN for an empty field)
        options: dict[str, Any] = {}
        if builder == "csv":
            options = {"converters": {c: str for c in columns}, "keep_default_na": False}

        def load() -> Any:
            return datasets.load_dataset(builder, data_files=files, **options)
    else:
        try:
            ds = datasets.load_dataset(source, task.hub_name)
        except Exception as e:  # ConnectionError, DatasetNotFoundError, ...: all mean "not reachable"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RuntimeError(
                f"cannot load {source} from the hub ({type(e).__name__}: {first}); without network, give "
                "task.source=FILE (a local JSON/JSONL/CSV/Parquet file)"
            ) from None
        train_name = task.train_split
        eval_names = list(task.eval_splits) if all(s in ds for s in task.eval_splits) else ["validation"]
        fingerprint = hashlib.sha256(json.dumps([ds[s]._fingerprint for s in ds]).encode()).hexdigest()

        def load() -> Any:
            return ds

    fingerprint = hashlib.sha256(f"{fingerprint}|{task.holdout}".encode()).hexdigest()

    def split(part: Any) -> Split:
        missing = [c for c in columns if c not in part.column_names]
        if missing:
            raise ValueError(
                f"{source}: columns {missing} not found; it has {part.column_names} (map them with "
                "task.text_fields=[...] and task.response_field=...)"
            )
        text = [["" if x is None else str(x) for x in part[c]] for c in columns]
        return Split(text[:-1], np.full(len(part), -1, dtype=np.int64), text[-1])

    def read() -> tuple[Split, dict[str, Split]]:
        ds = load()
        train = ds[train_name]
        if all(name in ds for name in eval_names):
            return split(train), {name: split(ds[name]) for name in eval_names}
        parts = train.train_test_split(test_size=task.holdout, seed=0)
        return split(parts["train"]), {eval_names[0]: split(parts["test"])}

    return TaskData(fingerprint, eval_names, read)


def uses_chat(task: TaskConfig, tokenizer: Any) -> bool:
    """Whether prompts go through the tokenizer's chat template: asked for, and the tokenizer has one."""
    return bool(task.chat_template and getattr(tokenizer, "chat_template", None))


def answer_prefix(task: TaskConfig, tokenizer: Any) -> str:
    """What joins a plain prompt and its answer: a space, unless the prompt ends in whitespace (a chat
    template's turn ends the prompt: no space there)."""
    return "" if uses_chat(task, tokenizer) or (task.prompt or "")[-1:].isspace() else " "


def answer_ids(tokenizer: Any, answers: list[str], prefix: str) -> list[list[int]]:
    """Each answer's tokens followed by EOS: what the model learns to write, and what ranking scores."""
    out = tokenizer([prefix + a for a in answers], add_special_tokens=False)["input_ids"]
    return [list(ids) + [tokenizer.eos_token_id] for ids in out]


def prompt_texts(tokenizer: Any, prompts: list[str], chat: bool) -> list[str]:
    """Each prompt as the model reads it: in the chat template as the user's turn, ready for the
    assistant's answer, or as it is."""
    if not chat:
        return list(prompts)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def prompt_ids(tokenizer: Any, prompts: list[str], chat: bool) -> list[list[int]]:
    """Each prompt's tokens: in the chat template (which adds its own special tokens), or plain with
    the tokenizer's own (a BOS)."""
    texts = prompt_texts(tokenizer, prompts, chat)
    return [list(x) for x in tokenizer(texts, add_special_tokens=not chat)["input_ids"]]


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract(text: str, task: TaskConfig) -> str:
    """The part of an answer exact_match compares: after the last `answer_marker` (nothing where the
    marker is missing), normalised by task.normalize (see NORMALIZERS in qvtune.config.schema)."""
    marker = task.answer_marker
    if marker:
        if marker not in text:
            return ""
        text = text.rsplit(marker, 1)[1]
    if task.normalize == "number":
        found = NUMBER.search(text)
        if not found:
            return ""
        number = found.group().replace(",", "")
        return re.sub(r"\.0+$", "", number) if "." in number else number
    if task.normalize == "text":
        return " ".join(text.lower().split()).strip(string.punctuation + " ")
    return text.strip()


def parse_number(text: str) -> float:
    """The first number in a generated answer (a regression's prediction), NaN where there is none."""
    found = NUMBER.search(text)
    return float(found.group().replace(",", "")) if found else float("nan")


def text_scores(
    task: TaskConfig,
    generated: list[str],
    references: list[str],
    labels: np.ndarray,
    ranks: Optional[np.ndarray],
) -> dict[str, float]:
    """One eval split's metrics: exact_match of the generated answers; with label words rank_accuracy
    and the task's classification metrics of the label that ranks first (`ranks`: [n, labels] summed
    answer log-probs); pearson/spearman of the number generated (a missing one counts as the median
    of those found)."""
    matches = [extract(g, task) == extract(r, task) for g, r in zip(generated, references)]
    out = {"exact_match": float(np.mean(matches))}
    if ranks is not None:
        out["rank_accuracy"] = _metric("accuracy", ranks, labels)
    for name in [task.metric, *task.extra_metrics]:
        if name in out or name == "rank_accuracy":
            continue
        if name in ("pearson", "spearman"):
            preds = np.array([parse_number(g) for g in generated])
            found = preds[np.isfinite(preds)]
            preds[~np.isfinite(preds)] = np.median(found) if len(found) else 0.0
            targets = np.array([parse_number(r) for r in references])
            out[name] = _metric(name, preds[:, None], targets)
        elif ranks is not None:
            out[name] = _metric(name, ranks, labels)
    return out


def combine_splits(task: TaskConfig, per_split: dict[str, dict[str, float]]) -> dict[str, float]:
    """One split's metrics as they are; several (MNLI) each under its name, the plain names their mean."""
    if len(per_split) == 1:
        return next(iter(per_split.values()))
    out = {f"{s}/{m}": v for s, values in per_split.items() for m, v in values.items()}
    names = next(iter(per_split.values())).keys()
    out.update({m: float(np.mean([values[m] for values in per_split.values()])) for m in names})
    return out
