"""The paper's recipe rebuilt on HF Trainer + PEFT.

The baseline that scripts/bench.py measures qvtune against.

One fine-tuning run as the paper's scripts do it: tokenize the data set in this run (datasets.map),
LoRA from PEFT on the targeted modules, `transformers.Trainer` for training and evaluation. Three
ways to batch, as in the issue's table:

- `padded`: every input padded to max_len (the paper's scripts);
- `dynamic`: DataCollatorWithPadding, random batches;
- `grouped`: dynamic padding with HF's length-grouped sampler.

Writes one JSON object (train samples/s, real tokens/s, load/data/train/eval seconds, dev metric,
peak RSS) to --out; the bench adds the process's wall time from outside.

    python scripts/hf_recipe.py --glue ../shared/data/glue --task rte --batching grouped --out hf.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

START = time.perf_counter()

import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from qvtune.config.schema import config_dir, register_configs  # noqa: E402
from qvtune.data.load import load_task  # noqa: E402
from qvtune.data.tasks import compute_metrics  # noqa: E402
from qvtune.model.load import model_folder  # noqa: E402
from qvtune.train.runtime import available_cpus  # noqa: E402

BATCHINGS = ("padded", "dynamic", "grouped")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--glue", required=True, help="folder in the GLUE TSV layout")
    parser.add_argument("--task", default="rte", help="a task config name: rte, sst2, mrpc, ...")
    parser.add_argument("--batching", choices=BATCHINGS, default="grouped")
    parser.add_argument("--samples", type=int, default=1000, help="training samples (the first N)")
    parser.add_argument("--targets", default="query,value", help="module names for LoRA")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="eta_QK, also the head's")
    parser.add_argument("--lam", type=float, default=1.0, help="eta_V / eta_QK")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    opts = parser.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    torch.set_num_threads(available_cpus())
    register_configs()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):  # qvtune's task and model configs
        cfg = compose("run", overrides=[f"task={opts.task}", "model=minilm"])
    task_cfg, source = cfg.task, model_folder(cfg.model, cfg.cache_dir)

    tic = time.perf_counter()
    set_seed(opts.seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=task_cfg.num_labels)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=opts.rank,
        lora_alpha=opts.rank,
        lora_dropout=0.0,
        target_modules=opts.targets.split(","),
    )
    model = get_peft_model(model, lora)
    load_s = time.perf_counter() - tic

    tic = time.perf_counter()
    data = load_task(task_cfg, opts.glue)
    padding = "max_length" if opts.batching == "padded" else False

    def dataset(split, n=None) -> Dataset:  # like run_glue.py: tokenize the whole split, then select
        raw = {f"text{i}": column for i, column in enumerate(split.columns)}
        raw["label"] = split.labels.tolist()

        def tokenize(batch: dict) -> dict:
            texts = [batch[f"text{i}"] for i in range(len(split.columns))]
            return tokenizer(*texts, padding=padding, max_length=opts.max_len, truncation=True)

        encoded = Dataset.from_dict(raw).map(tokenize, batched=True, remove_columns=list(raw)[:-1])
        return encoded if n is None else encoded.select(range(min(n, len(encoded))))

    train_set = dataset(data.train, opts.samples)
    eval_name, eval_split = next(iter(data.evals.items()))
    eval_set = dataset(eval_split)
    real_tokens = int(sum(sum(mask) for mask in train_set["attention_mask"]))
    data_s = time.perf_counter() - tic

    args = TrainingArguments(
        output_dir=str(Path(opts.out).parent / "hf-trainer"),
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.eval_batch_size,
        learning_rate=opts.lr,
        num_train_epochs=1,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        seed=opts.seed,
        train_sampling_strategy="group_by_length" if opts.batching == "grouped" else "random",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )

    def metrics(prediction) -> dict:
        logits, labels = prediction
        return compute_metrics(task_cfg, {eval_name: np.asarray(logits)}, {eval_name: np.asarray(labels)})

    # eta_V for the LoRA matrices on W_v, eta_QK for the rest; AdamW as qvtune sets it (betas 0.9, 0.99)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    on_value = [p for n, p in trainable if ".value." in n]
    rest = [p for n, p in trainable if ".value." not in n]
    optimizer = torch.optim.AdamW(
        [{"params": rest, "lr": opts.lr}, {"params": on_value, "lr": opts.lr * opts.lam}],
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=0.0,
    )
    collator = (
        None if opts.batching == "padded" else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collator,
        compute_metrics=metrics,
        optimizers=(optimizer, None),
    )
    tic = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - tic
    tic = time.perf_counter()
    evaluation = trainer.evaluate()
    eval_s = time.perf_counter() - tic

    metric = task_cfg.metric
    record = {
        "recipe": f"hf-trainer-{opts.batching}",
        "task": opts.task,
        "samples": len(train_set),
        "tokens": real_tokens,
        "samples_per_s": len(train_set) / train_s,
        "tokens_per_s": real_tokens / train_s,
        "dev_metric": evaluation[f"eval_{metric}"],
        "metric": metric,
        "load_s": load_s,
        "data_s": data_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "in_process_s": time.perf_counter() - START,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    Path(opts.out).write_text(json.dumps(record, indent=1))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
