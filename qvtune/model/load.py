"""Build or load a sequence classifier, or for text tasks a causal LM, and its tokenizer from a model
config."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from filelock import FileLock
from torch import nn

from qvtune.config.schema import RunConfig
from qvtune.model.weights import ModelError

if TYPE_CHECKING:
    from qvtune.config.schema import ModelConfig


# Each family's config key for dropout on the attention probabilities (BERT/RoBERTa; Llama, Mistral,
# Qwen, DistilBERT; GPT-2).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def resolve_source(source: str, gguf_file: Optional[str] = None) -> str:
    """A hub id or folder; "package:NAME" becomes the folder inside that pip package holding config.json,
    or with `gguf_file` the package's own folder (a GGUF file holds config, weights and tokenizer)."""
    if not source.startswith("package:"):
        return str(Path(source).expanduser()) if source.startswith((".", "/", "~")) else source
    package = source.split(":", 1)[1]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.source={source!r}: package {package!r} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    if gguf_file:
        return str(root)
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    for path in configs:
        if (path.parent / "tokenizer.json").exists() or (path.parent / "vocab.txt").exists():
            return str(path.parent)
    ggufs = sorted(str(p.relative_to(root)) for p in root.rglob("*.gguf"))
    hint = f"; it holds a GGUF file: set model.gguf_file={ggufs[0]}" if ggufs else ""
    raise ModelError(
        f"model.source={source!r}: no model folder (config.json + tokenizer) inside {root}{hint}"
    )


def gguf_path(source: str, gguf_file: str) -> Path:
    """The GGUF file on disk: inside a local folder or package, or downloaded from a hub repo."""
    folder = resolve_source(source, gguf_file)
    if source.startswith(("package:", ".", "/", "~")):
        path = Path(folder) / gguf_file
        if not path.is_file():
            raise ModelError(f"model.gguf_file={gguf_file!r}: no such file {path}")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(folder, gguf_file))
    except OSError as e:
        raise unreachable(source, e) from None


def file_digest(path: Path) -> str:
    """The file's sha256: the cache name of what was dequantised from it, whatever its path."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dequantised(source: str, gguf_file: str, cache_dir: Optional[str] = None) -> Path:
    """The folder in `cache_dir` (config.json, model.safetensors, tokenizer files) that the GGUF file was
    dequantised into, written on first use: dequantising takes about a minute, loading the folder
    seconds. Jobs of a sweep may race here: one writes while the others wait on a lock, and the folder
    appears whole, by a rename, or not at all."""
    path = gguf_path(source, gguf_file)
    models = Path(cache_dir or RunConfig.cache_dir).expanduser() / "models"
    folder = models / file_digest(path)[:16]
    if folder.is_dir():
        return folder
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(models / f"{folder.name}.lock"):
        if not folder.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=models))
            try:
                write_dequantised(path, tmp)
                for file in tmp.iterdir():  # on disk before the rename: a crash leaves no half folder
                    fd = os.open(file, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
                os.rename(tmp, folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return folder


def write_dequantised(path: Path, out: Path) -> None:
    """Save the GGUF file's model as an fp32 causal LM checkpoint with its tokenizer into `out`.

    transformers refuses to save a model it loaded from GGUF (it counts as quantised), so the weights
    move into a model built from the same config without the quantisation marker.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"model.gguf_file={path.name!r}: reading GGUF files needs `pip install gguf`")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_folder(model_cfg: ModelConfig, cache_dir: Optional[str] = None) -> str:
    """Where transformers reads the model's config, weights and tokenizer: its source, or for a GGUF
    model the folder in `cache_dir` its weights were dequantised into."""
    assert model_cfg.source is not None, "a model with weights has a source"
    if model_cfg.gguf_file:
        return str(dequantised(model_cfg.source, model_cfg.gguf_file, cache_dir))
    return resolve_source(model_cfg.source)


def unreachable(source: str, error: OSError) -> ModelError:
    """One line that names the model and the likely cause, instead of a page of hub traceback."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelError(
        f"cannot load model {source!r}: {first} (no network or no access to the hub? log in with "
        "`huggingface-cli login` for gated models, or use a local folder or model=minilm)"
    )


def model_config(
    model_cfg: ModelConfig, num_labels: int, folder: Optional[str] = None, causal: bool = False
) -> Any:
    """The transformers config: that in `folder` when given (the weights about to load), else from `arch`
    (no download), else from the source. A random-init causal LM with the builtin tokenizer gets the
    embeddings of its text vocabulary (TEXT_VOCAB, larger than the classifiers' WORDS)."""
    from transformers import AutoConfig

    if folder is None and model_cfg.arch:
        arch = dict(model_cfg.arch)
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    else:
        source = model_cfg.source
        assert source is not None, "validate(): a model without arch.model_type has a source"
        gguf = {"gguf_file": model_cfg.gguf_file} if model_cfg.gguf_file and folder is None else {}
        try:
            config = AutoConfig.from_pretrained(folder or resolve_source(source, model_cfg.gguf_file), **gguf)
        except OSError as e:
            raise unreachable(source, e) from None
    config.num_labels = num_labels
    if causal and model_cfg.tokenizer == "builtin" and folder is None:
        from qvtune.data.vocab import TEXT_VOCAB

        config.vocab_size = max(config.vocab_size, len(TEXT_VOCAB))
    if config.pad_token_id is None:
        config.pad_token_id = 0 if model_cfg.tokenizer == "builtin" else getattr(config, "eos_token_id", None)
        if isinstance(config.pad_token_id, list):
            config.pad_token_id = config.pad_token_id[0]
    return config


def auto_class(causal: bool) -> Any:
    """transformers' class for a classifier, or (text tasks) a causal LM: its own head, no new one."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if causal else AutoModelForSequenceClassification


def build_on_meta(model_cfg: ModelConfig, num_labels: int, causal: bool = False) -> nn.Module:
    """The model's structure without weights: for checks and parameter counts, no download, no memory."""
    config = model_config(model_cfg, num_labels, causal=causal)
    with torch.device("meta"):
        return auto_class(causal).from_config(config)


def set_attention_dropout(config: Any, p: Optional[float]) -> None:
    """Set the family's attention-probability dropout to `p` (None keeps the model's own)."""
    keys = [k for k in ATTENTION_DROPOUT_KEYS if hasattr(config, k)]
    if p is None or (not keys and p == 0):
        return
    if not keys:
        raise ModelError(
            f"attention_dropout={p}: {type(config).__name__} has none of the keys "
            f"{', '.join(ATTENTION_DROPOUT_KEYS)}; use attention_dropout=null"
        )
    for key in keys:
        setattr(config, key, p)


def load_model(
    model_cfg: ModelConfig,
    num_labels: int,
    seed: int,
    attention_dropout: Optional[float] = None,
    cache_dir: Optional[str] = None,
    causal: bool = False,
) -> nn.Module:
    """Pretrained weights from the source (the head freshly initialised from `seed`), or random weights.
    A GGUF model is read from `cache_dir` (RunConfig's default when None), dequantised there first.
    `causal`: the model as a causal LM (text tasks), with its own LM head and no classification head."""
    torch.manual_seed(seed)
    dtype = getattr(torch, model_cfg.dtype)
    if model_cfg.source is None:
        config = model_config(model_cfg, num_labels, causal=causal)
        set_attention_dropout(config, attention_dropout)
        model = auto_class(causal).from_config(config)
        model.to(dtype)
    else:
        folder = model_folder(model_cfg, cache_dir)
        try:
            config = model_config(model_cfg, num_labels, folder)
            set_attention_dropout(config, attention_dropout)
            model = auto_class(causal).from_pretrained(folder, config=config, dtype=dtype)
        except OSError as e:
            raise unreachable(model_cfg.source, e) from None
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_tokenizer(model_cfg: ModelConfig, cache_dir: Optional[str] = None, text: bool = False) -> Any:
    """The model's tokenizer; a pad token is added where the family has none (Llama, Mistral). That of a
    GGUF model is read from `cache_dir`, like its weights. `text`: for a text task (the builtin one's
    text vocabulary)."""
    from transformers import AutoTokenizer

    if model_cfg.tokenizer == "builtin":
        from qvtune.data.vocab import builtin_tokenizer

        return builtin_tokenizer(text)
    named = model_cfg.tokenizer
    source = resolve_source(named) if named else model_folder(model_cfg, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise unreachable(source, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
