"""Image decoding and resizing shared by every stage that reads pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

RESIZE_MODES = ("squash", "crop")
EXIF_ORIENTATION = 0x0112
FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp"}


# PIL modes of more than 8 bits per pixel: 16-bit PNG/TIFF greys open as "I;16" (or "I"),
# float TIFFs as "F". PIL's own convert("RGB") clips them at 255 instead of scaling.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit or float grey image as 8-bit "L", scaled rather than clipped: 16-bit (and
    32-bit "I", as PIL opens 16-bit files) by 255/65535; floats in [0, 1] by 255, other floats
    taken as 0-255. Other modes are returned as they are (16-bit RGB already opens as 8-bit)."""
    if img.mode in _WIDE_INTEGER_MODES:
        scaled = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
    elif img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        in_unit = finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)
        scaled = np.nan_to_num(values) * (255.0 if in_unit else 1.0)
    else:
        return img
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent areas become white rather than black; 16-bit and
    float images are scaled to 8 bits (`to_8bit`)."""
    if img.mode == "RGB":
        return img
    img = to_8bit(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def load_rgb(path: str | Path) -> tuple[Image.Image, bool]:
    """Decode an image fully, apply its EXIF orientation, convert to RGB.

    Returns the image and whether it differs from the file's own pixels (rotated or converted).
    """
    with Image.open(path) as src:
        src.load()
        rotated = src.getexif().get(EXIF_ORIENTATION, 1) != 1
        img = ImageOps.exif_transpose(src) if rotated else src
        return to_rgb(img), rotated or src.mode != "RGB"


def resize(img: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """`squash` to exactly `size` (the L-WISE `build_dataset.py` behaviour, aspect ratio lost),
    or `crop`: shorter side to fit, then centre crop, like Resize + CenterCrop in torchvision."""
    width, height = size
    if mode == "squash":
        return img.resize((width, height), Image.Resampling.BICUBIC)
    if mode == "crop":
        return ImageOps.fit(img, (width, height), Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    raise ValueError(f"resize mode {mode!r}: expected one of {RESIZE_MODES}")
