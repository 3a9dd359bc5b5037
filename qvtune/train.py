"""The training loop, top to bottom: AdamW over the qk / v / head groups with one scheduler factor
for all (so lambda holds at every step), dev evaluation each epoch and every `eval_every` steps, a
stop on divergence, and checkpoints from which an interrupted run resumes exactly."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np
import torch
from torch import nn

from qvtune.config import RunConfig, TaskConfig, until_step
from qvtune.data import Encoded, collate, eval_batches, micro_batches, train_batches
from qvtune.files import atomic_write
from qvtune.methods import ParamGroup, UpdateNorms
from qvtune.record import Status
from qvtune.tasks import compute_metrics

LOSS_WINDOW = 10  # steps averaged when comparing the loss with its start


@dataclass
class TrainState:
    """Everything about progress that a checkpoint restores (besides weights and optimizer)."""

    step: int = 0
    total_steps: int = 0  # of the whole run, whatever `until` stops it at
    samples: int = 0
    tokens: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    status: Status = Status.RUNNING  # running -> completed | diverged | paused (at `until`)
    error: Optional[str] = None
    loss_start: Optional[float] = None
    recent_losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    train_loss: list[list[float]] = field(default_factory=list)
    update_norms: list[list[float]] = field(default_factory=list)
    # [step, lr of qk, v, head] as applied (None for a group with no trainable tensor)
    lr_trace: list[list[Optional[float]]] = field(default_factory=list)


def plan_steps(n_train: int, cfg: RunConfig) -> tuple[int, int]:
    """(optimizer steps in the run, micro-batches per epoch)."""
    per_epoch = math.ceil(n_train / cfg.batch_size)
    if cfg.max_steps is not None:
        return int(cfg.max_steps), per_epoch
    # rounded first: 1.1 epochs x 100 batches is 110.00000000000001 in floating point, not 111 steps
    return math.ceil(round(cfg.epochs * per_epoch / cfg.grad_accum, 9)), per_epoch


# The autocast dtype of each precision used (qvtune.identity.resolve_precision); trainable tensors stay fp32.
AUTOCAST: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    evals: dict[str, Encoded],
    task: TaskConfig,
    cfg: RunConfig,
    pad_id: int,
    device: torch.device,
    amp: Optional[torch.dtype],
) -> dict[str, float]:
    """Dev metrics with large, length-sorted batches and no autograd bookkeeping."""
    model.eval()
    outputs, labels, losses = {}, {}, []
    for name, data in evals.items():
        out = np.zeros((len(data), max(task.num_labels, 1)), dtype=np.float32)
        pieces = (
            piece
            for index in eval_batches(data.lengths, cfg.eval_batch_size)
            for piece in micro_batches(data.lengths, index, cfg.max_batch_tokens, pad_to(cfg))
        )
        for piece in pieces:
            result, _ = forward(model, data, piece, pad_id, pad_to(cfg), device, amp)
            out[piece] = result.logits.float().cpu().numpy().reshape(len(piece), -1)
            losses.append(float(result.loss) * len(piece))
        outputs[name], labels[name] = out, data.labels
    model.train()
    metrics = compute_metrics(task, outputs, labels)
    metrics["loss"] = sum(losses) / sum(len(d) for d in evals.values())
    return metrics


def pad_to(cfg: RunConfig) -> Optional[int]:
    return cfg.max_len if cfg.padding == "max" else None


def train(
    model: nn.Module,
    groups: list[ParamGroup],
    train_data: Encoded,
    evals: dict[str, Encoded],
    task: TaskConfig,
    cfg: RunConfig,
    *,
    pad_id: int,
    device: torch.device,
    precision: str,
    checkpoint: Path,
    log: Callable[[dict[str, float], int], None],
) -> TrainState:
    total_steps, per_epoch = plan_steps(len(train_data), cfg)
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in g.params], "lr": g.lr, "name": g.name} for g in groups if g.params],
        betas=cast(tuple[float, float], tuple(cfg.optim.betas)),  # the schema's list holds two
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    warmup = int(cfg.optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.optim.scheduler)
    )
    amp = AUTOCAST[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    norms = UpdateNorms(model)
    state = TrainState()
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, scaler)
    state.total_steps = total_steps
    stop = until_step(cfg.until, total_steps)  # the schedule above is the whole run's either way

    trainable = [p for g in groups for _, p in g.params]
    pad = pad_to(cfg)

    def evaluate_at(epoch: float) -> None:
        record_eval(state, model, evals, task, cfg, pad_id, device, amp, log, epoch=epoch)

    model.train()
    last_save = time.monotonic()
    epoch_batches: tuple[int, list[np.ndarray]] = (-1, [])
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps, initial=state.step, disable=None, unit="step", dynamic_ncols=True, leave=False
    )
    try:
        if total_steps == 0 or (cfg.eval_at_start and state.step == 0 and not state.history):
            evaluate_at(0.0)
        while state.step < stop and state.status == Status.RUNNING:
            tic = time.perf_counter()
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                position = state.step * cfg.grad_accum + micro
                epoch, index_in_epoch = divmod(position, per_epoch)
                if epoch_batches[0] != epoch:
                    batches = train_batches(
                        train_data.lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length
                    )
                    epoch_batches = (epoch, batches)
                index = epoch_batches[1][index_in_epoch]
                loss, tokens = backward(
                    model,
                    train_data,
                    index,
                    pad_id,
                    pad,
                    cfg.max_batch_tokens,
                    device,
                    scale=1 / cfg.grad_accum,
                    amp=amp,
                    scaler=scaler,
                )
                loss_sum += loss
                state.tokens += tokens
                state.samples += len(index)
            if cfg.optim.max_grad_norm:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.max_grad_norm)
            applied = {pg["name"]: pg["lr"] for pg in optimizer.param_groups}
            state.lr_trace.append([state.step + 1] + [applied.get(g) for g in ("qk", "v", "head")])
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            state.train_s += time.perf_counter() - tic

            norm = norms()
            state.train_loss.append([state.step, loss_sum])
            state.update_norms.append([state.step, norm["q"], norm["k"], norm["v"]])
            rates = {f"lr/{name}": lr for name, lr in applied.items()}
            norm_values = {f"update_norm/{k}": v for k, v in norm.items()}
            log({"train/loss": loss_sum, **norm_values, **rates}, state.step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", refresh=False)

            state.status, state.error = check_divergence(state, loss_sum, cfg.diverge_factor)
            epoch_now = state.step * cfg.grad_accum // per_epoch
            epoch_done = epoch_now > (state.step - 1) * cfg.grad_accum // per_epoch
            periodic = cfg.eval_every and state.step % cfg.eval_every == 0
            if epoch_done or periodic or state.step in (stop, total_steps) or state.status != Status.RUNNING:
                evaluate_at(state.step * cfg.grad_accum / per_epoch)
            if time.monotonic() - last_save > cfg.checkpoint_minutes * 60 and state.status == Status.RUNNING:
                save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, state)
                last_save = time.monotonic()
    except (KeyboardInterrupt, SystemExit):  # preempted, cancelled, Ctrl-C: keep the progress
        save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, state)
        raise
    finally:
        bar.close()
    if state.status == Status.RUNNING and state.step < total_steps:  # stopped at `until`
        save_checkpoint(checkpoint, model, optimizer, scheduler, scaler, state)  # saved running: it goes on
        state.status = Status.PAUSED
    elif state.status == Status.RUNNING:
        state.status = Status.COMPLETED
    return state


def backward(
    model: nn.Module,
    data: Encoded,
    index: np.ndarray,
    pad_id: int,
    pad_to: Optional[int],
    max_tokens: Optional[int],
    device: torch.device,
    scale: float = 1.0,
    amp: Optional[torch.dtype] = None,
    scaler: Optional[Any] = None,
) -> tuple[float, int]:
    """Accumulate the gradient of `scale` x the batch's mean loss, in micro-batches of at most
    `max_tokens` padded tokens; returns (that scaled loss, real tokens seen)."""
    loss_sum, tokens = 0.0, 0
    for piece in micro_batches(data.lengths, index, max_tokens, pad_to):
        result, real = forward(model, data, piece, pad_id, pad_to, device, amp)
        loss = result.loss * (scale * len(piece) / len(index))
        (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += loss.item()
        tokens += real
    return loss_sum, tokens


def forward(
    model: nn.Module,
    data: Encoded,
    index: np.ndarray,
    pad_id: int,
    pad_to: Optional[int],
    device: torch.device,
    amp: Optional[torch.dtype],
) -> tuple[Any, int]:
    """The model's output on the examples `index`, and how many real (non-pad) tokens they hold."""
    batch = {k: v.to(device) for k, v in collate(data, index, pad_id, pad_to).items()}
    with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
        return model(**batch), int(batch["attention_mask"].sum())


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """The one factor that scales every group's learning rate at `step`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


def check_divergence(state: TrainState, loss: float, factor: float) -> tuple[Status, Optional[str]]:
    """Non-finite loss, or the recent mean loss far above where it started, ends the run as diverged."""
    if not math.isfinite(loss):
        return Status.DIVERGED, f"loss is {loss} at step {state.step}"
    state.recent_losses = (state.recent_losses + [loss])[-LOSS_WINDOW:]
    if state.loss_start is None:
        state.loss_start = loss  # the first step's loss: the model as it was handed over
    if factor and len(state.recent_losses) == LOSS_WINDOW:
        recent = float(np.mean(state.recent_losses))
        if recent > factor * state.loss_start:
            return (
                Status.DIVERGED,
                f"mean loss {recent:.4g} over the last {LOSS_WINDOW} steps exceeds {factor:g} x its start "
                f"{state.loss_start:.4g} (step {state.step})",
            )
    return Status.RUNNING, None


def record_eval(
    state: TrainState,
    model: nn.Module,
    evals: dict[str, Encoded],
    task: TaskConfig,
    cfg: RunConfig,
    pad_id: int,
    device: torch.device,
    amp: Optional[torch.dtype],
    log: Callable[[dict[str, float], int], None],
    epoch: float,
) -> None:
    tic = time.perf_counter()
    metrics = evaluate(model, evals, task, cfg, pad_id, device, amp)
    state.eval_s += time.perf_counter() - tic
    state.history.append({"step": state.step, "epoch": round(epoch, 4), "metrics": metrics})
    log({f"eval/{k}": v for k, v in metrics.items()}, state.step)


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any, state: TrainState
) -> None:
    """Trainable tensors, optimizer, scheduler, RNG and progress, written atomically."""
    blob = {
        "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "state": asdict(state),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    atomic_write(path, lambda f: torch.save(blob, f))


def load_checkpoint(path: Path, model: nn.Module, optimizer: Any, scheduler: Any, scaler: Any) -> TrainState:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in blob["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    scaler.load_state_dict(blob["scaler"])
    torch.set_rng_state(blob["rng"])
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return TrainState(**blob["state"])
