"""Differentiable random views for multi-view enhancement (L-WISE `enhance_vit_aug.py`).

Each view applies every chosen augmentation, with fresh randomness, in the reference order:
color (brightness, saturation, contrast), translation, resize, cutout (L-WISE
`scripts/enhance_vit_aug.py`, `rand_brightness` ... `rand_cutout`). That script feeds XCiT
un-normalised [0, 1] inputs because it calls the network inside `AttackerModel`; here
normalisation is part of the model, so views are always normalised before the network sees them.

Cutout: the reference zeroes a 0.5·size square that always lies inside the image (its top-left
corner uniform over the positions that fit: 25 % of the area, always). `cutout="clipped"` gives
DiffAugment's square instead (Zhao et al. 2020, mit-han-lab/data-efficient-gans
`DiffAugment_pytorch.py` `rand_cutout`), centred anywhere and cut by the border (about 19 % of
the area on average at 224 px).

Memory: `MultiView.through(net, chunk)` is the guide model as PGD sees it, x [B] -> logits of
the K·B views, at most `chunk` views through the network at a time (see `_ChunkedViews`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from lwise.core.config import Section

__all__ = [
    "AUG_TYPES",
    "CUTOUTS",
    "MultiView",
    "ViewsConfig",
    "color",
    "cutout",
    "resize",
    "translation",
    "views_cost",
]

AUG_TYPES = ("color", "translation", "resize", "cutout")
CUTOUTS = ("inside", "clipped")
# Ranges of L-WISE `enhance_vit_aug.py` (`rand_brightness`: U[0.8, 1.2], and the others).
COLOR_RANGE = (0.8, 1.2)
RESIZE_RANGE = (0.8, 1.2)
TRANSLATION_RATIO = 0.125  # up to 28 px at 224
CUTOUT_RATIO = 0.5  # a 112 px square at 224


# --- random draws -------------------------------------------------------------------------------


def _uniform(
    shape: tuple[int, ...], low: float, high: float, x: torch.Tensor, gen: torch.Generator | None
) -> torch.Tensor:
    device = gen.device if gen is not None else x.device
    u = torch.rand(shape, generator=gen, device=device, dtype=x.dtype)
    return (low + (high - low) * u).to(x.device)


def _randint(
    low: int, high: int, shape: tuple[int, ...], x: torch.Tensor, gen: torch.Generator | None
) -> torch.Tensor:
    """Integers in [low, high] inclusive."""
    device = gen.device if gen is not None else x.device
    return torch.randint(low, high + 1, shape, generator=gen, device=device).to(x.device)


def _cutout_side(h: int, w: int) -> tuple[int, int]:
    return int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)


# Each augmentation is a draw (its random parameters for a batch, per image unless said) and an
# apply (the parameters of some rows on those rows), so that a chunk of views can be rebuilt.


def _draw_color(x: torch.Tensor, gen: torch.Generator | None, **_: Any) -> tuple:
    b = x.shape[0]
    return tuple(_uniform((b, 1, 1, 1), *COLOR_RANGE, x, gen) for _ in range(3))


def _apply_color(x: torch.Tensor, p: tuple) -> torch.Tensor:
    brightness, saturation, contrast = p
    x = x * brightness
    pixel_mean = x.mean(dim=1, keepdim=True)  # saturation: around the per-pixel channel mean
    x = (x - pixel_mean) * saturation + pixel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * contrast + image_mean


def _draw_translation(x: torch.Tensor, gen: torch.Generator | None, **_: Any) -> tuple:
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = _randint(-max_dy, max_dy, (b, 1, 1), x, gen)
    return dy, _randint(-max_dx, max_dx, (b, 1, 1), x, gen)


def _apply_translation(x: torch.Tensor, p: tuple) -> torch.Tensor:
    dy, dx = p
    b, _, h, w = x.shape
    # A one-pixel zero border: every source index that falls outside is clamped onto it.
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) - dy + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) - dx + 1).clamp(0, w + 1)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def _draw_resize(x: torch.Tensor, gen: torch.Generator | None, **_: Any) -> float:
    # One ratio for the whole batch. It sets the output shape, so it is needed on the host: draw
    # it on the CPU unless the caller's generator lives elsewhere, to avoid a device sync per view.
    u = torch.rand((), generator=gen, device=gen.device if gen is not None else "cpu").item()
    return RESIZE_RANGE[0] + (RESIZE_RANGE[1] - RESIZE_RANGE[0]) * u


def _apply_resize(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bilinear resize, then back to the original size: centred zero padding when smaller,
    top-left crop when larger."""
    _, _, h, w = x.shape
    nh, nw = max(1, int(h * ratio)), max(1, int(w * ratio))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    if nh < h or nw < w:
        top, left = max(0, h - nh) // 2, max(0, w - nw) // 2
        x = F.pad(x, (left, max(0, w - nw) - left, top, max(0, h - nh) - top))
    return x[:, :, :h, :w]


def _draw_cutout(
    x: torch.Tensor, gen: torch.Generator | None, *, cutout: str = "inside", **_: Any
) -> tuple:
    """Top-left corner of each image's square: within [0, size - side] ("inside", L-WISE
    `rand_cutout`), or centre uniform over the image ("clipped", DiffAugment `rand_cutout`)."""
    b, _, h, w = x.shape
    side_h, side_w = _cutout_side(h, w)
    if cutout == "inside":
        top = _randint(0, max(0, h - side_h), (b, 1, 1), x, gen)
        left = _randint(0, max(0, w - side_w), (b, 1, 1), x, gen)
        return top, left
    cy, cx = _randint(0, h - 1, (b, 1, 1), x, gen), _randint(0, w - 1, (b, 1, 1), x, gen)
    return cy - side_h // 2, cx - side_w // 2


def _apply_cutout(x: torch.Tensor, p: tuple) -> torch.Tensor:
    top, left = p
    _, _, h, w = x.shape
    side_h, side_w = _cutout_side(h, w)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - top
    cols = torch.arange(w, device=x.device).view(1, 1, w) - left
    inside = (rows >= 0) & (rows < side_h) & (cols >= 0) & (cols < side_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_AUGMENTATIONS: dict[str, tuple[Callable, Callable]] = {
    "color": (_draw_color, _apply_color),
    "translation": (_draw_translation, _apply_translation),
    "resize": (_draw_resize, _apply_resize),
    "cutout": (_draw_cutout, _apply_cutout),
}


def _rows(p: Any, start: int, stop: int) -> Any:
    """Rows start:stop of a parameter: tensors and tuples of tensors are per image; a float
    (resize's ratio) is shared by the batch."""
    if isinstance(p, torch.Tensor):
        return p[start:stop]
    if isinstance(p, tuple):
        return tuple(_rows(q, start, stop) for q in p)
    return p


def color(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, saturation and contrast, each scaled by its own U[0.8, 1.2] per image."""
    return _apply_color(x, _draw_color(x, gen))


def translation(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by whole pixels, up to 0.125 of its size on each axis; zero fill."""
    return _apply_translation(x, _draw_translation(x, gen))


def resize(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Bilinear resize by one U[0.8, 1.2] ratio for the batch, then back to the original size:
    centred zero padding when smaller, top-left crop when larger."""
    return _apply_resize(x, _draw_resize(x, gen))


def cutout(
    x: torch.Tensor, gen: torch.Generator | None = None, *, mode: str = "inside"
) -> torch.Tensor:
    """Zero one square of side 0.5·size per image, inside the image ("inside", L-WISE) or
    centred anywhere and cut by the border ("clipped", DiffAugment)."""
    return _apply_cutout(x, _draw_cutout(x, gen, cutout=mode))


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewsConfig(Section):
    """The `enhance.views` mapping with its defaults filled in from the schema:
    `ViewsConfig.from_config({"num_views": 10})`."""

    SECTION = "views"  # $defs/views, the schema of a non-null `enhance.views`

    num_views: int
    types: list[str]
    seed: int
    cutout: str


# --- views ---------------------------------------------------------------------------------------


class MultiView:
    """Callable x [B, C, H, W] -> K·B random views [K·B, C, H, W], differentiable in x.

    The output is view-major: row k·B + i is view k of image i, so labels repeat as
    `y.repeat(K)` (what `lwise.guide.attacks.pgd` does with `views=`).
    """

    def __init__(
        self,
        num_views: int = 4,
        types: Sequence[str] = AUG_TYPES,
        generator: torch.Generator | None = None,
        cutout: str = "inside",
    ):
        unknown = [t for t in types if t not in _AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; valid: {', '.join(AUG_TYPES)}")
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        if cutout not in CUTOUTS:
            raise ValueError(f"unknown cutout {cutout!r}; valid: {', '.join(CUTOUTS)}")
        self.num_views = num_views
        self.types = tuple(types)
        self.generator = generator
        self.cutout = cutout
        # What the provenance records (`seed` is added by from_config).
        self.settings: dict[str, Any] = {
            "num_views": num_views, "types": list(self.types), "cutout": cutout,
        }  # fmt: skip

    @classmethod
    def from_config(cls, views: Mapping[str, Any] | None) -> MultiView | None:
        """The views of an `enhance.views` mapping (None when it is null), drawn from a CPU
        generator seeded with its `seed`."""
        if views is None:
            return None
        cfg = ViewsConfig.from_config(views)
        gen = torch.Generator().manual_seed(cfg.seed)
        views = cls(cfg.num_views, cfg.types, generator=gen, cutout=cfg.cutout)
        views.settings["seed"] = cfg.seed
        return views

    def draw(self, x: torch.Tensor) -> list[list[tuple[str, Any]]]:
        """The random parameters of K views of the batch x: [view][augmentation] -> (name, p).
        The same draws, in the same order, as applying the views one after the other."""
        return [self.draw_one(x) for _ in range(self.num_views)]

    def draw_one(self, x: torch.Tensor) -> list[tuple[str, Any]]:
        """The random parameters of one view of the batch x."""
        return [
            (name, _AUGMENTATIONS[name][0](x, self.generator, cutout=self.cutout))
            for name in self.types
        ]

    @staticmethod
    def apply(x: torch.Tensor, view: list[tuple[str, Any]]) -> torch.Tensor:
        """One drawn view (of exactly these rows) applied to x."""
        for name, p in view:
            x = _AUGMENTATIONS[name][1](x, p)
        return x

    @classmethod
    def apply_rows(
        cls, x: torch.Tensor, views: list[list[tuple[str, Any]]], start: int, stop: int
    ) -> torch.Tensor:
        """Rows start:stop of the view-major K·B views of x, drawn as `views`."""
        b = x.shape[0]
        parts = []
        for k in range(start // b, (stop - 1) // b + 1):
            i0, i1 = max(start - k * b, 0), min(stop - k * b, b)
            view = [(name, _rows(p, i0, i1)) for name, p in views[k]]
            parts.append(cls.apply(x[i0:i1], view))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One random view of every image in x."""
        return self.apply(x, self.draw_one(x))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.view(x) for _ in range(self.num_views)])

    def through(self, net: Callable[[torch.Tensor], torch.Tensor], chunk: int) -> _ChunkedViews:
        """`net` seen through these views: x [B] -> logits [K·B], at most `chunk` views through
        `net` at a time (for `lwise.guide.attacks.pgd`, whose loss then averages the views)."""
        return _ChunkedViews(net, self, chunk)


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    return (
        device_type,
        torch.is_autocast_enabled(device_type),
        torch.get_autocast_dtype(device_type),
    )


class _ChunkedViews:
    """The guide model applied to the K·B views of x, in chunks of at most `chunk` views.

    When K·B <= chunk the views go through the network at once, with ordinary autograd (L-WISE
    `enhance_vit_aug.py` keeps all K views' graphs until the gradient). Otherwise the forward
    pass runs chunk by chunk without keeping activations, and the backward pass draws nothing
    new: it rebuilds each chunk's views from the same random parameters, runs the network on
    them again with gradients and accumulates their input gradients. Memory is then one chunk's
    activations; the price is one more forward pass per chunk. The gradient equals the
    unchunked one up to floating-point summation order.
    """

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], views: MultiView, chunk: int):
        if chunk < 1:
            raise ValueError(f"view_chunk must be >= 1, got {chunk}")
        self.net, self.views, self.chunk = net, views, chunk

    @property
    def training(self) -> bool:  # pgd refuses models in training mode
        return bool(getattr(self.net, "training", False))

    def _net(self, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
            v = v.contiguous(memory_format=torch.channels_last)
        return self.net(v)

    def spans(self, batch: int) -> list[tuple[int, int]]:
        total = self.views.num_views * batch
        return [(s, min(s + self.chunk, total)) for s in range(0, total, self.chunk)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        drawn = self.views.draw(x)
        if self.views.num_views * x.shape[0] <= self.chunk:
            return self._net(self.views.apply_rows(x, drawn, 0, self.views.num_views * len(x)), x)
        return _ChunkedLogits.apply(x, self, drawn)


class _ChunkedLogits(torch.autograd.Function):
    """x -> logits of its drawn views, chunk by chunk; see `_ChunkedViews`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, runner: _ChunkedViews, drawn: list) -> torch.Tensor:
        # Autograd runs forward without gradients: no activation is kept.
        ctx.runner, ctx.drawn = runner, drawn
        ctx.autocast = _autocast_state(x.device.type)
        ctx.save_for_backward(x)
        views = runner.views
        return torch.cat(
            [runner._net(views.apply_rows(x, drawn, s, e), x) for s, e in runner.spans(len(x))]
        )

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (x,) = ctx.saved_tensors
        runner, drawn = ctx.runner, ctx.drawn
        device_type, enabled, dtype = ctx.autocast
        autocast = torch.autocast(device_type, dtype=dtype) if enabled else contextlib.nullcontext()
        grad = torch.zeros_like(x)
        with torch.enable_grad(), autocast:
            for s, e in runner.spans(len(x)):
                leaf = x.detach().requires_grad_(True)
                logits = runner._net(runner.views.apply_rows(leaf, drawn, s, e), x)
                (g,) = torch.autograd.grad(logits, leaf, grad_out[s:e].to(logits.dtype))
                grad += g
        return grad, None, None


def views_cost(num_views: int, batch: int, chunk: int) -> str:
    """What one PGD step costs with these views, for the log."""
    total = num_views * batch
    if total <= chunk:
        return f"{num_views} views x {batch} images = {total} per pass (one pass)"
    n = math.ceil(total / chunk)
    return (
        f"{num_views} views x {batch} images = {total}, in {n} chunks of <= {chunk}"
        " (each chunk's forward pass runs twice)"
    )
