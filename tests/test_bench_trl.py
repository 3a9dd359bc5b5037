"""scripts/bench_trl.py: TRL's SFTTrainer, given the prompt-completion rows the benchmark writes from
qvtune's prompts and answers, trains on qvtune's token ids with the loss on qvtune's answer tokens
(tiny-llama's builtin tokenizer, plain and with a chat template)."""

import importlib.util

import pytest

from qvtune.data.encode import encode_text
from qvtune.data.load import load_task
from qvtune.model.load import load_model, load_tokenizer
from tests.helpers import ROOT, make_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("trl") is None, reason="trl is not installed: pip install -e '.[bench]'"
)

# A chat template in the builtin vocabulary that, like SmolLM2's, adds its own special tokens: the
# tokenizer adds none outside it (see with_chat_template).
CHAT = (
    "{% for m in messages %}[CLS] {{ m['content'] }} [SEP]{% endfor %}"
    "{% if add_generation_prompt %} value :{% endif %}"
)


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_trl", ROOT / "scripts" / "bench_trl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_chat_template(tok):
    from tokenizers import processors

    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    tok.chat_template = CHAT
    return tok


@pytest.mark.slow  # importing trl alone takes 2-3 s on 2 CPU cores
@pytest.mark.parametrize("chat", [False, True])
def test_trl_trains_on_qvtune_s_tokens_and_answer_positions(tmp_path, chat):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    bench = bench_module()
    cfg = make_config("model=tiny-llama", "task=kv-recall", "task.kv_recall.train_size=12")
    tok = load_tokenizer(cfg.model, text=True)
    if chat:
        tok = with_chat_template(tok)
    split = load_task(cfg.task, None).train
    encoded = encode_text(tok, split, cfg.max_len, cfg.task)
    rows = bench.trl_rows(split, cfg.task, tok)
    assert rows[0]["prompt"].startswith("[CLS]") == chat and rows[0]["completion"].startswith(" ") != chat

    def prepared(completion_only: bool):
        args = SFTConfig(
            output_dir=str(tmp_path), report_to="none", bf16=False, completion_only_loss=completion_only
        )
        model = load_model(cfg.model, 2, seed=0, causal=True)
        data = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        return list(data.train_dataset["input_ids"]), list(data.train_dataset["labels"])

    ids, labels = prepared(completion_only=True)
    assert bench.same_tokens(encoded, ids, labels) == len(split) == 12
    # the check sees a loss on the prompt, and a token that differs
    assert bench.same_tokens(encoded, *prepared(completion_only=False)) == 0
    ids[3] = ids[3][:-1] + [ids[3][-1] + 1]
    assert bench.same_tokens(encoded, ids, labels) == 11
