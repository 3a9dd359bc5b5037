"""The training loop, top to bottom: AdamW (or its method's optimizer, qvtune.model.methods.Training)
over the run's groups (qk / v / head, and o / mlp / LoRA+'s "<group>.B" where it has them) with one
scheduler factor for all (so lambda holds at every step), dev evaluation each epoch and every
`eval_every` steps, a stop on divergence, and checkpoints from which an interrupted run resumes exactly.

The loop trains a list of members on one model (qvtune.model.runs: a lone run is a list of one) and
yields each member's outcome as it ends: a diverged member at once, the others at the end of the
budget, at `until` (paused) or at the step boundary where a stop was asked for (interrupted, its
checkpoint saved there). The caller turns outcomes into records; nothing here calls back up.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from qvtune.common.files import atomic_write
from qvtune.config.budget import budget, until_step
from qvtune.config.schema import RunConfig, TaskConfig
from qvtune.data.encode import Encoded, collate, eval_batches, micro_batches, train_batches
from qvtune.data.tasks import compute_metrics
from qvtune.model.methods import ParamGroup, Training, UpdateNorms
from qvtune.status import Status
from qvtune.train.generate import text_metrics

LOSS_WINDOW = 10  # steps averaged when comparing the loss with its start
START_BATCHES = 4  # the start of the loss: the model's mean loss on this many batches, not one lucky one


@dataclass
class TrainState:
    """Everything about progress that a checkpoint restores (besides weights and optimizer)."""

    step: int = 0
    total_steps: int = 0  # of the whole run, whatever `until` stops it at
    samples: int = 0
    tokens: int = 0
    train_s: float = 0.0
    eval_s: float = 0.0
    # running -> completed | diverged | paused (at `until`) | interrupted (a stop was asked for)
    status: Status = Status.RUNNING
    error: Optional[str] = None  # why it diverged
    signal: Optional[str] = None  # the signal that interrupted it (SIGTERM, SIGINT)
    loss_start: Optional[float] = None  # the model's mean loss as handed over (see start_losses)
    recent_losses: list[float] = field(default_factory=list)  # the last LOSS_WINDOW
    history: list[dict[str, Any]] = field(default_factory=list)
    train_loss: list[list[float]] = field(default_factory=list)
    update_norms: list[list[float]] = field(default_factory=list)  # [step, |dW| per norm_types]
    norm_types: list[str] = field(default_factory=list)  # q, k, v and every other type tuned
    # [step, lr of each of lr_groups] as applied (None for a group with no trainable tensor)
    lr_trace: list[list[Optional[float]]] = field(default_factory=list)
    lr_groups: list[str] = field(default_factory=list)  # the lr_trace's groups: qk, v, [o, mlp, *.B], head


# The autocast dtype of each precision used (qvtune.train.runtime.resolve_precision); trainable
# tensors stay fp32.
AUTOCAST: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Member:
    """One run as the training loop takes it: a lone run is a list of one, a pack of K share the
    model's forward pass, each with its own tensors, optimizer, checks and checkpoint."""

    groups: list[ParamGroup]
    norms: UpdateNorms  # made before its checkpoint loads: the updates count from the loaded model
    checkpoint: Path
    log: Callable[[dict[str, float], int], None]
    training: Training = field(default_factory=Training)  # its method's optimizer, step hook and state


@dataclass
class Outcome:
    """How a member's run ended (its state's status: completed, diverged, paused or interrupted)."""

    index: int  # the member's place in the list given to `train`
    state: TrainState


class Learner:
    """A member's AdamW (or its method's optimizer) over its groups (qk / v / head, ...), its schedule (one
    factor for every group, so lambda holds at every step), its loss scaler and its progress, restored
    from its checkpoint with its method's state."""

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
        self.optimizer = member.training.optimizer(member.groups, cfg.optim)  # AdamW but for galore
        warmup = int(cfg.optim.warmup_ratio * total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.optim.scheduler)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        self.state = self.load() if member.checkpoint.exists() else TrainState()
        self.state.total_steps = total_steps
        self.state.lr_groups = [g.name for g in member.groups]
        self.state.norm_types = list(member.norms.types)

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
        state.lr_trace.append([state.step + 1] + [applied.get(g) for g in state.lr_groups])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.member.training.after_step(state.step)  # AdaLoRA's budget: after the step, before zero_grad
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        state.step += 1
        norm = self.member.norms()
        state.train_loss.append([state.step, loss])
        state.update_norms.append([state.step, *(norm[t] for t in state.norm_types)])
        rates = {f"lr/{name}": lr for name, lr in applied.items()}
        self.member.log(
            {"train/loss": loss, **{f"update_norm/{k}": v for k, v in norm.items()}, **rates}, state.step
        )
        state.status, state.error = check_divergence(state, loss, cfg.diverge_factor)

    def save(self) -> None:
        """Trainable tensors, optimizer, scheduler, RNG and progress, written atomically. Called at a
        step boundary only, so the RNG state saved is the one the next step starts from."""
        blob = {
            "trainable": {n: p.detach().cpu() for g in self.member.groups for n, p in g.params},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.member.training.state_dict(),
            "state": {**asdict(self.state), "status": self.state.status.value},
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }
        atomic_write(self.member.checkpoint, lambda f: torch.save(blob, f))

    def load(self) -> TrainState:
        blob = load_checkpoint(self.member.checkpoint)
        params = {n: p for g in self.member.groups for n, p in g.params}
        with torch.no_grad():
            for name, value in blob["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        self.scaler.load_state_dict(blob["scaler"])
        self.member.training.load_state_dict(blob.get("method", {}))  # none before methods kept state
        torch.set_rng_state(blob["rng"])
        if blob["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        # a checkpoint saved at a stop says interrupted: it goes on running from here
        return TrainState(**{**blob["state"], "status": Status.RUNNING, "signal": None})


class _Unpickler(pickle.Unpickler):
    """Reads checkpoints saved before the status words moved from qvtune.record to qvtune.status
    (they pickled the enum), so that runs interrupted under an earlier version still resume."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class("qvtune.status" if module == "qvtune.record" else module, name)


def load_checkpoint(path: Path) -> dict[str, Any]:
    pickle_module = types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load, __name__="pickle")
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)


def checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was saved at (0 without one): the members of a pack start together."""
    if not path.exists():
        return 0
    return int(load_checkpoint(path)["state"]["step"])


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
    stop_asked: Callable[[], Optional[str]] = lambda: None,
    tokenizer: Any = None,
) -> Iterator[Outcome]:
    """Train every member on the same batches to the end of its budget (or `until`), yielding each
    member's outcome as it ends. `stop_asked` names the signal when a stop was asked for: the loop then
    ends at the next step boundary with every running member checkpointed there (interrupted). A text
    task's evaluation decodes its answers with `tokenizer`."""
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
        metrics = evaluate(model, [c.index for c in chosen], evals, task, cfg, pad_id, device, amp, tokenizer)
        elapsed = time.perf_counter() - tic  # one pass for every member evaluated
        for learner, values in zip(chosen, metrics):
            learner.state.eval_s += elapsed
            learner.state.history.append({"step": step, "epoch": round(epoch, 4), "metrics": values})
            learner.member.log({f"eval/{k}": v for k, v in values.items()}, step)

    model.train()
    if step == 0 and total_steps > 0:
        first = train_batches(train_data.lengths, cfg.batch_size, cfg.seed, 0, cfg.group_by_length)
        starts = start_losses(
            model, learners, train_data, first[:START_BATCHES], pad_id, pad, cfg.max_batch_tokens, device, amp
        )
        for learner, start in zip(learners, starts):
            learner.state.loss_start = start
    last_save = time.monotonic()
    epoch_batches: tuple[int, list[np.ndarray]] = (-1, [])
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=None, unit="step", dynamic_ncols=True, leave=False)
    try:
        if total_steps == 0 or (cfg.eval_at_start and step == 0 and not learners[0].state.history):
            evaluate_at(learners, 0.0)
        while step < stop and any(learner.running for learner in learners):
            signal = stop_asked()
            if signal is not None:  # at a step boundary: the checkpoint is that of this step
                for learner in learners:
                    if learner.running:
                        learner.save()
                        learner.state.status, learner.state.signal = Status.INTERRUPTED, signal
                        yield Outcome(learner.index, learner.state)
                return
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
                yield Outcome(learner.index, learner.state)
            if time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                for learner in learners:
                    if learner.running:
                        learner.save()
                last_save = time.monotonic()
    finally:
        bar.close()
    for learner in learners:
        if not learner.running:
            continue  # diverged, and yielded then
        if step < total_steps:  # stopped at `until`
            learner.save()  # saved running: it goes on
            learner.state.status = Status.PAUSED
        else:
            learner.state.status = Status.COMPLETED
        yield Outcome(learner.index, learner.state)


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
    tokenizer: Any = None,
) -> list[dict[str, float]]:
    """Each member's dev metrics, with large, length-sorted batches and no autograd bookkeeping; a text
    task's from each member's written and ranked answers (qvtune.train.generate), and its loss from
    the rank of each example's gold label where the answers are label words (no loss pass then)."""
    model.eval()
    k = len(members)
    text = task.format == "text"
    metrics: list[dict[str, float]] = []
    ranked: list[dict[str, float]] = [{} for _ in members]  # each member's summed loss per split
    if text:
        metrics, ranked = text_metrics(model, members, evals, task, cfg, tokenizer, device, amp)
    outputs: list[dict[str, np.ndarray]] = [{} for _ in members]
    losses = np.zeros(k)
    for name, data in evals.items():
        if name in ranked[0]:
            losses += [r[name] for r in ranked]
            continue
        out = np.zeros((k, len(data), max(task.num_labels, 1)), dtype=np.float32)
        pieces = (
            piece
            for index in eval_batches(data.lengths, cfg.eval_batch_size)
            for piece in micro_batches(data.lengths, index, cfg.max_batch_tokens, pad_to(cfg))
        )
        for piece in pieces:
            loss, logits, _ = forward(model, members, data, piece, pad_id, pad_to(cfg), device, amp)
            if not text:
                out[:, piece] = logits.float().cpu().numpy().reshape(k, len(piece), -1)
            losses += loss.float().cpu().numpy() * len(piece)
        for i in range(k):
            outputs[i][name] = out[i]
    if not text:
        labels = {name: data.labels for name, data in evals.items()}
        metrics = [compute_metrics(task, outputs[i], labels) for i in range(k)]
    model.train()
    n = sum(len(d) for d in evals.values())
    return [{**metrics[i], "loss": float(losses[i] / n)} for i in range(k)]


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
        losses, logits = model(members, **batch)  # qvtune.model.runs: a lone run or a pack
    return losses, logits, int(batch["attention_mask"].sum())


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """The one factor that scales every group's learning rate at `step`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))


@torch.no_grad()
def start_losses(
    model: nn.Module,
    learners: list[Learner],
    data: Encoded,
    batches: list[np.ndarray],
    pad_id: int,
    pad: Optional[int],
    max_tokens: Optional[int],
    device: torch.device,
    amp: Optional[torch.dtype],
) -> list[float]:
    """Each member's mean loss over the first training batches, before any update: the start the
    divergence check compares with. A few batches, so one lucky (or unlucky) batch is no start, and
    no update, so a blow-up at the second step cannot raise it. Drawn in training mode under a forked
    random state: the run's own dropout masks, and so its result, are untouched."""
    members = [learner.index for learner in learners]
    total, rows = np.zeros(len(members)), 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for index in batches:
            for piece in micro_batches(data.lengths, index, max_tokens, pad):
                losses, _, _ = forward(model, members, data, piece, pad_id, pad, device, amp)
                total += losses.float().cpu().numpy() * len(piece)
                rows += len(piece)
    return [float(x) for x in total / max(rows, 1)]


def check_divergence(state: TrainState, loss: float, factor: float) -> tuple[Status, Optional[str]]:
    """Non-finite loss, or the recent mean loss far above where it started, ends the run as diverged.

    The start is the model's mean loss on the first batches before any update (start_losses; where
    it is missing, the first step's loss). Every step compares the mean of the last LOSS_WINDOW
    losses (fewer while there are fewer) with `factor` x the start, so a run shorter than the window
    that blows up is caught too."""
    if not math.isfinite(loss):
        return Status.DIVERGED, f"loss is {loss} at step {state.step}"
    if state.loss_start is None:
        state.loss_start = loss
    state.recent_losses = (state.recent_losses + [loss])[-LOSS_WINDOW:]
    recent = float(np.mean(state.recent_losses))
    if factor and recent > factor * state.loss_start:
        return (
            Status.DIVERGED,
            f"mean loss {recent:.4g} over the last {len(state.recent_losses)} steps exceeds {factor:g} x "
            f"its start {state.loss_start:.4g} (step {state.step})",
        )
    return Status.RUNNING, None
