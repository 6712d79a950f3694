"""Classifier architectures: the factory, its registry, input normalisation and heads.

Every model the workflow uses is an `ImageClassifier`: images in [0, 1] go in, the wrapper
normalises them (robustness `InputNormalize`), and the wrapped network returns logits. Weights
come only from checkpoints (`lwise.guide.checkpoints`); nothing is downloaded. An architecture
is named as "tv:<name>" (torchvision), "timm:<name>", a name registered here with
`register_arch`, or a plain name looked up in torchvision, then timm. The fast-inference
rewrites of a built model are in `lwise.guide.fast`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import nn

__all__ = [
    "LOCAL_ARCHS",
    "PREFIXES",
    "ImageClassifier",
    "Normalize",
    "SmallCNN",
    "build_model",
    "head_name",
    "register_arch",
    "replace_head",
]

PREFIXES = ("tv", "timm")
# Architectures defined in this package, by name: `register_arch` adds one.
LOCAL_ARCHS: dict[str, Callable[[int], nn.Module]] = {}


def register_arch(name: str):
    """Class decorator: build `cls(num_classes)` for the architecture name `name`."""

    def add(cls):
        if name in LOCAL_ARCHS:
            raise ValueError(f"architecture {name!r} is registered twice")
        LOCAL_ARCHS[name] = cls
        return cls

    return add


class Normalize(nn.Module):
    """Clamp to [0, 1], then (x − mean)/std per channel (robustness `tools/helpers.py`)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(x, 0, 1) - self.mean) / self.std


class ImageClassifier(nn.Module):
    """`net(normalize(x))` for x in [0, 1]; carries the architecture name and class names."""

    def __init__(
        self,
        net: nn.Module,
        normalize: Normalize,
        *,
        arch: str,
        num_classes: int,
        class_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.arch = arch
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.training_args: dict = {}  # filled by lwise.guide.checkpoints.load_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


@register_arch("small_cnn")
class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages, global average pooling and a linear head (about 60k
    parameters): the default guide model for the small built-in dataset (32×32 RGB digits)."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, width, 2 * width, 4 * width, 4 * width]
        for i, (cin, cout) in enumerate(zip(channels, channels[1:], strict=False)):
            # Stride 2 after the first block: 32 -> 16 -> 8 -> 4.
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _torchvision_names() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _create_net(arch: str, num_classes: int) -> nn.Module:
    """Resolve `arch`: "tv:<name>", "timm:<name>", a local name, or a plain name looked up in
    torchvision (classification models) first, then timm."""
    prefix, _, name = arch.rpartition(":")
    if prefix and prefix not in PREFIXES:
        raise ValueError(f"unknown architecture prefix {prefix!r} in {arch!r}; valid: {PREFIXES}")
    if not prefix and name in LOCAL_ARCHS:
        return LOCAL_ARCHS[name](num_classes)
    if prefix == "tv" or (not prefix and name in _torchvision_names()):
        if name not in _torchvision_names():
            raise ValueError(f"torchvision has no classification model {name!r}")
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    import timm  # about 1 s to import: only for the models it makes

    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    raise ValueError(
        f"unknown architecture {arch!r}: not one of {sorted(LOCAL_ARCHS)}, a torchvision "
        "classification model or a timm model"
    )


def build_model(
    arch: str,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    pretrained: bool = False,
    class_names: Sequence[str] | None = None,
    empty: bool = False,
) -> ImageClassifier:
    """A randomly initialised `ImageClassifier` (weights come from `lwise.guide.checkpoints`).
    `empty`: the network's tensors on the meta device, not initialised (ResNet-50's random
    initialisation costs a job about 0.2 s), for a caller that assigns every one of them
    (`load_state_dict(..., assign=True)`) or reads only the structure."""
    if pretrained:
        raise ValueError(
            "pretrained weights are never downloaded; give the checkpoint's path instead "
            "(lwise.guide.checkpoints.load_model)"
        )
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    with torch.device("meta") if empty else contextlib.nullcontext():
        net = _create_net(arch, num_classes)
    return ImageClassifier(
        net, Normalize(mean, std), arch=arch, num_classes=num_classes, class_names=class_names
    )


def head_name(net: nn.Module) -> str:
    """Qualified name of the network's final nn.Linear (its classifier head)."""
    if hasattr(net, "get_classifier"):  # timm
        linears = [m for m in net.get_classifier().modules() if isinstance(m, nn.Linear)]
        if linears:
            return next(n for n, m in net.named_modules() if m is linears[-1])
    # torchvision: resnet/regnet `fc`, densenet/convnext/vgg/efficientnet `classifier`,
    # vit `heads`, swin `head`; the last Linear inside a Sequential is the one to replace.
    for attr in ("fc", "classifier", "heads", "head"):
        module = getattr(net, attr, None)
        if isinstance(module, nn.Module):
            linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
            if linears:
                return ".".join(filter(None, (attr, linears[-1])))
    raise TypeError(f"cannot find the classifier head of {type(net).__name__}")


def replace_head(model: ImageClassifier, num_classes: int) -> ImageClassifier:
    """Give the model a new, randomly initialised head with `num_classes` outputs.

    timm networks use their own `reset_classifier`; torchvision ones get a new nn.Linear in
    place of the last one. The normaliser is kept, as L-WISE `robust_transfer_learning.py` does
    when it fine-tunes: a robust ImageNet model fine-tuned on another dataset keeps the ImageNet
    mean/std.
    Returns the same object.
    """
    net = model.net
    old = net.get_submodule(head_name(net))
    placement = {"device": old.weight.device, "dtype": old.weight.dtype}
    if hasattr(net, "reset_classifier"):
        net.reset_classifier(num_classes)
        net.get_classifier().to(**placement)
    else:
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        net.set_submodule(head_name(net), new.to(**placement))
    if num_classes != model.num_classes:
        model.class_names = None
    model.num_classes = num_classes
    return model
