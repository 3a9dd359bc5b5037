"""Build or load a sequence classifier and its tokenizer from a model config."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import nn

from qvtune.model.weights import ModelError

if TYPE_CHECKING:
    from qvtune.config.schema import ModelConfig


# Each family's config key for dropout on the attention probabilities (BERT/RoBERTa; Llama, Mistral,
# Qwen, DistilBERT; GPT-2).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def resolve_source(source: str) -> str:
    """A hub id or folder; "package:NAME" becomes the folder inside that pip package holding config.json."""
    if not source.startswith("package:"):
        return str(Path(source).expanduser()) if source.startswith((".", "/", "~")) else source
    package = source.split(":", 1)[1]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model.source={source!r}: package {package!r} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    configs = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    for path in configs:
        if (path.parent / "tokenizer.json").exists() or (path.parent / "vocab.txt").exists():
            return str(path.parent)
    raise ModelError(f"model.source={source!r}: no model folder (config.json + tokenizer) inside {root}")


def unreachable(source: str, error: OSError) -> ModelError:
    """One line that names the model and the likely cause, instead of a page of hub traceback."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelError(
        f"cannot load model {source!r}: {first} (no network or no access to the hub? log in with "
        "`huggingface-cli login` for gated models, or use a local folder or model=minilm)"
    )


def model_config(model_cfg: ModelConfig, num_labels: int, offline_ok: bool = True) -> Any:
    """The transformers config: from `arch` when given (no download), else from the source."""
    from transformers import AutoConfig

    if model_cfg.arch and (offline_ok or model_cfg.source is None):
        arch = dict(model_cfg.arch)
        config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    else:
        source = model_cfg.source
        assert source is not None, "validate(): a model without arch.model_type has a source"
        try:
            config = AutoConfig.from_pretrained(resolve_source(source))
        except OSError as e:
            raise unreachable(source, e) from None
    config.num_labels = num_labels
    if config.pad_token_id is None:
        config.pad_token_id = 0 if model_cfg.tokenizer == "builtin" else getattr(config, "eos_token_id", None)
        if isinstance(config.pad_token_id, list):
            config.pad_token_id = config.pad_token_id[0]
    return config


def build_on_meta(model_cfg: ModelConfig, num_labels: int) -> nn.Module:
    """The model's structure without weights: for checks and parameter counts, no download, no memory."""
    from transformers import AutoModelForSequenceClassification

    config = model_config(model_cfg, num_labels)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


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
    model_cfg: ModelConfig, num_labels: int, seed: int, attention_dropout: Optional[float] = None
) -> nn.Module:
    """Pretrained weights from the source (the head freshly initialised from `seed`), or random weights."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    dtype = getattr(torch, model_cfg.dtype)
    if model_cfg.source is None:
        config = model_config(model_cfg, num_labels)
        set_attention_dropout(config, attention_dropout)
        model = AutoModelForSequenceClassification.from_config(config)
        model.to(dtype)
    else:
        source = resolve_source(model_cfg.source)
        try:
            config = model_config(model_cfg, num_labels, offline_ok=False)
            set_attention_dropout(config, attention_dropout)
            model = AutoModelForSequenceClassification.from_pretrained(source, config=config, dtype=dtype)
        except OSError as e:
            raise unreachable(model_cfg.source, e) from None
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_tokenizer(model_cfg: ModelConfig) -> Any:
    """The model's tokenizer; a pad token is added where the family has none (Llama, Mistral)."""
    from transformers import AutoTokenizer

    if model_cfg.tokenizer == "builtin":
        from qvtune.data.vocab import builtin_tokenizer

        return builtin_tokenizer()
    named = model_cfg.tokenizer or model_cfg.source
    assert named is not None, "a model without a source has tokenizer=builtin"
    source = resolve_source(named)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise unreachable(source, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
