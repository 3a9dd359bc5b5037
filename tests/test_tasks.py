"""Task data: the GLUE TSV reader on the real files, the synthetic task, and the paper's metrics."""

import numpy as np
import pytest

from qvtune.data.load import load_task
from qvtune.data.tasks import compute_metrics, read_glue_tsv, synthetic_task
from qvtune.data.vocab import WORDS
from tests.helpers import make_config


@pytest.mark.parametrize(
    "task, train_rows, dev_rows, first_label",
    [("rte", 2490, 277, 1), ("mrpc", 3668, 408, 1), ("sst2", 67349, 872, 0)],
)
def test_glue_tsv_reader_on_real_files(glue_dir, task, train_rows, dev_rows, first_label):
    cfg = make_config(f"task={task}", f"data_dir={glue_dir}")
    data = load_task(cfg.task, cfg.data_dir)
    assert len(data.train) == train_rows and len(data.evals["validation"]) == dev_rows
    assert len(data.train.columns) == len(cfg.task.text_fields)
    assert data.train.labels[0] == first_label and set(np.unique(data.train.labels)) == {0, 1}
    assert all(isinstance(t, str) and t for t in data.train.columns[0][:100])


def test_mrpc_byte_order_mark_and_columns(glue_dir):
    cfg = make_config("task=mrpc")
    split = read_glue_tsv(glue_dir / "MRPC" / "train.tsv", cfg.task)
    assert split.columns[0][0].startswith("Amrozi accused his brother")
    assert split.columns[1][0].startswith("Referring to him as only")


def test_headerless_cola_and_regression_stsb(tmp_path):
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_text(
        "gj04\t1\t\tOur friends won't buy this analysis.\nclc95\t0\t*\tHe left of the room.\n"
    )
    cola = read_glue_tsv(tmp_path / "CoLA" / "train.tsv", make_config("task=cola").task)
    assert cola.labels.tolist() == [1, 0] and cola.columns[0][1] == "He left of the room."
    (tmp_path / "stsb.tsv").write_text(
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\t"
        "A plane is taking off.\tAn air plane is taking off.\t5.000\n"
    )
    stsb = read_glue_tsv(tmp_path / "stsb.tsv", make_config("task=stsb").task)
    assert stsb.labels.dtype == np.float32 and stsb.labels[0] == 5.0


def test_string_labels_outside_the_task_fail_clearly(tmp_path):
    (tmp_path / "x.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(
        ValueError, match=r"labels \['maybe'\] are not among \['entailment', 'not_entailment'\]"
    ):
        read_glue_tsv(tmp_path / "x.tsv", make_config("task=rte").task)


def test_synthetic_task_is_deterministic_balanced_and_needs_the_pair():
    spec = make_config("task=synthetic").task.synthetic
    a, b = synthetic_task(spec), synthetic_task(spec)
    assert a.train.columns == b.train.columns and a.fingerprint == b.fingerprint
    labels = a.train.labels
    assert 0.45 < labels.mean() < 0.55
    for words, query, label in zip(*a.train.columns, labels):
        assert (query in words.split()) == bool(label)
        assert set(words.split()) <= set(WORDS)
    other = synthetic_task(make_config("task=synthetic", "task.synthetic.data_seed=7").task.synthetic)
    assert other.train.columns != a.train.columns and other.fingerprint != a.fingerprint
    # the query word alone says nothing about the label: each word appears in both classes
    by_word = {}
    for query, label in zip(a.train.columns[1], labels):
        by_word.setdefault(query, set()).add(int(label))
    assert sum(len(v) == 2 for v in by_word.values()) > 0.9 * len(by_word)


def test_metrics_match_their_definitions():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    labels = np.array([0, 1, 0, 0])
    cola = compute_metrics(make_config("task=cola").task, {"validation": logits}, {"validation": labels})
    assert cola["accuracy"] == 0.75 and cola["matthews"] == pytest.approx(0.5773502691896258)
    mnli_task = make_config("task=mnli").task
    three = np.eye(3)[[0, 1, 2, 0]]
    mnli = compute_metrics(
        mnli_task,
        {"validation_matched": three, "validation_mismatched": three[::-1]},
        {"validation_matched": np.array([0, 1, 2, 0]), "validation_mismatched": np.array([0, 1, 2, 0])},
    )
    assert mnli["validation_matched/accuracy"] == 1.0 and mnli["validation_mismatched/accuracy"] == 0.5
    assert mnli["accuracy"] == 0.75  # the paper's MNLI figure: the mean of matched and mismatched
    stsb = compute_metrics(
        make_config("task=stsb").task,
        {"validation": np.array([[1.0], [2.0], [4.0]])},
        {"validation": np.array([1.0, 2.0, 3.0])},
    )
    assert stsb["pearson"] == pytest.approx(0.9819805060619657) and stsb["spearman"] == pytest.approx(1.0)
