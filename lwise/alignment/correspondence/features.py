"""Backbone features for correspondence classifiers, and their per-dataset cache.

The reference (anguyen8/visual-correspondence-XAI, `EMD-Corr/src/KNN.py` and `EMD.py`) uses a
ResNet-50's layer4 map (2048×7×7 at 224 px) for patches and its average pool, L2-normalised,
for the kNN. Here the backbone is the guide model: its last convolutional feature map (layer4
for ResNets; for the small CNNs of the default config the last conv block, 4×4 at 32 px) and
the spatial mean of that map.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lwise.core.atomic import atomic_path
from lwise.data.loading import DirmapImages, eval_transform

log = logging.getLogger(__name__)

CACHE_FORMAT = "lwise-correspondence-features-v1"
# Modules whose output is a pooled summary, not a spatial map.
_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


class FeatureCacheError(ValueError):
    """A feature cache that cannot be read or does not belong to the given model or dirmap."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spatial_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last spatial (N, C, h, w) feature map of `model` (an ImageClassifier) for images x.

    timm networks give it through `forward_features`; otherwise the network's direct children
    are run in order (torchvision ResNets, VGGs, `SmallCNN`) and the output of the last child
    that is neither a global pool nor flat is taken (ResNet: layer4).
    """
    net = model.net
    x = model.normalize(x)
    if hasattr(net, "forward_features"):
        out = net.forward_features(x)
        if out.ndim != 4:
            raise ValueError(
                f"{type(net).__name__}.forward_features gives shape {tuple(out.shape)}, not a "
                "(N, C, h, w) map: correspondence classifiers need a convolutional backbone"
            )
        return out
    found: list[torch.Tensor] = []
    hooks = [
        child.register_forward_hook(
            lambda mod, inp, out: (
                found.append(out)
                if torch.is_tensor(out) and out.ndim == 4 and not isinstance(mod, _POOLS)
                else None
            )
        )
        for child in net.children()
    ]
    try:
        net(x)
    finally:
        for hook in hooks:
            hook.remove()
    if not found:
        raise ValueError(f"{type(net).__name__} has no child giving a (N, C, h, w) feature map")
    return found[-1]


def pooled(maps: torch.Tensor) -> torch.Tensor:
    """Spatial mean of (N, C, h, w) maps, L2-normalised: the kNN embedding (the reference's
    avgpool output)."""
    return F.normalize(maps.float().mean(dim=(2, 3)), dim=1)


@dataclass
class FeatureBank:
    """Features of one split of a dataset under one model.

    `pooled` (N, C) are L2-normalised; `maps` (N, C, h, w), float32, are kept when they fit the
    cache budget, else None (exemplar maps are then recomputed from `paths` when needed).
    """

    pooled: torch.Tensor
    maps: torch.Tensor | None
    labels: torch.Tensor
    im_paths: list[str]
    root: str
    split: str
    label_column: str
    image_size: int
    model_sha256: str

    def save(self, path: str | os.PathLike) -> None:
        payload = {"format": CACHE_FORMAT, **self.__dict__}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, model_path: str | os.PathLike | None = None):
        """Read a cache; with `model_path`, refuse one made with another model file."""
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
            raise FeatureCacheError(f"{path}: not a readable feature cache ({err})") from err
        if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT:
            raise FeatureCacheError(f"{path}: not a feature cache of format {CACHE_FORMAT}")
        raw.pop("format")
        bank = cls(**raw)
        if model_path is not None:
            digest = file_sha256(model_path)
            if digest != bank.model_sha256:
                raise FeatureCacheError(
                    f"{path} was computed with a model of sha256 {bank.model_sha256[:12]}…, but "
                    f"{model_path} has sha256 {digest[:12]}…: rebuild the cache"
                )
        return bank


def image_loader(
    df: pd.DataFrame, root, size: int, label_column: str, batch_size: int, workers: int
) -> DataLoader:
    data = DirmapImages(df.reset_index(drop=True), root, eval_transform(size), label_column)
    return DataLoader(
        data,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
    )


@torch.no_grad()
def extract(
    model: nn.Module, loader: DataLoader, device: torch.device, keep_maps: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled, maps or None) on the CPU for every image of `loader`, in order."""
    pools, maps = [], []
    for x, _, _ in loader:
        m = spatial_features(model, x.to(device, non_blocking=True)).float()
        pools.append(pooled(m).cpu())
        if keep_maps:
            maps.append(m.cpu())
    return torch.cat(pools), (torch.cat(maps) if keep_maps else None)


def build_bank(
    model: nn.Module,
    df: pd.DataFrame,
    root: str | os.PathLike,
    *,
    split: str,
    label_column: str,
    image_size: int,
    model_sha256: str,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
    max_map_cache_mb: float = 4096,
) -> FeatureBank:
    """Features of the rows of `df` in `split` (the exemplars: the training split)."""
    rows = df[df["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"the dirmap under {root} has no rows of split {split!r}")
    loader = image_loader(rows, root, image_size, label_column, batch_size, workers)
    probe = spatial_features(model, next(iter(loader))[0][:1].to(device))
    map_mb = len(rows) * probe[0].numel() * 4 / 2**20
    keep = map_mb <= max_map_cache_mb
    if not keep:
        log.info(
            "exemplar maps would take %.0f MB > max_map_cache_mb %.0f: they are recomputed "
            "from the images when needed",
            map_mb,
            max_map_cache_mb,
        )
    pools, maps = extract(model, loader, device, keep_maps=keep)
    log.info(
        "features of %d %s images: pooled %s, maps %s",
        len(rows),
        split,
        tuple(pools.shape),
        tuple(maps.shape) if maps is not None else "not cached",
    )
    return FeatureBank(
        pooled=pools,
        maps=maps,
        labels=torch.as_tensor(rows[label_column].astype(int).to_numpy().copy()),
        im_paths=[str(p) for p in rows["im_path"]],
        root=str(Path(root)),
        split=split,
        label_column=label_column,
        image_size=image_size,
        model_sha256=model_sha256,
    )


class ExemplarMaps:
    """Feature maps of bank rows by index: from the cache, or recomputed from the images."""

    def __init__(self, bank: FeatureBank, model: nn.Module, device: torch.device):
        self.bank, self.model, self.device = bank, model, device
        self.transform = eval_transform(bank.image_size)
        self.maps = bank.maps.to(device) if bank.maps is not None else None

    def images(self, index: torch.Tensor) -> torch.Tensor:
        """Images (…, 3, H, W) of bank rows `index` (any shape), on the device."""
        from PIL import Image

        from lwise.data.imaging import to_rgb

        flat = index.reshape(-1).tolist()
        out = []
        for i in flat:
            with Image.open(Path(self.bank.root) / self.bank.im_paths[i]) as img:
                img.load()
                out.append(self.transform(to_rgb(img)))
        x = torch.stack(out).to(self.device)
        return x.view(*index.shape, *x.shape[1:])

    @torch.no_grad()
    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """Maps (…, C, h, w) of bank rows `index` (any shape), float32 on the device."""
        if self.maps is not None:
            return self.maps[index.to(self.device)]
        unique, inverse = torch.unique(index.cpu(), return_inverse=True)
        maps = spatial_features(self.model, self.images(unique)).float()
        return maps[inverse.to(self.device)]
