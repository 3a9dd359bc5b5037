"""The tracking page's figure and table (docs/tracking.md): one sweep as TensorBoard and MLflow see it.

    python scripts/tracking_figure.py RESULTS_DIR --out docs/tracking

Reads every run's TensorBoard events (tensorboard's EventAccumulator) into one figure of its
scalars, and prints the sweep's MLflow runs (MlflowClient on the local store beside the results) as
a Markdown table: what `tensorboard --logdir` and `mlflow ui` show, without a browser.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TAGS = ("train/loss", "lr/qk", "lr/v", "eval/accuracy")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in TAGS
        if tag in events.Tags()["scalars"]
    }


def label(run_dir: Path) -> str:
    record = json.loads((run_dir / "result.json").read_text())
    rates = record["rates"]
    return f"{run_dir.name}: eta_QK={rates['qk']:g}, lambda={rates['lam']:g}"


def figure(results: Path, out: Path) -> None:
    runs = sorted(p for p in results.iterdir() if (p / "tensorboard").is_dir())
    fig, axes = plt.subplots(1, len(TAGS), figsize=(4 * len(TAGS), 3.2))
    for run in runs:
        series = scalars(run)
        for ax, tag in zip(axes, TAGS):
            steps, values = zip(*series[tag]) if series.get(tag) else ((), ())
            ax.plot(steps, values, label=label(run))
    for ax, tag in zip(axes, TAGS):
        ax.set_title(tag)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "tensorboard_scalars.png", dpi=110)


def mlflow_table(results: Path) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results.absolute() / 'mlflow.db'}")
    lines = [
        "| experiment | run | parent | run key | status | eval/accuracy | train/loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
            tags, metrics = run.data.tags, run.data.metrics
            parent = tags.get("mlflow.parentRunId", "")[:8]
            accuracy = metrics.get("eval/accuracy")
            loss = metrics.get("train/loss")
            lines.append(
                f"| {experiment.name} | {run.info.run_name} | {parent} | {tags.get('qvtune.run_key', '')} "
                f"| {tags.get('status', run.info.status)} | {'' if accuracy is None else f'{accuracy:.4f}'} "
                f"| {'' if loss is None else f'{loss:.4f}'} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/tracking"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    figure(args.results, args.out)
    print(mlflow_table(args.results))


if __name__ == "__main__":
    main()
