"""Config checks: targets, learning rates, run keys, and one clear line per bad input before loading."""

import time

import pytest

from qvtune.config.rates import learning_rates
from qvtune.config.schema import parse_targets
from qvtune.config.validate import validate
from tests.helpers import make_config, run_cli


@pytest.mark.parametrize(
    "given, canonical",
    [
        ("qv", "qv"),
        ("vq", "qv"),
        ("QV", "qv"),
        (["q", "v"], "qv"),
        (["v", "k", "q"], "qkv"),
        ("k", "k"),
        ("q_v", "qv"),
        (["q", "v", "o"], "qvo"),
        ("ovq", "qvo"),
        (["q", "k", "v", "o", "mlp"], "qkvo+mlp"),
        ("all", "qkvo+mlp"),
        ("qkvo+mlp", "qkvo+mlp"),
        (["down", "v", "up"], "v+up+down"),
        ("mlp", "mlp"),
    ],
)
def test_targets_are_canonical(given, canonical):
    assert parse_targets(given) == canonical


@pytest.mark.parametrize("bad", ["", "qx", "qq", [], ["q", "x"], 3, "mlp+up", "all,q", "qo,o"])
def test_bad_targets_name_the_value(bad):
    with pytest.raises(ValueError, match="subset of q, k, v"):
        parse_targets(bad)


def test_lam_and_lr_v():
    rates = learning_rates(make_config("lr=1e-4", "lam=8"))
    assert (rates.qk, rates.v, rates.head, rates.lam) == (1e-4, pytest.approx(8e-4), 1e-4, 8)
    rates = learning_rates(make_config("lr=1e-4", "lr_v=4e-4", "head_lr=1e-3"))
    assert rates.lam == pytest.approx(4) and rates.head == 1e-3
    assert learning_rates(make_config("lr=1e-4", "lr_v=4e-4", "lam=4")).v == pytest.approx(4e-4)
    errors = validate(make_config("lr=1e-4", "lr_v=4e-4", "lam=2"))
    assert errors == ["lam=2.0 and lr_v=0.0004 disagree: lr_v / lr = 4; give one of them"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("targets=qx", "targets='qx': expected a non-empty subset of q, k, v"),
        ("rank=0", "rank=0: expected an integer >= 1"),
        ("lr=-1", "lr=-1.0: expected a finite positive learning rate (eta_QK)"),
        ("lam=0", "lam=0.0: expected a finite positive ratio eta_V / eta_QK"),
        ("lr_v=-2e-4", "lr_v=-0.0002: expected a finite positive learning rate (eta_V)"),
        ("lam=inf", "lam=inf: expected a finite positive ratio eta_V / eta_QK"),
        ("lr=inf", "lr=inf: expected a finite positive learning rate (eta_QK)"),
        ("lr_v=inf", "lr_v=inf: expected a finite positive learning rate (eta_V)"),
        ("lam=nan", "lam=nan: expected a finite positive ratio eta_V / eta_QK"),
        ("head_lr=-inf", "head_lr=-inf: expected a finite positive learning rate"),
        ("epochs=inf", "epochs=inf: expected a finite number >= 0"),
        (
            "optim.max_grad_norm=0",
            "optim.max_grad_norm=0.0: expected a finite positive norm, or null to never clip",
        ),
        ("optim.grouping=substring", "optim.grouping='substring': expected one of by_module, paper"),
        ("padding=none", "padding='none': expected one of dynamic, max"),
        (
            "attention_dropout=1.5",
            "attention_dropout=1.5: expected a number in [0, 1), or null for the model's own",
        ),
        (
            "max_batch_tokens=0",
            "max_batch_tokens=0: expected an integer >= 1, or null to never split a batch",
        ),
    ],
)
def test_validate_names_bad_value(override, message):
    errors = validate(make_config(override))
    assert len(errors) == 1 and errors[0].startswith(message)


def test_data_dir_without_the_task_files(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n")
    errors = validate(make_config("task=rte", f"data_dir={tmp_path}"))
    assert len(errors) == 1 and "RTE/dev.tsv" in errors[0] and "dev.tsv is missing" in errors[0]


def test_cli_reports_every_problem_fast_without_loading(tmp_path):
    tic = time.perf_counter()
    proc = run_cli("targets=qz", "rank=0", "lam=-1", f"results_dir={tmp_path}", cwd=tmp_path, timeout=60)
    elapsed = time.perf_counter() - tic
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2
    assert lines == [
        "error: targets='qz': expected a non-empty subset of q, k, v, o, gate, up, down without repeats "
        "(mlp: every MLP matrix, all: every type), such as qv, qkv, [q,v,o] or all",
        "error: rank=0: expected an integer >= 1",
        "error: lam=-1.0: expected a finite positive ratio eta_V / eta_QK",
    ]
    assert not any(tmp_path.iterdir()) or not list(tmp_path.rglob("result.json"))
    assert elapsed < 30  # generous for a loaded machine; validation itself imports no torch


@pytest.mark.parametrize(
    "override, shown",
    [("task=mnl", "task/mnl"), ("model=robert", "model/robert"), ("method=lorax", "method/lorax")],
)
def test_unknown_group_options_list_the_choices(tmp_path, override, shown):
    proc = run_cli(override, cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    assert f"Could not find '{shown}'" in proc.stderr and "Available options" in proc.stderr


def test_validation_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys; from qvtune.config.validate import validate; from tests.helpers import make_config; "
        "validate(make_config('task=rte')); assert 'torch' not in sys.modules, 'torch imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).parents[1]),
    )
    assert proc.returncode == 0, proc.stderr
