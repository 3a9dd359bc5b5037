"""Tasks: the GLUE tasks (from the hub, or a folder in the original GLUE TSV layout), qvtune's own
synthetic task, and the paper's metrics computed with scikit-learn and scipy. Text tasks (format=text:
prompts and answers for a causal LM) are built from these and others in qvtune.data.text."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from qvtune.data.vocab import WORDS

if TYPE_CHECKING:
    from qvtune.config.schema import SyntheticSpec, TaskConfig


@dataclass
class Split:
    """Texts as columns (one list per text field) and labels (ints, or floats for regression). A text
    task's split also holds each example's answer text (its labels: the label ids, -1 where none)."""

    columns: list[list[str]]
    labels: np.ndarray
    answers: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: Optional[int]) -> Split:
        if n is None or n >= len(self):
            return self
        answers = None if self.answers is None else self.answers[:n]
        return Split([c[:n] for c in self.columns], self.labels[:n], answers)


@dataclass
class TaskData:
    """A task's data, read on first use: with a warm tokenization cache only the fingerprint is needed."""

    fingerprint: str  # changes when the data changes: part of the tokenization cache key
    eval_names: list[str]  # MNLI has two
    read: Callable[[], tuple[Split, dict[str, Split]]]
    text: Optional[TaskConfig] = None  # a text task's settings: how its prompts and answers are encoded

    @cached_property
    def _splits(self) -> tuple[Split, dict[str, Split]]:
        return self.read()

    @property
    def train(self) -> Split:
        return self._splits[0]

    @property
    def evals(self) -> dict[str, Split]:
        return self._splits[1]


def load_labelled(task: TaskConfig, data_dir: Optional[str]) -> TaskData:
    """A classification task's texts and labels: from its generator, a GLUE TSV folder, or the hub."""
    if task.synthetic is not None:
        return synthetic_task(task.synthetic)
    if data_dir is not None:
        return _load_tsv_task(task, Path(data_dir).expanduser())
    return _load_hub_task(task)


def _load_tsv_task(task: TaskConfig, data_dir: Path) -> TaskData:
    layout = task.tsv
    assert layout is not None, "validate(): data_dir= needs the task's TSV layout"
    folder = data_dir / layout.folder
    files = [layout.train_file, *layout.eval_files]
    digest = hashlib.sha256()
    for name in files:
        digest.update((folder / name).read_bytes())

    def read() -> tuple[Split, dict[str, Split]]:
        splits = [read_glue_tsv(folder / name, task) for name in files]
        return splits[0], dict(zip(task.eval_splits, splits[1:]))

    return TaskData(digest.hexdigest(), list(task.eval_splits), read)


def read_glue_tsv(path: Path, task: TaskConfig) -> Split:
    """One GLUE file: tab-separated, no quoting, an optional byte-order mark (MRPC), CoLA without a header."""
    import pandas as pd

    layout = task.tsv
    assert layout is not None, f"task {task.name} has no TSV layout"
    frame = pd.read_csv(
        path,
        sep="\t",
        quoting=csv.QUOTE_NONE,
        encoding="utf-8-sig",
        header=0 if layout.header else None,
        names=list(layout.columns) if layout.columns else None,
        dtype=str,
        keep_default_na=False,
        on_bad_lines="skip",  # a handful of malformed QQP lines, as in the hub's own loader
    )
    missing = [c for c in [*layout.text_columns, layout.label_column] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: columns {missing} not found; the file has {list(frame.columns)}")
    raw = frame[layout.label_column].str.strip()
    if task.num_labels == 1:
        labels = raw.astype(np.float32).to_numpy()
    elif task.label_names:
        index = {name: i for i, name in enumerate(task.label_names)}
        unknown = sorted(set(raw) - set(index))
        if unknown:
            raise ValueError(f"{path}: labels {unknown[:5]} are not among {list(task.label_names)}")
        labels = raw.map(index).to_numpy(dtype=np.int64)
    else:
        labels = raw.astype(np.int64).to_numpy()
    return Split([frame[c].tolist() for c in layout.text_columns], labels)


def _load_hub_task(task: TaskConfig) -> TaskData:
    import datasets

    try:
        ds = datasets.load_dataset(task.hub_path, task.hub_name)
    except Exception as e:  # ConnectionError, DatasetNotFoundError, ...: all mean "not reachable"
        raise RuntimeError(
            f"cannot load {task.hub_path}/{task.hub_name} from the hub ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); without network, give "
            "data_dir=FOLDER holding the GLUE TSV files"
        ) from None

    def split(name: str) -> Split:
        part = ds[name]
        dtype = np.float32 if task.num_labels == 1 else np.int64
        return Split([list(part[c]) for c in task.text_fields], np.asarray(part["label"], dtype=dtype))

    fingerprint = hashlib.sha256(
        json.dumps([ds[s]._fingerprint for s in [task.train_split, *task.eval_splits]]).encode()
    ).hexdigest()
    return TaskData(
        fingerprint,
        list(task.eval_splits),
        lambda: (split(task.train_split), {s: split(s) for s in task.eval_splits}),
    )


def synthetic_task(spec: SyntheticSpec) -> TaskData:
    """Is the query word one of the words in the list? Balanced, deterministic from `data_seed`.

    A bag-of-words model cannot answer it: the label depends on whether a token of the second
    segment matches one of the first, which takes attention across the two segments.
    """
    rng = np.random.default_rng(spec.data_seed)
    vocab = np.array(WORDS)

    def make(n: int) -> Split:
        lists, queries, labels = [], [], np.zeros(n, dtype=np.int64)
        for i in range(n):
            words = rng.choice(len(vocab), size=spec.list_len + 1, replace=False)
            label = int(rng.integers(2))
            query = words[rng.integers(spec.list_len)] if label else words[-1]
            lists.append(" ".join(vocab[words[: spec.list_len]]))
            queries.append(str(vocab[query]))
            labels[i] = label
        return Split([lists, queries], labels)

    train, dev = make(spec.train_size), make(spec.eval_size)
    key = json.dumps(
        {k: getattr(spec, k) for k in ("train_size", "eval_size", "list_len", "data_seed")}, sort_keys=True
    )
    return TaskData(
        hashlib.sha256((key + "|".join(WORDS)).encode()).hexdigest(),
        ["validation"],
        lambda: (train, {"validation": dev}),
    )


def compute_metrics(
    task: TaskConfig, predictions: dict[str, np.ndarray], labels: dict[str, np.ndarray]
) -> dict[str, float]:
    """The task's metrics per eval split; with several splits (MNLI) the plain names hold their mean."""
    names = [task.metric, *task.extra_metrics]
    per_split = {s: {m: _metric(m, predictions[s], labels[s]) for m in names} for s in predictions}
    if len(per_split) == 1:
        return next(iter(per_split.values()))
    out = {f"{s}/{m}": v for s, values in per_split.items() for m, v in values.items()}
    out.update({m: float(np.mean([values[m] for values in per_split.values()])) for m in names})
    return out


def _metric(name: str, outputs: np.ndarray, labels: np.ndarray) -> float:
    """One of the paper's metrics of logits (or scores) [n, labels], or predictions [n, 1] (regression)."""
    from sklearn import metrics

    if name in ("pearson", "spearman"):
        from scipy import stats

        preds = outputs.reshape(-1)
        if np.std(preds) == 0 or not np.all(np.isfinite(preds)):
            return 0.0  # a constant or broken prediction has no correlation
        fn = stats.pearsonr if name == "pearson" else stats.spearmanr
        return float(fn(preds, labels)[0])
    preds = outputs.argmax(-1)
    if name == "accuracy":
        return float(metrics.accuracy_score(labels, preds))
    if name == "f1":
        return float(metrics.f1_score(labels, preds, average="binary" if outputs.shape[-1] == 2 else "macro"))
    if name == "matthews":
        return float(metrics.matthews_corrcoef(labels, preds))
    raise ValueError(f"unknown metric {name!r}")
