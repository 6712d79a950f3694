"""Differentiable random views for multi-view enhancement (L-WISE `enhance_vit_aug.py`).

Each view applies every chosen augmentation, with fresh randomness, in the reference order:
color (brightness, saturation, contrast), translation, resize, cutout (the DiffAugment-style
functions of L-WISE `enhance_vit_aug.py`). That script feeds XCiT un-normalised [0, 1] inputs
because it calls the network inside `AttackerModel`; here normalisation is part of the model,
so views are always normalised before the network sees them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUG_TYPES = ("color", "translation", "resize", "cutout")
# Ranges from the DiffAugment functions of L-WISE `enhance_vit_aug.py`.
COLOR_RANGE = (0.8, 1.2)
RESIZE_RANGE = (0.8, 1.2)
TRANSLATION_RATIO = 0.125  # up to 28 px at 224
CUTOUT_RATIO = 0.5  # a 112 px square at 224


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


def color(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, saturation and contrast, each scaled by its own U[0.8, 1.2] per image."""
    b = x.shape[0]
    x = x * _uniform((b, 1, 1, 1), *COLOR_RANGE, x, gen)
    pixel_mean = x.mean(dim=1, keepdim=True)  # saturation: around the per-pixel channel mean
    x = (x - pixel_mean) * _uniform((b, 1, 1, 1), *COLOR_RANGE, x, gen) + pixel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * _uniform((b, 1, 1, 1), *COLOR_RANGE, x, gen) + image_mean


def translation(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by whole pixels, up to 0.125 of its size on each axis; zero fill."""
    b, _, h, w = x.shape
    max_dy, max_dx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy = _randint(-max_dy, max_dy, (b, 1, 1), x, gen)
    dx = _randint(-max_dx, max_dx, (b, 1, 1), x, gen)
    # A one-pixel zero border: every source index that falls outside is clamped onto it.
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) - dy + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) - dx + 1).clamp(0, w + 1)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def resize(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Bilinear resize by one U[0.8, 1.2] ratio for the batch, then back to the original size:
    centred zero padding when smaller, top-left crop when larger."""
    _, _, h, w = x.shape
    # The ratio sets the output shape, so it is needed on the host: draw it on the CPU unless
    # the caller's generator lives elsewhere, to avoid a device sync per view.
    u = torch.rand((), generator=gen, device=gen.device if gen is not None else "cpu").item()
    ratio = RESIZE_RANGE[0] + (RESIZE_RANGE[1] - RESIZE_RANGE[0]) * u
    nh, nw = max(1, int(h * ratio)), max(1, int(w * ratio))
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    if nh < h or nw < w:
        top, left = max(0, h - nh) // 2, max(0, w - nw) // 2
        x = F.pad(x, (left, max(0, w - nw) - left, top, max(0, h - nh) - top))
    return x[:, :, :h, :w]


def cutout(x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Zero one square of side 0.5·size per image; its centre is uniform over the image, so the
    square may be cut by the border."""
    b, _, h, w = x.shape
    side_h, side_w = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    cy = _randint(0, h - 1, (b, 1, 1), x, gen)
    cx = _randint(0, w - 1, (b, 1, 1), x, gen)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - (cy - side_h // 2)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - (cx - side_w // 2)
    inside = (rows >= 0) & (rows < side_h) & (cols >= 0) & (cols < side_w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_AUGMENTATIONS = {"color": color, "translation": translation, "resize": resize, "cutout": cutout}


class MultiView:
    """Callable x [B, C, H, W] -> K·B random views [K·B, C, H, W], differentiable in x.

    The output is view-major: row k·B + i is view k of image i, so labels repeat as
    `y.repeat(K)` (what `lwise.guide.attacks.pgd` does with `views=`).
    """

    def __init__(
        self,
        num_views: int = 4,
        types: tuple[str, ...] = AUG_TYPES,
        generator: torch.Generator | None = None,
    ):
        unknown = [t for t in types if t not in _AUGMENTATIONS]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; valid: {', '.join(AUG_TYPES)}")
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.num_views = num_views
        self.types = tuple(types)
        self.generator = generator

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One random view of every image in x."""
        for name in self.types:
            x = _AUGMENTATIONS[name](x, self.generator)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.view(x) for _ in range(self.num_views)])
