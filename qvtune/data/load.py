"""Any task's data, as its config says: a classification task's texts and labels (qvtune.data.tasks)
or a text task's prompts and answers (qvtune.data.text). Apart from both, since a text task may be a
classification task's data rewritten as prompts."""

from __future__ import annotations

from typing import Optional

from qvtune.config.schema import TaskConfig
from qvtune.data.tasks import TaskData, load_labelled
from qvtune.data.text import load_text_task


def load_task(task: TaskConfig, data_dir: Optional[str]) -> TaskData:
    """The task's train and dev data from its generator, a GLUE TSV folder, a data file or the hub."""
    if task.format == "text":
        return load_text_task(task, data_dir)
    return load_labelled(task, data_dir)
