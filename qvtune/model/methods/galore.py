"""GaLore as the paper authors ran it (EfficientFT's run_galore.py): the tuned matrices train in full
with galore-torch's GaLoreAdamW, which keeps their Adam moments in a rank-r projection of the
gradient; their biases and the head train as plain AdamW in the same optimizer. Every optimizer group
keeps its run group's rate (qk, v, o, mlp, head), so eta_V / eta_QK stays lambda.

A checkpoint holds each projector's matrix as a tensor (not galore-torch's object), which the loaded
optimizer rebuilds its projectors from, on the parameters' device: a run resumes exactly."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from qvtune.config.methods import method_options
from qvtune.config.schema import OptimConfig, RunConfig
from qvtune.model.methods.base import TrainData, Training, chosen
from qvtune.model.methods.full import Full
from qvtune.model.methods.groups import ParamGroup
from qvtune.model.weights import tuned_modules


class Galore(Full):
    name = "galore"

    def attach(
        self,
        model: nn.Module,
        cfg: RunConfig,
        tuned: dict[str, list[str]],
        heads: list[str],
        data: Optional[TrainData],
    ) -> nn.Module:
        import galore_torch  # noqa: F401  (pip install 'qvtune[galore]'): fails here, before training

        return super().attach(model, cfg, tuned, heads, data)

    def training(self, model: nn.Module, cfg: RunConfig) -> Training:
        names = chosen(tuned_modules(model, cfg.targets, cfg.layers))
        matrices = {id(model.get_submodule(name).weight) for name in names}
        return GaloreTraining(method_options(cfg), matrices)


class GaloreTraining(Training):
    def __init__(self, options: Any, matrices: set[int]) -> None:
        self.options, self.matrices = options, matrices  # id() of the tuned weight matrices

    def optimizer(self, groups: list[ParamGroup], optim: OptimConfig) -> torch.optim.Optimizer:
        from galore_torch import GaLoreAdamW

        projection = {
            "rank": int(self.options.rank),
            "update_proj_gap": int(self.options.update_proj_gap),
            "scale": float(self.options.scale),
            "proj_type": str(self.options.proj_type),
        }
        param_groups: list[dict[str, Any]] = []
        for g in groups:
            matrices = [p for _, p in g.params if id(p) in self.matrices]
            rest = [p for _, p in g.params if id(p) not in self.matrices]
            if matrices:
                param_groups.append({"params": matrices, "lr": g.lr, "name": g.name, **projection})
            if rest:
                param_groups.append({"params": rest, "lr": g.lr, "name": g.name})
        optimizer = GaLoreAdamW(
            param_groups,
            betas=(float(optim.betas[0]), float(optim.betas[1])),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            no_deprecation_warning=True,
        )
        optimizer.register_state_dict_post_hook(_projectors_saved)
        optimizer.register_load_state_dict_post_hook(_projectors_loaded)
        return optimizer


def _projectors_saved(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Each projector as its matrix (a tensor, or GaLore's pair for proj_type=full): what a checkpoint
    can hold, and what loading moves to the parameters' device. The live state is left as it is."""
    state = {}
    for index, values in state_dict["state"].items():
        projector = values.get("projector")
        state[index] = values if projector is None else {**values, "projector": projector.ortho_matrix}
    return {**state_dict, "state": state}


def _projectors_loaded(optimizer: torch.optim.Optimizer) -> None:
    """The projectors rebuilt from their saved matrices and their group's settings."""
    from galore_torch.galore_projector import GaLoreProjector

    for group in optimizer.param_groups:
        if "rank" not in group:
            continue
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "projector" in state and not isinstance(state["projector"], GaLoreProjector):
                projector = GaLoreProjector(
                    group["rank"],
                    update_proj_gap=group["update_proj_gap"],
                    scale=group["scale"],
                    proj_type=group["proj_type"],
                )
                projector.ortho_matrix = state["projector"]
                state["projector"] = projector
