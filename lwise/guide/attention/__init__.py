"""Stage 4b: Grad-CAM and attention fine-tuning of the guide model (GRADIA).

Reimplements the model side of GRADIA (Gao, Sun, Zhao, Hong, "Aligning Eyes between Humans and
Deep Neural Network through Interactive Attention Alignment", CSCW 2022; repository file
`GRADIA.py`): Grad-CAM for a layer named in config, the attention loss, and the two phases of
fine-tuning. The human side (mask files, reasonability tables, IoU, outputs) lives in
`lwise.alignment.attention`.

Differences from `GRADIA.py`; `reference=True` (with `per_image_cams`) restores the first three:

- Training CAMs are computed for the whole batch at once with the model in eval mode (BatchNorm
  running statistics), in a forward pass of their own over the samples that carry an attention
  weight. `GRADIA.py` forwards each image alone in train mode (single-image BatchNorm statistics,
  running statistics updated once per image); `per_image_cams=True` does that.
- The target map is computed in floating point. `GRADIA.py` rounds it to 8 bits after the area
  resize and again after the 3×3 blur (OpenCV's fixed-point blur rounds halves up), which moves
  cells by up to about 0.011.
- The attention term is averaged over the whole batch, like the cross-entropy, so each sample's
  loss does not depend on which other samples share its batch. `GRADIA.py` averages it only over
  the samples with an attention weight.
- Phase 2 keeps the epoch that scores best on held-out validation images; `GRADIA.py` picks it
  on the test loader.
- Images are not flipped during fine-tuning: `GRADIA.py` flips images at random but never their
  attention maps.
"""

from lwise.guide.attention.cam import (
    ActivationTap,
    default_layer,
    find_layer,
    gradcam,
    min_max,
    training_cams,
)
from lwise.guide.attention.targets import area_resize, blur3, target_map
from lwise.guide.attention.training import (
    EpochResult,
    attention_loss,
    train_phase1,
    train_phase2,
)

__all__ = [
    "ActivationTap",
    "EpochResult",
    "area_resize",
    "attention_loss",
    "blur3",
    "default_layer",
    "find_layer",
    "gradcam",
    "min_max",
    "target_map",
    "train_phase1",
    "train_phase2",
    "training_cams",
]
