"""Image decoding and resizing shared by every stage that reads pictures."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

RESIZE_MODES = ("squash", "crop")
EXIF_ORIENTATION = 0x0112
FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "bmp": ".bmp"}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent areas become white rather than black."""
    if img.mode == "RGB":
        return img
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
