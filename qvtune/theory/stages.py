"""Section 4.1, Case 1: the two-stage learning of a softmax attention layer from near-zero weights.

Student and teacher are Attn(x W_q, C W_k, C W_v) = softmax(x W_q W_k^T C^T) C W_v (single head, no
scale factor, as in Case 1). The teacher attends sharply (W_q* = W_k* = sqrt(beta) Q with Q
orthogonal, so a context token is weighted by exp(beta <x, c>)), so its attention pattern matters.
The student starts at small random W_q, W_k, W_v and follows plain full-batch gradient descent with
eta_QK on W_q, W_k and eta_V = lambda * eta_QK on W_v. Near zero, the gradients of W_q and W_k are
proportional to W_k and W_q (tiny), while the gradient of W_v sees the uniform attention: W_v
learns first (stage 1), W_q and W_k only later (stage 2). A larger lambda speeds up stage 1 and so
starts stage 2 earlier. Every lambda runs from the same data and the same initial weights, batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from matplotlib.figure import Figure

from qvtune.common.figures import save_figure
from qvtune.theory.report import text_table, write_csv, write_json


@dataclass
class Config:
    """`stages`: two-stage learning of W_q, W_k, W_v and how lambda shortens stage 1."""

    lams: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0])  # eta_V / eta_QK
    eta_qk: float = 0.05  # eta_QK, fixed while lambda varies
    steps: int = 2000
    dim: int = 8  # d_in = d_out
    context: int = 8  # tokens in C
    samples: int = 256  # (x, C) pairs: full-batch GD
    init: float = 1e-4  # std of the student's initial entries
    beta: float = 2.0  # teacher's logit scale (attention sharpness)
    frac: float = 0.5  # stage 1 ends when ||W_q|| first reaches frac * its final norm
    out: Optional[str] = None
    seed: int = 0


def _attention(
    X: torch.Tensor, C: torch.Tensor, Wq: torch.Tensor, Wk: torch.Tensor, Wv: torch.Tensor
) -> torch.Tensor:
    """softmax(x W_q W_k^T C^T) C W_v for a batch of weight triples (L, d, d): output (L, N, d)."""
    logits = torch.einsum("nd,lde,lfe,nmf->lnm", X, Wq, Wk, C)
    return torch.einsum("lnm,nmd,lde->lne", logits.softmax(-1), C, Wv)


def train(cfg: Config) -> np.ndarray:
    """Norms ||W_q||_F, ||W_k||_F, ||W_v||_F and the loss per step: (lambdas, steps + 1, 4)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 8 x 8 matrices: thread hand-offs cost more than they save
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: Config) -> np.ndarray:
    g = torch.Generator().manual_seed(cfg.seed)
    d, f64 = cfg.dim, torch.float64
    X = torch.randn(cfg.samples, d, generator=g, dtype=f64)
    C = torch.randn(cfg.samples, cfg.context, d, generator=g, dtype=f64)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=f64))
    scale = math.sqrt(cfg.beta)
    teacher = [scale * Q, scale * Q, torch.randn(d, d, generator=g, dtype=f64) / math.sqrt(d)]
    Y = _attention(X, C, *(w[None] for w in teacher))[0]
    L = len(cfg.lams)
    W = [
        (cfg.init * torch.randn(d, d, generator=g, dtype=f64)).expand(L, d, d).clone().requires_grad_()
        for _ in range(3)
    ]
    lam = torch.tensor(cfg.lams, dtype=f64)[:, None, None]
    lrs: list[float | torch.Tensor] = [cfg.eta_qk, cfg.eta_qk, lam * cfg.eta_qk]
    history = []
    for t in range(cfg.steps + 1):
        loss = 0.5 * (_attention(X, C, *W) - Y).pow(2).sum(-1).mean(-1)  # (L,)
        history.append(torch.stack([w.detach().flatten(1).norm(dim=1) for w in W] + [loss.detach()], -1))
        if t == cfg.steps:
            break
        grads = torch.autograd.grad(loss.sum(), W)
        with torch.no_grad():
            for w, grad, lr in zip(W, grads, lrs):
                w -= lr * grad
    return torch.stack(history, 1).numpy()


def first_reach(norms: np.ndarray, frac: float) -> int:
    """First step at which a norm curve reaches frac times its final value."""
    return int(np.argmax(norms >= frac * norms[-1]))


def check(cfg: Config) -> None:
    """Reject values that make no sense before any work is done."""
    if not cfg.lams or min(cfg.lams) <= 0:
        raise ValueError(f"lams={cfg.lams} must be a non-empty list of positive ratios")
    if not 0 < cfg.frac < 1:
        raise ValueError(f"frac={cfg.frac} must be in (0, 1)")
    for key in ("steps", "dim", "context", "samples"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be a positive integer")
    if min(cfg.eta_qk, cfg.init, cfg.beta) <= 0:
        raise ValueError("eta_qk, init and beta must be positive")


def _figure(cfg: Config, hist: np.ndarray, q_steps: list[int]) -> Figure:
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    steps = np.arange(hist.shape[1])
    for i, name in enumerate(("W_q", "W_k", "W_v")):
        axes[0].plot(steps, hist[0, :, i], label=f"||{name}||", ls="--" if name == "W_k" else "-")
    axes[0].axvline(q_steps[0], color="grey", lw=0.8, ls=":")
    axes[0].set(
        xlabel="GD step", ylabel="Frobenius norm", title=f"lambda={cfg.lams[0]:g}: W_v first, then W_q, W_k"
    )
    axes[0].legend()
    for j, lam in enumerate(cfg.lams):
        axes[1].plot(steps, hist[j, :, 0], color=f"C{j}", label=f"||W_q||, lambda={lam:g}")
        axes[1].plot(steps, hist[j, :, 2], color=f"C{j}", ls=":", lw=1)
        axes[1].axvline(q_steps[j], color=f"C{j}", lw=0.8, ls="--")
        axes[2].semilogy(steps, hist[j, :, 3], color=f"C{j}", label=f"lambda={lam:g}")
    axes[1].set(xlabel="GD step", title=f"dashed: ||W_q|| reaches {cfg.frac:g} x final (dotted: ||W_v||)")
    axes[1].legend(fontsize=8)
    axes[2].set(xlabel="GD step", ylabel="training loss", title=f"eta_QK={cfg.eta_qk:g}, eta_V=lambda*eta_QK")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def run(cfg: Config, out: Path) -> str:
    """Train once per lambda, measure the stage lengths, write files; return the report."""
    hist = train(cfg)
    q_steps = [first_reach(h[:, 0], cfg.frac) for h in hist]
    v_steps = [first_reach(h[:, 2], cfg.frac) for h in hist]
    by_lambda = [q for _, q in sorted(zip(cfg.lams, q_steps))]
    monotone = all(a > b for a, b in zip(by_lambda, by_lambda[1:]))
    rows = [
        dict(lam=lam, step=t, norm_q=h[t, 0], norm_k=h[t, 1], norm_v=h[t, 2], loss=h[t, 3])
        for lam, h in zip(cfg.lams, hist)
        for t in range(hist.shape[1])
    ]
    stage = [
        dict(
            lam=lam,
            q_step=q,
            v_step=v,
            q_at_v_step=float(h[v, 0]),
            final_norm_q=float(h[-1, 0]),
            final_norm_v=float(h[-1, 2]),
            initial_loss=float(h[0, 3]),
            final_loss=float(h[-1, 3]),
        )
        for lam, q, v, h in zip(cfg.lams, q_steps, v_steps, hist)
    ]
    summary = dict(
        config=vars(cfg),
        stage_end=f"first step with ||W_q||_F >= {cfg.frac:g} x its final norm",
        stages=stage,
        strictly_earlier_with_larger_lambda=monotone,
    )
    files = [write_csv(out / "stages.csv", rows), write_json(out / "stages.json", summary)]
    files += save_figure(_figure(cfg, hist, q_steps), out, "stages", compact=True)
    lines = [
        f"Case 1: stage 1 ends when ||W_q||_F first reaches {cfg.frac:g} x its final norm "
        f"(eta_QK={cfg.eta_qk:g} fixed, eta_V = lambda * eta_QK, {cfg.steps} GD steps)",
        text_table(
            ["lambda", "W_v step", "W_q step", "||W_q|| at W_v step", "final loss"],
            [[s["lam"], s["v_step"], s["q_step"], s["q_at_v_step"], s["final_loss"]] for s in stage],
        ),
        f"larger lambda -> strictly earlier stage 2: {monotone}",
        "files: " + ", ".join(str(f) for f in files),
    ]
    return "\n".join(lines)
