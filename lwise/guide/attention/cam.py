"""Grad-CAM for a layer chosen by name, batched: evaluation CAMs (GRADIA.py `GradCam.__call__`)
and training CAMs that the attention loss back-propagates through (`get_attention_map`).

GRADIA: Gao, Sun, Zhao, Hong, CSCW 2022; repository file `GRADIA.py`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "ActivationTap",
    "default_layer",
    "find_layer",
    "gradcam",
    "min_max",
    "training_cams",
]

EPS = 1e-12  # guards min-max normalisation of a constant map (GRADIA.py divides by zero there)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module `name`, relative to the model or to its wrapped network (`net.`).

    For a torchvision ResNet-50, GRADIA.py's layer (`model.layer4`, block "2") is `layer4.2`.
    """
    modules = dict(model.named_modules())
    for candidate in (name, f"net.{name}"):
        if candidate in modules and candidate:
            return modules[candidate]
    spatial = [n for n in _spatial_outputs(model, 32) if n]
    raise ValueError(
        f"no layer {name!r} in {getattr(model, 'arch', type(model).__name__)}; layers with "
        f"spatial outputs include {spatial[-8:]}"
    )


def default_layer(model: nn.Module, size: int) -> str:
    """The name of the last module (in execution order) whose output is a [B, C, H, W] map with
    H, W > 1: the last block of a CNN (`net.layer4` of a ResNet, whose output is that of its
    last bottleneck `layer4.2`, the layer GRADIA.py hooks)."""
    names = _spatial_outputs(model, size)
    if not names:
        raise ValueError(
            f"{getattr(model, 'arch', type(model).__name__)} has no layer with a spatial output "
            "at this input size: name one in attention.layer"
        )
    return names[-1]


def _spatial_outputs(model: nn.Module, size: int) -> list[str]:
    order: list[str] = []

    def hook(name):
        def record(_module, _inputs, output):
            if torch.is_tensor(output) and output.dim() == 4 and min(output.shape[-2:]) > 1:
                order.append(name)

        return record

    handles = [
        m.register_forward_hook(hook(n))
        for n, m in model.named_modules()
        if n and not n.startswith("normalize")
    ]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


class ActivationTap(contextlib.AbstractContextManager):
    """Keeps the output of `module` from the forward passes run inside the block."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.output: torch.Tensor | None = None

    def __enter__(self) -> ActivationTap:
        self._handle = self.module.register_forward_hook(self._keep)
        return self

    def _keep(self, _module, _inputs, output):
        self.output = output

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def min_max(cam: torch.Tensor) -> torch.Tensor:
    """(cam − min)/max after the shift, per map over its last two dimensions (GRADIA.py)."""
    shifted = cam - cam.amin(dim=(-2, -1), keepdim=True)
    return shifted / shifted.amax(dim=(-2, -1), keepdim=True).clamp_min(EPS)


def gradcam(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation Grad-CAM of a batch: (cams [B, H, W] in [0, 1] at the input size, logits).

    As GRADIA.py's `GradCam.__call__`: channel weights are the spatial means of the gradients of
    the class logit (the predicted class when `classes` is None), the weighted sum goes through a
    ReLU, is upsampled bilinearly to the input size and min-max normalised. Runs in eval mode, so
    the samples do not interact and one backward pass serves the whole batch.
    """
    was_training = model.training
    model.eval()
    try:
        with ActivationTap(layer) as tap, torch.enable_grad():
            x = x.detach().requires_grad_(True)  # a graph even when the weights are frozen
            logits = model(x)
            index = logits.argmax(1) if classes is None else classes.to(logits.device)
            score = logits.gather(1, index[:, None]).sum()
            (grads,) = torch.autograd.grad(score, tap.output)
        acts = tap.output.detach()
    finally:
        model.train(was_training)
    cam = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True).relu()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return min_max(cam), logits.detach()


def training_cams(
    model: nn.Module,
    layer: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor,
    *,
    per_image: bool = False,
) -> torch.Tensor:
    """Training Grad-CAMs [B, h, w] on the layer's grid, differentiable through its activations.

    As GRADIA.py's `GradCam.get_attention_map`: the ground-truth class's logit, channel weights
    taken from a gradient that is not part of the graph (constants), no ReLU, min-max
    normalised. Batched, the model's mode is the caller's; the layers after `layer` must treat
    samples independently (true in eval mode, and for pooling + linear heads in any mode).
    `per_image=True` forwards each image alone, as GRADIA.py does.
    """
    if per_image:
        return torch.cat(
            [_cams(model, layer, x[i : i + 1], classes[i : i + 1]) for i in range(len(x))]
        )
    return _cams(model, layer, x, classes)


def _cams(model, layer, x, classes):
    with ActivationTap(layer) as tap:
        logits = model(x)
    acts = tap.output
    score = logits.gather(1, classes[:, None]).sum()
    (grads,) = torch.autograd.grad(score, acts, retain_graph=True)  # no graph: constants
    return min_max((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1))
