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

DIGITS = tuple("0123456789")

# Appended after WORDS for text tasks only (the classifiers' tokenizer and ids stay as they were): an
# end of answer, digits (a number is a digit then "##" continuations, so it decodes without spaces), the
# prompts' and answers' words, and punctuation.
TEXT_TOKENS: tuple[str, ...] = (
    ("[EOS]",)
    + DIGITS
    + tuple(f"##{d}" for d in DIGITS)
    + tuple(
        """yes no true false positive negative entailment not neutral contradiction equivalent acceptable
        unacceptable similar different maybe key value query list answer question review sentiment sentence
        is what the of a plus""".split()
    )
    + tuple("+-=:?,.#_")
)

TEXT_VOCAB: tuple[str, ...] = SPECIAL_TOKENS + WORDS + TEXT_TOKENS  # ids of the text tokenizer, in order


def builtin_tokenizer(text: bool = False) -> Any:
    """A word-level fast tokenizer over WORDS (+ specials), BERT-style [CLS] a [SEP] b [SEP]: no download.
    `text`: the causal LMs' variant over TEXT_VOCAB, "[CLS] prompt" (CLS as its BOS), [EOS] ending answers."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if text:
        return _text_tokenizer()
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


def _text_tokenizer() -> Any:
    """WordPiece over TEXT_VOCAB: whole words as in the classifiers' vocabulary, numbers as digits."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TEXT_VOCAB)}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B:1", special_tokens=[("[CLS]", vocab["[CLS]"])]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        bos_token="[CLS]",
        eos_token="[EOS]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        name_or_path="qvtune-builtin-text",
    )
