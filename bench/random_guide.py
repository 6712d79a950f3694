"""Write a random-init 10-class ResNet-50 in our checkpoint format, for the workflow benchmarks
that give it as `guide.checkpoint` (no training). Usage: python bench/random_guide.py OUT.pt"""

import sys

import torch

from lwise.guide.checkpoints import save_checkpoint
from lwise.guide.models import build_model

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

if __name__ == "__main__":
    torch.manual_seed(0)
    model = build_model("resnet50", 10, IMAGENET_MEAN, IMAGENET_STD)
    save_checkpoint(sys.argv[1], model.eval(), training_args={"image_size": 224})
