"""The fine-tuning methods as the config stage knows them: one light object per method with its
options (a dataclass; `conf/method/NAME.yaml` holds their values), what it accepts, whether it has a
rank and LoRA B matrices, whether it packs (and with which of PackedLinear's adapters), and what its
update norm measures. No torch here: validation, run keys, the sweeper and the collector read only
this; qvtune.model.methods attaches each method under the same names.

`rank`, `alpha` and `dropout` are also top-level shorthands: `rank=16` is `method.rank=16` (every
sweep file and recipe sets them at the top level, and run keys hash them under those names). The
method files take a shorthand that is given (`${shorthand:rank,8}`: register_configs registers the
resolver); validate refuses both spellings given with different values.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Optional

SHORTHANDS = ("rank", "alpha", "dropout")

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")  # galore-torch's GaLoreProjector


def _positive(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(x) and x > 0


@dataclass
class NoOptions:
    def problems(self) -> list[str]:
        return []


@dataclass
class LoraOptions:
    rank: int = 8  # r: the adapters' inner dimension
    alpha: Optional[float] = None  # the scale is alpha / r (rslora: alpha / sqrt(r)); None: alpha = r
    dropout: float = 0.0  # on the adapters' input

    def problems(self) -> list[str]:
        errors = []
        if self.rank < 1:
            errors.append(f"rank={self.rank}: expected an integer >= 1")
        if self.alpha is not None and not _positive(self.alpha):
            errors.append(f"alpha={self.alpha}: expected a finite positive number")
        if not 0 <= self.dropout < 1:
            errors.append(f"dropout={self.dropout}: expected a number in [0, 1)")
        return errors


@dataclass
class EvaOptions(LoraOptions):
    rho: float = 2.0  # a layer may get up to rho x rank (EVA spreads the budget by explained variance)
    batches: int = 4  # the run's first training batches (in its own order) that EVA's SVD reads

    def problems(self) -> list[str]:
        errors = super().problems()
        if not (math.isfinite(self.rho) and self.rho >= 1):
            errors.append(f"method.rho={self.rho}: expected a number >= 1 (a layer's most rank / rank)")
        if self.batches < 1:
            errors.append(f"method.batches={self.batches}: expected an integer >= 1 (training batches)")
        return errors


@dataclass
class AdaLoraOptions(LoraOptions):
    """rank is AdaLoRA's target_r, the average rank its budget ends at; peft's other defaults, with its
    step counts (tinit, tfinal) as fractions of the run's steps (the AdaLoRA paper's GLUE runs: about
    0.1 and 0.5) and init_r as peft's 12 for a target of 8 scaled with the rank."""

    init_r: Optional[int] = None  # every matrix's rank before pruning; None: 1.5 x rank
    tinit: float = 0.1  # the fraction of the run's steps before the budget starts to shrink
    tfinal: float = 0.5  # the fraction at the end that trains the final ranks
    deltaT: int = 1  # steps between two reallocations of the budget
    orth_reg_weight: float = 0.5  # the orthogonality penalty on A and B, added to the training loss

    @property
    def initial_rank(self) -> int:
        return self.init_r if self.init_r is not None else round(1.5 * self.rank)

    def problems(self) -> list[str]:
        errors = super().problems()
        if self.init_r is not None and self.init_r < self.rank:
            errors.append(
                f"method.init_r={self.init_r}: expected an integer >= rank ({self.rank}), the rank AdaLoRA "
                "prunes down from, or null for 1.5 x rank"
            )
        fractions_ok = 0 <= self.tinit and 0 <= self.tfinal and self.tinit + self.tfinal < 1
        if not fractions_ok:
            errors.append(
                f"method.tinit={self.tinit}, method.tfinal={self.tfinal}: expected fractions of the run's "
                "steps >= 0 with tinit + tfinal < 1 (the budget shrinks in between)"
            )
        if self.deltaT < 1:
            errors.append(f"method.deltaT={self.deltaT}: expected an integer >= 1 (steps)")
        if not (math.isfinite(self.orth_reg_weight) and self.orth_reg_weight >= 0):
            errors.append(f"method.orth_reg_weight={self.orth_reg_weight}: expected a finite number >= 0")
        return errors


@dataclass
class GaloreOptions:
    """The settings of the paper authors' GaLore runs (EfficientFT's sh/roberta_galore.sh)."""

    rank: int = 8  # the rank of the gradient's projection
    update_proj_gap: int = 500  # steps between two SVDs of the gradient
    scale: float = 4.0  # the projected update's scale
    proj_type: str = "std"  # PROJ_TYPES: which side of the gradient is projected

    def problems(self) -> list[str]:
        errors = []
        if self.rank < 1:
            errors.append(f"rank={self.rank}: expected an integer >= 1")
        if self.update_proj_gap < 1:
            errors.append(f"method.update_proj_gap={self.update_proj_gap}: expected an integer >= 1 (steps)")
        if not _positive(self.scale):
            errors.append(f"method.scale={self.scale}: expected a finite positive number")
        if self.proj_type not in PROJ_TYPES:
            errors.append(f"method.proj_type={self.proj_type!r}: expected one of {', '.join(PROJ_TYPES)}")
        return errors


class Method:
    """A method as the config stage sees it (one subclass per method, registered in METHODS)."""

    name = ""
    Options: type = NoOptions
    norm = ""  # what its update norm (update_norm/<type>) measures
    # the adapter of qvtune.model.pack.PackedLinear a packed member uses ("lora", "dora"); None: the
    # method is not packed, for the one-line reason in pack_refusal
    packed_layer: Optional[str] = None
    pack_refusal = ""
    lora_b = False  # it trains LoRA B matrices, whose rate LoRA+ (optim.loraplus_ratio) scales
    requires = ""  # a module beyond qvtune's dependencies it imports (its extra installs it)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.Options))

    @property
    def has_rank(self) -> bool:
        return "rank" in self.option_names


class Full(Method):
    """The chosen matrices' weights and biases."""

    name = "full"
    norm = "||W - W_0||: the change of the tuned matrices"
    pack_refusal = "method=full is not packed (every member would hold its own copy of the tuned matrices)"


class Lora(Method):
    """W + s B A with s = alpha / r, B = 0 at the start (peft LoRA)."""

    name = "lora"
    Options = LoraOptions
    norm = "||s B A||: the adapters' product"
    packed_layer: Optional[str] = "lora"
    lora_b = True


class Dora(Lora):
    """LoRA's update as a direction, with a learned magnitude per output row (peft use_dora)."""

    name = "dora"
    norm = "||s B A||: the direction update, not the magnitude's rescaling"
    packed_layer = "dora"


class RsLora(Lora):
    """LoRA scaled by alpha / sqrt(r) instead of alpha / r (peft use_rslora)."""

    name = "rslora"
    norm = "||s B A|| with s = alpha / sqrt(r)"


class Pissa(Lora):
    """LoRA started from W's top-r singular triplets; the base keeps the residual W - s B_0 A_0."""

    name = "pissa"
    norm = "||s (B A - B_0 A_0)||: from its starting point (the base weights were rewritten)"
    packed_layer = None
    pack_refusal = (
        "method=pissa is not packed (it rewrites the base weights it adapts, which a pack's members share)"
    )


class OLora(Pissa):
    """LoRA started from W's QR decomposition; the base keeps the residual W - s B_0 A_0."""

    name = "olora"
    pack_refusal = (
        "method=olora is not packed (it rewrites the base weights it adapts, which a pack's members share)"
    )


class Eva(Lora):
    """LoRA whose A comes from an SVD of the layer inputs on the run's first batches."""

    name = "eva"
    Options = EvaOptions
    norm = "||s B A||: the adapters' product (B = 0 at the start)"
    packed_layer = None
    pack_refusal = (
        "method=eva is not packed (its adapters are made from the training batches, which a pack's "
        "members are not given, with ranks that differ from layer to layer)"
    )


class AdaLora(Method):
    """SVD-form adapters B diag(E) A whose rank budget is reallocated as the run trains."""

    name = "adalora"
    Options = AdaLoraOptions
    norm = "||s / init_r B diag(E) A||: the SVD-form update, pruned triplets counting 0"
    pack_refusal = (
        "method=adalora is not packed (its rank budget is reallocated by each run's own training hook)"
    )
    lora_b = True


class IA3(Method):
    """A learned scale per output row of each matrix (MLP matrices: per input column)."""

    name = "ia3"
    norm = "||diag(l - 1) W|| (MLP: ||W diag(l - 1)||): the change of the effective matrix"
    pack_refusal = "method=ia3 is not packed (a pack's layer knows LoRA and DoRA adapters only)"


class Galore(Method):
    """The full matrices, their Adam moments kept in a rank-r projection of the gradient."""

    name = "galore"
    Options = GaloreOptions
    norm = "||W - W_0||: the change of the tuned matrices"
    pack_refusal = (
        "method=galore is not packed (it trains the full matrices: each member would hold its own copy)"
    )
    requires = "galore_torch"  # pip install 'qvtune[galore]'


# Every method by name, in the order the docs and errors list them.
METHODS: dict[str, Method] = {
    m.name: m for m in (Full(), Lora(), Dora(), RsLora(), Pissa(), OLora(), Eva(), AdaLora(), IA3(), Galore())
}


def method_options(cfg: Any) -> Any:
    """The chosen method's options: method.<name> where set, else the top-level shorthand (a record
    written before the options moved into the method group has only that), else the default."""
    method = METHODS[cfg.method.name]
    values = {}
    for name in method.option_names:
        value = getattr(cfg.method, name, None)
        if value is None and name in SHORTHANDS:
            value = getattr(cfg, name, None)
        if value is not None:
            values[name] = value
    return method.Options(**values)


def method_problems(cfg: Any) -> list[str]:
    """Every problem with the method's options, one line each: an option the method does not have, a
    shorthand that disagrees with method.*, and the options' own checks."""
    method = METHODS.get(cfg.method.name)
    if method is None:
        return []  # validate() names the method itself
    errors = []
    for name in (n for n in cfg.method if n != "name"):  # every method's options: the schema's union
        value = getattr(cfg.method, name, None)
        if value is not None and name not in method.option_names:
            have = ", ".join(method.option_names) or "none"
            errors.append(f"method.{name}={value}: method={method.name} has no {name} (its options: {have})")
    for name in SHORTHANDS:
        given, inside = getattr(cfg, name, None), getattr(cfg.method, name, None)
        if given is not None and inside is not None and given != inside:
            errors.append(f"{name}={given} and method.{name}={inside} disagree: give one of them")
    if method.requires and importlib.util.find_spec(method.requires) is None:
        errors.append(
            f"method={method.name}: {method.requires} is not installed: pip install 'qvtune[{method.name}]'"
        )
    return errors + method_options(cfg).problems()


def fold_options(cfg: Any) -> None:
    """Write the method's options into method.* and their top-level shorthands (None where the method
    has no such option), so that a run's record says under both names what it ran with: readers of
    earlier records (the collector) take rank and alpha from the top level. Validated configs only."""
    options = dataclasses.asdict(method_options(cfg))
    for name, value in options.items():
        setattr(cfg.method, name, value)
    for name in SHORTHANDS:
        setattr(cfg, name, options.get(name))


def shorthand(key: str, default: Any, *, _root_: Any) -> Any:
    """The OmegaConf resolver `${shorthand:rank,8}` of the method files: the top-level `rank` where it
    is given, else the method's default."""
    value = _root_.get(key)
    return default if value is None else value
