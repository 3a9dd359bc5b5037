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

from qvtune.common.files import atomic_write
from qvtune.config.budget import budget, until_step
from qvtune.config.schema import RunConfig, TaskConfig
from qvtune.data.encode import Encoded, collate, eval_batches, micro_batches, train_batches
from qvtune.data.tasks import compute_metrics
from qvtune.model.methods import ParamGroup, UpdateNorms
from qvtune.model.pack import PackedModel
from qvtune.status import Status

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


# The autocast dtype of each precision used (qvtune.identity.resolve_precision); trainable tensors stay fp32.
AUTOCAST: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Member:
    """One run as the training loop takes it: a lone run is a list of one, a pack (qvtune.model.pack) of K
    that share the model's forward pass, each with its own tensors, optimizer, checks and record."""

    groups: list[ParamGroup]
    norms: UpdateNorms  # made before its checkpoint loads: the updates count from the loaded model
    checkpoint: Path
    log: Callable[[dict[str, float], int], None]
    # called with its final state as soon as it stops before the others (a diverged member of a
    # pack), so that its record need not wait for the pack to end
    ended: Callable[[TrainState], None] = lambda state: None


class Learner:
    """A member's AdamW over its qk / v / head groups, its schedule (one factor for every group, so
    lambda holds at every step), its loss scaler and its progress, restored from its checkpoint."""

    def __init__(
        self,
        index: int,
        member: Member,
        cfg: RunConfig,
        total_steps: int,
        device: torch.device,
        amp: Optional[torch.dtype],
    ) -> None:
        self.index, self.member = index, member
        self.params = [p for g in member.groups for _, p in g.params]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for _, p in g.params], "lr": g.lr, "name": g.name}
                for g in member.groups
                if g.params
            ],
            betas=cast(tuple[float, float], tuple(cfg.optim.betas)),  # the schema's list holds two
            eps=cfg.optim.eps,
            weight_decay=cfg.optim.weight_decay,
        )
        warmup = int(cfg.optim.warmup_ratio * total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.optim.scheduler)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        self.state = self.load() if member.checkpoint.exists() else TrainState()
        self.state.total_steps = total_steps

    @property
    def running(self) -> bool:
        return self.state.status == Status.RUNNING

    def step(self, loss: float, cfg: RunConfig) -> None:
        """Clip, step, schedule; record the loss, the update norms and the rates; check divergence."""
        state = self.state
        if cfg.optim.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.max_grad_norm)
        applied = {pg["name"]: pg["lr"] for pg in self.optimizer.param_groups}
        state.lr_trace.append([state.step + 1] + [applied.get(g) for g in ("qk", "v", "head")])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        state.step += 1
        norm = self.member.norms()
        state.train_loss.append([state.step, loss])
        state.update_norms.append([state.step, norm["q"], norm["k"], norm["v"]])
        rates = {f"lr/{name}": lr for name, lr in applied.items()}
        self.member.log(
            {"train/loss": loss, **{f"update_norm/{k}": v for k, v in norm.items()}, **rates}, state.step
        )
        state.status, state.error = check_divergence(state, loss, cfg.diverge_factor)

    def save(self) -> None:
        """Trainable tensors, optimizer, scheduler, RNG and progress, written atomically."""
        blob = {
            "trainable": {n: p.detach().cpu() for g in self.member.groups for n, p in g.params},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": asdict(self.state),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        atomic_write(self.member.checkpoint, lambda f: torch.save(blob, f))

    def load(self) -> TrainState:
        blob = torch.load(self.member.checkpoint, map_location="cpu", weights_only=False)
        params = {n: p for g in self.member.groups for n, p in g.params}
        with torch.no_grad():
            for name, value in blob["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.scaler.load_state_dict(blob["scaler"])
        torch.set_rng_state(blob["rng"])
        if blob["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        return TrainState(**blob["state"])


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was saved at (0 without one): the members of a pack start together."""
    if not path.exists():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=False)["state"]["step"])


def train(
    model: nn.Module,
    members: list[Member],
    train_data: Encoded,
    evals: dict[str, Encoded],
    task: TaskConfig,
    cfg: RunConfig,
    *,
    pad_id: int,
    device: torch.device,
    precision: str,
) -> list[TrainState]:
    """Train every member on the same batches to the end of its budget (or `until`); returns their states."""
    planned = budget(len(train_data), cfg)
    total_steps, per_epoch = planned.steps, planned.per_epoch
    amp = AUTOCAST[precision]
    learners = [Learner(i, m, cfg, total_steps, device, amp) for i, m in enumerate(members)]
    steps = {learner.state.step for learner in learners}
    if len(steps) != 1:
        raise ValueError(f"the members of a pack resume from different steps ({sorted(steps)})")
    step = steps.pop()
    stop = until_step(cfg.until, total_steps)  # the schedule above is the whole run's either way
    pad = pad_to(cfg)

    def evaluate_at(chosen: list[Learner], epoch: float) -> None:
        tic = time.perf_counter()
        metrics = evaluate(model, [c.index for c in chosen], evals, task, cfg, pad_id, device, amp)
        elapsed = time.perf_counter() - tic  # one pass for every member evaluated
        for learner, values in zip(chosen, metrics):
            learner.state.eval_s += elapsed
            learner.state.history.append({"step": step, "epoch": round(epoch, 4), "metrics": values})
            learner.member.log({f"eval/{k}": v for k, v in values.items()}, step)

    model.train()
    last_save = time.monotonic()
    epoch_batches: tuple[int, list[np.ndarray]] = (-1, [])
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=None, unit="step", dynamic_ncols=True, leave=False)
    try:
        if total_steps == 0 or (cfg.eval_at_start and step == 0 and not learners[0].state.history):
            evaluate_at(learners, 0.0)
        while step < stop and any(learner.running for learner in learners):
            active = [learner for learner in learners if learner.running]
            tic = time.perf_counter()
            losses = [0.0] * len(active)
            epoch, step_in_epoch = divmod(step, per_epoch)
            if epoch_batches[0] != epoch:
                batches = train_batches(
                    train_data.lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length
                )
                epoch_batches = (epoch, batches)
            group = epoch_batches[1][step_in_epoch * cfg.grad_accum : (step_in_epoch + 1) * cfg.grad_accum]
            for index in group:
                micro_losses, tokens = backward(
                    model,
                    [learner.index for learner in active],
                    train_data,
                    index,
                    pad_id,
                    pad,
                    cfg.max_batch_tokens,
                    device,
                    len(group),
                    amp,
                    [learner.scaler for learner in active],
                )
                losses = [a + b for a, b in zip(losses, micro_losses)]
                for learner in active:
                    learner.state.tokens += tokens
                    learner.state.samples += len(index)
            for learner, loss in zip(active, losses):
                learner.step(loss, cfg)
            step += 1
            elapsed = time.perf_counter() - tic  # the step of every active member
            for learner in active:
                learner.state.train_s += elapsed
            bar.update(1)
            bar.set_postfix(loss=f"{losses[0]:.4f}", refresh=False)

            epoch_done = step % per_epoch == 0
            periodic = cfg.eval_every and step % cfg.eval_every == 0
            due = epoch_done or periodic or step in (stop, total_steps)
            ended = [learner for learner in active if not learner.running]  # diverged: evaluated now
            if due or ended:
                evaluate_at(active if due else ended, step / per_epoch)
            for learner in ended:
                learner.member.ended(learner.state)
            if time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                for learner in learners:
                    if learner.running:
                        learner.save()
                last_save = time.monotonic()
    except (KeyboardInterrupt, SystemExit):  # preempted, cancelled, Ctrl-C: keep the progress
        for learner in learners:
            if learner.running:  # an ended one has had its `ended` call
                learner.save()
        raise
    finally:
        bar.close()
    for learner in learners:
        if learner.running and step < total_steps:  # stopped at `until`
            learner.save()  # saved running: it goes on
            learner.state.status = Status.PAUSED
        elif learner.running:
            learner.state.status = Status.COMPLETED
    return [learner.state for learner in learners]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    members: list[int],
    evals: dict[str, Encoded],
    task: TaskConfig,
    cfg: RunConfig,
    pad_id: int,
    device: torch.device,
    amp: Optional[torch.dtype],
) -> list[dict[str, float]]:
    """Each member's dev metrics, with large, length-sorted batches and no autograd bookkeeping."""
    model.eval()
    k = len(members)
    outputs: list[dict[str, np.ndarray]] = [{} for _ in members]
    losses = np.zeros(k)
    for name, data in evals.items():
        out = np.zeros((k, len(data), max(task.num_labels, 1)), dtype=np.float32)
        pieces = (
            piece
            for index in eval_batches(data.lengths, cfg.eval_batch_size)
            for piece in micro_batches(data.lengths, index, cfg.max_batch_tokens, pad_to(cfg))
        )
        for piece in pieces:
            loss, logits, _ = forward(model, members, data, piece, pad_id, pad_to(cfg), device, amp)
            out[:, piece] = logits.float().cpu().numpy().reshape(k, len(piece), -1)
            losses += loss.float().cpu().numpy() * len(piece)
        for i in range(k):
            outputs[i][name] = out[i]
    model.train()
    labels = {name: data.labels for name, data in evals.items()}
    n = sum(len(d) for d in evals.values())
    return [{**compute_metrics(task, outputs[i], labels), "loss": float(losses[i] / n)} for i in range(k)]


def pad_to(cfg: RunConfig) -> Optional[int]:
    return cfg.max_len if cfg.padding == "max" else None


def backward(
    model: nn.Module,
    members: list[int],
    data: Encoded,
    index: np.ndarray,
    pad_id: int,
    pad_to: Optional[int],
    max_tokens: Optional[int],
    device: torch.device,
    batches_in_step: int = 1,
    amp: Optional[torch.dtype] = None,
    scalers: Optional[list[Any]] = None,
) -> tuple[list[float], int]:
    """Accumulate each member's gradient of its batch's mean loss / the batches accumulated into this
    optimizer step (scaled by its fp16 loss scaler), in micro-batches of at most `max_tokens` padded
    tokens (a pack's hold one copy per member); returns (those losses, real tokens in the batch)."""
    loss_sum, tokens = [0.0] * len(members), 0
    for piece in micro_batches(data.lengths, index, max_tokens, pad_to):
        losses, _, real = forward(model, members, data, piece, pad_id, pad_to, device, amp)
        losses = losses * (len(piece) / len(index) / batches_in_step)
        scaled = losses if scalers is None else torch.stack([s.scale(x) for s, x in zip(scalers, losses)])
        # each member's tensors reach only its own loss: the sum's gradient is every member's own
        scaled.sum().backward()
        loss_sum = [a + b for a, b in zip(loss_sum, losses.tolist())]
        tokens += real
    return loss_sum, tokens


def forward(
    model: nn.Module,
    members: list[int],
    data: Encoded,
    index: np.ndarray,
    pad_id: int,
    pad_to: Optional[int],
    device: torch.device,
    amp: Optional[torch.dtype],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each member's mean loss and logits on the examples `index`, and how many real tokens they hold."""
    batch = {k: v.to(device) for k, v in collate(data, index, pad_id, pad_to).items()}
    with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
        if isinstance(model, PackedModel):
            model.slots.active = members
            losses, logits = model(**batch)
        else:
            result = model(**batch)
            losses, logits = result.loss.unsqueeze(0), result.logits.unsqueeze(0)
    return losses, logits, int(batch["attention_mask"].sum())


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
