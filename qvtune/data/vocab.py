"""A small English vocabulary shared by the synthetic task and the tiny models' built-in tokenizer.

Every word is a single token for BERT's uncased WordPiece vocabulary, so the synthetic task means
the same thing to a pretrained model (minilm) and to a tiny random-init one.
"""

from __future__ import annotations

from typing import Any

WORDS: tuple[str, ...] = tuple(
    """cat dog bird fish horse cow sheep goat pig duck lion tiger bear wolf fox deer mouse rabbit snake frog
    apple bread cheese milk rice soup cake tea coffee water salt sugar egg meat corn
    red blue green black white yellow brown pink gray gold
    house door window table chair bed floor wall roof room garden street road bridge river lake sea hill
    mountain forest car bus train ship boat plane bike truck book pen paper letter card map clock phone radio
    camera
    sun moon star rain snow wind cloud fire ice stone king queen child doctor teacher farmer soldier artist
    driver nurse""".split()
)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def builtin_tokenizer() -> Any:
    """A word-level fast tokenizer over WORDS (+ specials), BERT-style [CLS] a [SEP] b [SEP]: no download."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + WORDS)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        name_or_path="qvtune-builtin",
    )
