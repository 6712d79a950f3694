"""VisAlign's five baselines as architectures of the guide model factory, and their training.

Importing this module registers, in `lwise.guide.models.LOCAL_ARCHS`, the paper's sizes under
the names VisAlign's README gives them and a tiny variant of each for tests and the default
run (32 px inputs, seconds per epoch on a CPU). All are built from scratch, as VisAlign trains
them (`pretrained_weights: False` in `test_main.py`):

- `vit_30_16`: timm ViT, patch 16, 30 layers, 16 heads, width 1024, MLP 4096 (README sizes).
- `swin_extra`: torchvision Swin, embed 256, depths (2, 2, 15, 2), heads (4, 8, 16, 32),
  window 7, stochastic depth 0.5 (`models/swin_transformer_model.py`).
- `convnext_extra`: torchvision ConvNeXt, stages 192/384/768/1536 with 3/3/50/3 blocks,
  stochastic depth 0.5 (`models/convnext_model.py`).
- `densenet_extra`: torchvision DenseNet, growth 64, blocks (24, 48, 84, 64), 64 initial
  features (`models/densenet_model.py`).
- `mlp`: timm MLP-Mixer, 224 px, patch 16, width 2048, depth 60, channel expansion 10, token
  expansion 0.5 (README sizes; `models/mlpmixer_model.py` builds mlp_mixer_pytorch's MLPMixer,
  whose token expansion defaults to 0.5).
- `visalign_<vit|swin|convnext|densenet|mixer>_tiny`: the same families at a few thousand
  parameters.

`FAMILY` names each one's family: VisAlign's `test_main.py` (`model_feature_list`) strips the
classifier head for ViT and Swin only, so for ConvNeXt, DenseNet and MLP-Mixer its distance
methods (MDS, KNN, TAPUDD) run on the 10 logits; `LOGIT_FEATURE_FAMILIES` lists those, which
`lwise.alignment.visalign.scoring` follows under the `reference_exact` rule only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any

from timm.models.mlp_mixer import MlpMixer
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.densenet import DenseNet
from torchvision.models.swin_transformer import SwinTransformer

from lwise.guide.models import register_arch

__all__ = ["BASELINES", "FAMILY", "LOGIT_FEATURE_FAMILIES", "family", "train_baseline"]

LOGIT_FEATURE_FAMILIES = ("convnext", "densenet", "mixer")


def _vit(num_classes: int, *, patch: int, width: int, depth: int, heads: int) -> nn.Module:
    # dynamic_img_size: the same weights run at the training size, whatever it is.
    return VisionTransformer(
        patch_size=patch, embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
        num_classes=num_classes, dynamic_img_size=True,
    )  # fmt: skip


def _swin(num_classes: int, *, patch: int, embed: int, depths, heads, window: int, sd: float):
    return SwinTransformer(
        patch_size=[patch, patch], embed_dim=embed, depths=list(depths), num_heads=list(heads),
        window_size=[window, window], stochastic_depth_prob=sd, num_classes=num_classes,
    )  # fmt: skip


def _convnext(num_classes: int, *, widths, blocks, sd: float) -> nn.Module:
    stages = [
        CNBlockConfig(w, widths[i + 1] if i + 1 < len(widths) else None, b)
        for i, (w, b) in enumerate(zip(widths, blocks, strict=True))
    ]
    return ConvNeXt(stages, stochastic_depth_prob=sd, num_classes=num_classes)


def _densenet(num_classes: int, *, growth: int, blocks, init: int) -> nn.Module:
    return DenseNet(growth, tuple(blocks), init, num_classes=num_classes)


def _mixer(num_classes: int, *, size: int, patch: int, width: int, depth: int, expansion: float):
    return MlpMixer(
        num_classes=num_classes, img_size=size, patch_size=patch, num_blocks=depth,
        embed_dim=width, mlp_ratio=(0.5, expansion),
    )  # fmt: skip


# name -> (family, builder(num_classes)); the paper's sizes, then the tiny variants.
BASELINES: dict[str, tuple[str, Any]] = {
    "vit_30_16": ("vit", partial(_vit, patch=16, width=1024, depth=30, heads=16)),
    "swin_extra": (
        "swin",
        partial(
            _swin, patch=4, embed=256, depths=(2, 2, 15, 2), heads=(4, 8, 16, 32), window=7, sd=0.5
        ),
    ),  # fmt: skip
    "convnext_extra": (
        "convnext",
        partial(_convnext, widths=(192, 384, 768, 1536), blocks=(3, 3, 50, 3), sd=0.5),
    ),
    "densenet_extra": ("densenet", partial(_densenet, growth=64, blocks=(24, 48, 84, 64), init=64)),
    "mlp": ("mixer", partial(_mixer, size=224, patch=16, width=2048, depth=60, expansion=10.0)),
    "visalign_vit_tiny": ("vit", partial(_vit, patch=4, width=32, depth=2, heads=2)),
    "visalign_swin_tiny": (
        "swin",
        partial(_swin, patch=2, embed=16, depths=(1, 1), heads=(1, 2), window=4, sd=0.1),
    ),
    "visalign_convnext_tiny": (
        "convnext",
        partial(_convnext, widths=(16, 32), blocks=(1, 1), sd=0.1),
    ),
    "visalign_densenet_tiny": ("densenet", partial(_densenet, growth=8, blocks=(2, 2), init=16)),
    "visalign_mixer_tiny": (
        "mixer",
        partial(_mixer, size=32, patch=4, width=32, depth=2, expansion=4.0),
    ),
}
FAMILY = {name: fam for name, (fam, _) in BASELINES.items()}


def _register() -> None:
    for name, (_, builder) in BASELINES.items():
        register_arch(name)(builder)


_register()


def family(arch: str) -> str | None:
    """The baseline family of an architecture name (None for other architectures)."""
    return FAMILY.get(arch.rpartition(":")[2])


def train_baseline(
    dirmap_csv: str | os.PathLike,
    out_model: str | os.PathLike,
    out_metrics: str | os.PathLike,
    state_dir: str | os.PathLike,
    settings: Mapping[str, Any],
) -> None:
    """Train one baseline (one architecture, one seed) from scratch with `lwise.guide.train`.

    `settings` are `TrainConfig` fields (the workflow merges the dataset's guide training
    settings, the model's `train` entries, its `arch` and the seed). One process: several GPUs
    would start `python -m lwise.guide.train`, which does not import these architectures.
    """
    from lwise.guide.train import TrainConfig, train

    cfg = TrainConfig.from_dict(dict(settings))
    if cfg.init_checkpoint:
        raise ValueError(
            f"baseline {cfg.arch!r}: VisAlign trains its baselines from scratch; "
            "init_checkpoint must be null"
        )
    train(dirmap_csv, out_model, out_metrics, state_dir, cfg)
