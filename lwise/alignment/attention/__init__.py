"""Attention alignment (GRADIA; Gao et al., CSCW 2022): human attention masks against the guide
model's Grad-CAM, and reasonability-weighted attention fine-tuning.

`masks` reads and checks the human input (mask images or GRADIA's JSON lists, reasonability
tables, assessments) and makes synthetic masks for datasets without human ones; `run` holds the
stage's entry points (`finetune`, `evaluate`, `reasonability_matrix`). The model side (Grad-CAM,
the attention loss, the two training phases) is `lwise.guide.attention`.
"""

from lwise.alignment.attention.evaluate import evaluate, reasonability_matrix
from lwise.alignment.attention.masks import (
    ImageIndex,
    MaskError,
    Masks,
    fit_masks,
    load_masks,
    read_assessment,
    read_reasonability,
    write_synthetic_masks,
)
from lwise.alignment.attention.run import (
    AttentionConfig,
    assign_roles,
    cam_iou,
    finetune,
    sample_weights,
)

__all__ = [
    "AttentionConfig",
    "ImageIndex",
    "MaskError",
    "Masks",
    "assign_roles",
    "cam_iou",
    "evaluate",
    "finetune",
    "fit_masks",
    "load_masks",
    "read_assessment",
    "read_reasonability",
    "reasonability_matrix",
    "sample_weights",
    "write_synthetic_masks",
]
