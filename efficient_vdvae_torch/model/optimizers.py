"""Adamax / Adam / RAdam with decoupled, masked weight decay (SPEC.md section 6).

torch.optim.Adamax already computes the originals' Adamax update (eps inside
the max, bias correction on the first moment only). Decoupled weight decay
adds `l2_weight * param` to the update after the Adam-family scaling, i.e.
`param -= lr * l2_weight * param`: torch's Adam and RAdam do exactly this
with `decoupled_weight_decay=True`; Adamax gets the same rule below.

All three run torch's multi-tensor (`foreach`) path on every device, not only
on CUDA: a few hundred small parameters make the per-tensor Python loop the
cost, and the foreach path computes the same values (bitwise for Adamax and Adam).
"""
from __future__ import annotations

import torch
from torch import nn

from efficient_vdvae_torch.model.conv2d import Conv2d
from hparams.schema import OPTIMIZERS, unknown_choice

# Convs whose kernels are never decayed (SPEC.md section 6); `projection` is a Gaussian head.
UNDECAYED_CONVS = ("input_conv", "output_conv", "skip_projection", "z_projection", "projection")


class DecoupledAdamax(torch.optim.Adamax):
    """torch's Adamax plus decoupled weight decay (per-group key "decoupled_decay_rate").

    Decaying first (param *= 1 - lr * rate) equals adding rate * param to the
    update, since the Adamax update does not depend on the parameter itself.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, decoupled_decay_rate: float = 0.0,
                 foreach: bool | None = None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0, foreach=foreach)
        for group in self.param_groups:
            group.setdefault("decoupled_decay_rate", decoupled_decay_rate)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group["decoupled_decay_rate"] and params:
                torch._foreach_mul_(params, 1.0 - group["lr"] * group["decoupled_decay_rate"])
        return super().step(closure)


def weight_decay_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): conv kernels other than UNDECAYED_CONVS are decayed."""
    decayed_ids = set()
    for name, module in model.named_modules():
        if isinstance(module, Conv2d) and name.rsplit(".", 1)[-1] not in UNDECAYED_CONVS:
            decayed_ids.add(id(module.weight))
    decayed = [p for p in model.parameters() if id(p) in decayed_ids]
    others = [p for p in model.parameters() if id(p) not in decayed_ids]
    return decayed, others


def build_optimizer(hp, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimiser; group 0 holds the decayed kernels, group 1 the rest."""
    opt = hp.optimizer
    l2_weight = hp.loss.l2_weight if hp.loss.use_weight_decay else 0.0
    decayed, others = weight_decay_split(model)
    common = dict(lr=opt.learning_rate, betas=(opt.beta1, opt.beta2), eps=opt.epsilon, foreach=True)
    if opt.type == "Adamax":
        optimizer = DecoupledAdamax([{"params": decayed, "decoupled_decay_rate": l2_weight},
                                     {"params": others, "decoupled_decay_rate": 0.0}], **common)
    elif opt.type in ("Adam", "RAdam", "Radam"):
        groups = [{"params": decayed, "weight_decay": l2_weight}, {"params": others, "weight_decay": 0.0}]
        kind = torch.optim.Adam if opt.type == "Adam" else torch.optim.RAdam
        optimizer = kind(groups, decoupled_weight_decay=True, **common)
    else:
        raise unknown_choice("optimizer.type", opt.type, OPTIMIZERS)
    optimizer.register_load_state_dict_post_hook(_keep_foreach)
    return optimizer


def _keep_foreach(optimizer: torch.optim.Optimizer) -> None:
    # load_state_dict restores every saved group key, also the implementation
    # choice of older checkpoints (foreach None: the per-tensor loop on the CPU).
    for group in optimizer.param_groups:
        group["foreach"] = True
