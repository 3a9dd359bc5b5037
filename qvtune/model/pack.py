"""Packed runs: K LoRA/DoRA runs that differ only in learning rates or targets (any weight types, LoRA+
included: each member's groups are its lone run's) train as one model, on one frozen base, in one
forward pass over their concatenated batches.

Why qvtune's own layer and not PEFT's: PEFT trains one adapter at a time (its mixed-batch forward
refuses training mode: "Cannot pass `adapter_names` when the model is in training mode"), and the
packs of a learning-rate grid need K adapters and K heads, each applied to its own slice of one
batch. So PEFT stays the method of a lone run, and here it still initialises every member: each
member's adapters and head are made by PEFT on the shared base from the random state a lone run
would have (then PEFT is unloaded), so a member starts exactly where its lone run starts, with
its tensors under the names its lone run gives them (its checkpoint and parameter groups are a
lone run's). What this module adds is small: `PackedLinear` (a frozen nn.Linear plus one LoRA or
DoRA adapter per member, computed as PEFT computes it, batched with bmm), `PackedHead` (one head
per member) and `PackedModel` (replicates the batch, returns every member's loss and logits).

Text tasks (a causal LM trained on its answer tokens): there is no head, the LM head stays frozen
and shared, and each member's loss is its lone run's (`answer_losses`). A member writes and ranks
its dev answers alone (`PackedModel.alone`): transformers' `generate` on the packed base with only
that member's slot active, so its batches, padding and stops are its lone run's.

The batch of a pack holds one copy of the data per active member, slot s for member
`active[s]`: a member that diverged leaves `active` and costs nothing from then on.

Dropout: the runs of a pack that differ only in learning rates draw the same random numbers alone
(same seed, same initialisation, same batches), so each of them draws the same dropout masks. A
pack draws each mask once, at a lone batch's shape and with the call a lone run makes, and applies
it to every member's slot (`SharedDropout`, and the same in `PackedLinear`), or runs the step
that draws it on each slot from the same random state (`PackedHead`; `per_member_attention`, where
SDPA draws the attention mask inside its kernel, for every family that keeps its attention in one
module: a `dropout` module in BERT and RoBERTa, a float in Llama and Mistral): each member sees the
masks of its lone run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from qvtune.config.methods import METHODS, method_options
from qvtune.config.schema import RunConfig
from qvtune.config.weight_types import QKV
from qvtune.data.text import IGNORE
from qvtune.model.load import ATTENTION_DROPOUT_KEYS
from qvtune.model.methods import UpdateNorms, apply_method, owners
from qvtune.model.weights import weight_type


@dataclass
class Slots:
    """Which members the current batch holds, in order: shared by every packed layer of a model."""

    active: list[int] = field(default_factory=list)


@dataclass
class Adapter:
    """One member's LoRA (DoRA: and magnitude) tensors on one projection, as PEFT made them."""

    A: nn.Parameter  # r x d_in
    B: nn.Parameter  # d_out x r
    scaling: float
    magnitude: Optional[nn.Parameter] = None  # DoRA's per-row magnitude, d_out


@dataclass
class MemberWeights:
    """What a member trains: (name in its lone PEFT model, tensor, owning group) in that model's
    order, and its adapters per base module name."""

    named: list[tuple[str, nn.Parameter, str]]
    adapters: dict[str, Adapter]
    heads: dict[str, nn.Module]


PER_MEMBER_SDPA = "qvtune_per_member_sdpa"  # the attention implementation a pack with attention dropout uses

PACK_SLOTS = "qvtune_pack_slots"  # the attribute by which an attention module knows its pack's slots


def same_random_state(device: torch.device, again: bool) -> contextlib.AbstractContextManager[Any]:
    """With `again`, the random state is put back afterwards: the next member draws what this one drew."""
    if not again:
        return contextlib.nullcontext()
    cpu = device.type == "cpu"
    return torch.random.fork_rng([] if cpu else [device], device_type=device.type)


def shared_dropout(x: torch.Tensor, p: float, members: int) -> torch.Tensor:
    """Dropout on a pack's batch (`members` slots along the first dimension) with one mask, drawn as
    F.dropout draws it on one slot: the mask each member's lone run draws at this point."""
    if p == 0:
        return x
    mask = F.dropout(x.new_ones(x.shape[0] // members, *x.shape[1:]), p)
    return (x.unflatten(0, (members, -1)) * mask).flatten(0, 1)


class SharedDropout(nn.Module):
    """The base's nn.Dropout in a pack (see the module docstring); `p` is kept for the models that
    read it (BERT passes its attention dropout's `p` to the attention kernel)."""

    def __init__(self, p: float, slots: Slots) -> None:
        super().__init__()
        self.p, self.slots = p, slots

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shared_dropout(x, self.p, len(self.slots.active)) if self.training else x


def per_member_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention; with attention dropout it runs once per member's slot, each
    from the same random state, so each draws the mask its lone run's kernel draws."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    slots = getattr(module, PACK_SLOTS, None)  # set by PackedModel on the modules holding q, k, v
    if not dropout or not isinstance(slots, Slots):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, **kwargs)
    n = len(slots.active)
    masks: Any = [attention_mask] * n  # a mask that broadcasts over the batch, or none
    if attention_mask is not None and len(attention_mask) == len(query):
        masks = attention_mask.chunk(n)
    out = []
    for i, (q, k, v, mask) in enumerate(zip(query.chunk(n), key.chunk(n), value.chunk(n), masks)):
        with same_random_state(query.device, again=i < n - 1):
            out.append(sdpa_attention_forward(module, q, k, v, mask, dropout=dropout, **kwargs)[0])
    return torch.cat(out), None


def use_per_member_attention(base: nn.Module) -> None:
    """Registers `per_member_attention` with transformers (SDPA's masks) and lets `base` use it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PER_MEMBER_SDPA, per_member_attention)
    AttentionMaskInterface.register(PER_MEMBER_SDPA, sdpa_mask)
    cast(Any, base).set_attn_implementation(PER_MEMBER_SDPA)


class PackedLinear(nn.Module):
    """A frozen linear layer with each member's adapter applied to the member's slot of the batch.

    LoRA: W x + s B A dropout(x). DoRA as PEFT computes it (its section 4.3: the row norm is
    detached): with n = ||W + s B A||_row and g = m / n, W x + (g - 1) W x + g s B A x, the bias
    kept once; with dropout, W x is recomputed on the dropped-out input for the DoRA term.
    """

    def __init__(self, base: nn.Linear, slots: Slots, dropout: float, scaling: float) -> None:
        super().__init__()
        self.base = base
        self.slots = slots
        self.dropout = dropout
        self.scaling = scaling  # alpha / r: the members share rank and alpha
        self.adapters: dict[int, Adapter] = {}
        self._params = nn.ParameterList()  # registers the members' tensors (device moves, state)
        self._index: dict[tuple[int, ...], torch.Tensor] = {}  # slot indices on the device, made once

    def add(self, member: int, adapter: Adapter) -> None:
        assert adapter.scaling == self.scaling, "the members of a pack share rank and alpha"
        self.adapters[member] = adapter
        self._params.extend(
            [adapter.A, adapter.B] + ([adapter.magnitude] if adapter.magnitude is not None else [])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        active = self.slots.active
        slots = tuple(s for s, m in enumerate(active) if m in self.adapters)
        if not slots:
            return result
        chosen = [self.adapters[active[s]] for s in slots]
        every = len(slots) == len(active)
        out = result.unflatten(0, (len(active), -1))  # (members, batch, ..., d_out)
        xs = x.unflatten(0, (len(active), -1))
        xs = (xs if every else xs[list(slots)]).to(chosen[0].A.dtype)
        if self.training and self.dropout:  # one mask for every member, as PEFT draws it alone
            xs = shared_dropout(xs.flatten(0, 1), self.dropout, len(slots)).view(xs.shape)
        xs = xs.flatten(1, -2)  # (k, rows, d_in)
        a = torch.stack([c.A for c in chosen])  # (k, r, d_in)
        b = torch.stack([c.B for c in chosen])  # (k, d_out, r)
        lora = (
            torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2)) * self.scaling
        )  # (k, rows, d_out)
        if chosen[0].magnitude is not None:
            lora = self._dora(xs, lora, a, b, chosen, (out if every else out[list(slots)]).flatten(1, -2))
        delta = lora.view(len(slots), *out.shape[1:]).to(result.dtype)
        if every:
            return (out + delta).flatten(0, 1)
        if slots not in self._index:
            self._index[slots] = torch.tensor(slots, device=out.device)
        return out.index_add(0, self._index[slots], delta).flatten(0, 1)

    def _dora(
        self,
        xs: torch.Tensor,
        lora: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        chosen: list[Adapter],
        base_out: torch.Tensor,
    ) -> torch.Tensor:
        """The DoRA term added to the layer's output, from the LoRA term s B A x and W x + bias."""
        weight = self.base.weight.to(xs.dtype)
        norm = torch.linalg.norm(
            weight + self.scaling * torch.bmm(b, a).detach(), dim=2
        ).detach()  # (k, d_out)
        magnitude = torch.stack([c.magnitude for c in chosen if c.magnitude is not None])
        gain = (magnitude / norm).unsqueeze(1)  # (k, 1, d_out)
        if self.training and self.dropout:
            plain = xs @ weight.T  # W x on the dropped-out input
        else:
            bias = self.base.bias
            plain = base_out.to(xs.dtype) - (bias.to(xs.dtype) if bias is not None else 0)
        return (gain - 1) * plain + gain * lora


class PackedHead(nn.Module):
    """One classification head per member, each on its member's slot of the batch; in training every
    head starts from the same random state, so a head's dropout draws the mask of its lone run."""

    def __init__(self, heads: dict[int, nn.Module], slots: Slots) -> None:
        super().__init__()
        self.members = list(heads)
        self.heads = nn.ModuleList(heads.values())
        self.slots = slots

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        chunks = x.unflatten(0, (len(self.slots.active), -1))
        heads = dict(zip(self.members, self.heads))
        out = []
        for i, (m, chunk) in enumerate(zip(self.slots.active, chunks)):
            with same_random_state(x.device, again=self.training and i < len(chunks) - 1):
                out.append(heads[m](chunk, *args, **kwargs))
        return torch.cat(out)


class PackedModel(nn.Module):
    """The frozen base with packed layers: `forward` returns each listed member's mean loss and
    logits, as the lone model's `loss` and `logits` (cross-entropy; mean squared error for one label;
    `text`: a causal LM's answer loss, as qvtune.model.runs.LoneRun computes it)."""

    def __init__(
        self, base: nn.Module, members: list[MemberWeights], dropout: float, text: bool = False
    ) -> None:
        super().__init__()
        self.base = base
        self.members = members
        self.text = text
        self.slots = Slots(list(range(len(members))))
        layers: dict[str, PackedLinear] = {}
        heads: dict[str, dict[int, nn.Module]] = {}
        for i, member in enumerate(members):
            for name, adapter in member.adapters.items():
                if name not in layers:
                    linear = base.get_submodule(name)
                    assert isinstance(linear, nn.Linear), f"{name} is a tuned linear module"
                    layers[name] = PackedLinear(linear, self.slots, dropout, adapter.scaling)
                layers[name].add(i, adapter)
            for name, head in member.heads.items():
                heads.setdefault(name, {})[i] = head
        for name, layer in layers.items():
            _replace(base, name, layer)
        for name, member_heads in heads.items():
            _replace(base, name, PackedHead(member_heads, self.slots))
        for name, module in list(base.named_modules()):
            inside_head = any(name.startswith(f"{head}.") for head in heads)  # PackedHead does those
            if isinstance(module, nn.Dropout) and not inside_head:
                _replace(base, name, SharedDropout(module.p, self.slots))
        config = cast(Any, base).config
        attention_dropout = any(getattr(config, key, 0) for key in ATTENTION_DROPOUT_KEYS)
        if attention_dropout and config._attn_implementation == "sdpa":
            for name, _ in base.named_modules():
                if weight_type(name) in QKV:  # its parent computes the attention
                    setattr(base.get_submodule(name.rpartition(".")[0]), PACK_SLOTS, self.slots)
            use_per_member_attention(base)
        for member in members:
            for _, p, _ in member.named:
                p.requires_grad_(True)

    def forward(
        self, members: list[int], labels: torch.Tensor, **inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.slots.active = members
        n = len(members)
        repeated = {k: v.repeat(n, *[1] * (v.dim() - 1)) for k, v in inputs.items()}
        if self.text:  # labels: the answer's token ids, (batch, length); no logits are returned
            losses = answer_losses(self.base, labels.repeat(n, 1), **repeated).view(n, -1).mean(1)
            return losses, losses.new_empty(n, 0)
        logits = self.base(**repeated).logits
        logits = logits.unflatten(0, (n, -1))  # (members, batch, labels)
        if logits.shape[-1] == 1:
            losses = (logits.squeeze(-1).float() - labels.float()).pow(2).mean(1)
        else:
            flat = logits.flatten(0, 1).float()
            losses = F.cross_entropy(flat, labels.repeat(n), reduction="none").view(n, -1).mean(1)
        return losses, logits

    def alone(self, member: int) -> PackedMember:
        """The member as a lone text model (qvtune.train.generate): only its slot active."""
        return PackedMember(self, member)

    def lone_size(self, member: int) -> int:
        """The parameters of the member's lone PEFT model: the frozen base (its head kept frozen
        beside the trained copy) and the member's trainable tensors."""
        frozen = sum(p.numel() for p in self.base.parameters() if not p.requires_grad)
        head = sum(p.numel() for h in self.members[member].heads.values() for p in h.parameters())
        return frozen + head + sum(p.numel() for _, p, _ in self.members[member].named)

    def update_norms(self, member: int) -> UpdateNorms:
        adapters = self.members[member].adapters
        return UpdateNorms(
            [(kind, a.A, a.B, a.scaling) for name, a in adapters.items() if (kind := weight_type(name))]
        )


class PackedMember:
    """One member of a text pack with a lone run's `lm` and `generate`: the pack's base runs with
    only this member's slot, so every call (its KV cache and transformers' generation included) is
    the member's lone model on the same batch."""

    def __init__(self, pack: PackedModel, member: int) -> None:
        self.pack, self.member = pack, member

    def lm(self, **inputs: Any) -> Any:
        """The member's causal LM forward (transformers' output: logits, KV cache)."""
        self.pack.slots.active = [self.member]
        return self.pack.base(**inputs)

    def generate(self, **kwargs: Any) -> torch.Tensor:
        """transformers' generation (KV cache) with this member's adapters."""
        self.pack.slots.active = [self.member]
        return cast(Any, self.pack.base).generate(**kwargs)


def answer_logprobs(
    model: Callable[..., Any], labels: torch.Tensor, **inputs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `labels` (token ids on the answer, IGNORE elsewhere): the sum of log p(token) over its
    labelled positions, each token predicted from the position before it, and how many there are.
    `model(**inputs)` computes the logits of those positions only (transformers' `logits_to_keep`
    mask): with a vocabulary of 50k the others would be most of a forward pass's cost and memory.
    `inputs` may carry a KV cache and positions: the rows then continue the sequences it holds."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    logits = model(**inputs, logits_to_keep=keep).logits
    if logits.dim() == 3:  # a model that does not take a mask: every position's logits
        logits = logits[keep]
    logp = -F.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction="none")
    rows = keep.nonzero()[:, 0]  # row-major, as the mask selects the positions
    total = torch.zeros(len(labels), dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)
    return total, keep.sum(1)


def answer_losses(model: Callable[..., Any], labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
    """Each row's loss: its mean negative log-probability over its answer tokens. A batch's loss is the
    mean of these, so every example weighs the same and a batch split into micro-batches
    (max_batch_tokens) has the same gradient."""
    total, count = answer_logprobs(model, labels, **inputs)
    return -(total / count.clamp(min=1))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def member_of(base: nn.Module, cfg: RunConfig, rng: torch.Tensor) -> MemberWeights:
    """A member's adapters and head, made by PEFT on `base` from the random state `rng` that its
    lone run has at the same point (after loading the model); PEFT is unloaded again."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    torch.set_rng_state(rng)
    peft_model = apply_method(base, cfg)
    group = owners(peft_model)
    named = [(n, p, group[id(p)]) for n, p in peft_model.named_parameters() if p.requires_grad]
    prefix = "base_model.model."
    adapters, heads = {}, {}
    for name, module in peft_model.named_modules():
        layer = cast(Any, module)  # PEFT's layers: torch types their attributes as Tensor | Module
        if isinstance(module, LoraLayer) and "default" in layer.lora_A:
            dora = METHODS[cfg.method.name].packed_layer == "dora"  # its PackedLinear adapter
            adapters[name.removeprefix(prefix)] = Adapter(
                layer.lora_A["default"].weight,
                layer.lora_B["default"].weight,
                float(layer.scaling["default"]),
                layer.lora_magnitude_vector["default"].weight if dora else None,
            )
        elif isinstance(module, ModulesToSaveWrapper):
            heads[name.removeprefix(prefix)] = layer.modules_to_save["default"]
    cast(Any, peft_model).unload()
    assert adapters, "a packed member has adapters (validate(): LoRA or DoRA)"
    return MemberWeights(named, adapters, heads)


def build_pack(base: nn.Module, configs: list[RunConfig]) -> PackedModel:
    """The pack of `configs` (LoRA or DoRA, the same but for learning rates and targets) on `base`,
    a freshly loaded model: every member starts from the state its lone run starts from."""
    rng = torch.get_rng_state()
    members = [member_of(base, cfg, rng) for cfg in configs]
    base.requires_grad_(False)
    dropout = float(method_options(configs[0]).dropout)  # the members share the method's options
    return PackedModel(base, members, dropout, configs[0].task.format == "text")
