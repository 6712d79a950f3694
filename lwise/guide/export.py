"""Guide models into and out of the workflow.

- `import_checkpoint`: any supported checkpoint (`lwise.guide.checkpoints`: ours, a plain
  torchvision/timm state dict, a robustness-library file, an export), read once with the
  `guide` config's loader settings for what the file does not record, written in our format.
  The workflow's `import_guide` rule runs it, so every later rule loads a file that records
  everything and needs no unpickling, whatever the configured file was.
- `export_checkpoint`: a guide model as a plain state dict of its network (torchvision/timm
  keys, no normaliser) in safetensors, with a JSON sidecar `<name>.json` holding what the
  weights alone do not say: architecture, class names, normalisation and input size.
  `load_model` reads the pair back; other code loads the weights with
  `safetensors.torch.load_file` into `torchvision.models.get_model(arch, num_classes=...)` or
  `timm.create_model(...)`, normalising inputs with the sidecar's mean and std.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from lwise.core.atomic import atomic_path
from lwise.guide.checkpoints import load_model, save_checkpoint, sidecar_path
from lwise.guide.load import model_input_size

__all__ = ["EXPORT_FORMAT", "export_checkpoint", "file_sha256", "import_checkpoint"]

log = logging.getLogger(__name__)

EXPORT_FORMAT = "lwise-export-v1"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_checkpoint(
    source: str | os.PathLike, out_path: str | os.PathLike, **loader_args: Any
) -> Path:
    """Read `source` with `loader_args` (`load_model`'s keywords: trusted, arch, num_classes,
    mean, std, image_size; `GuideFileConfig.loader_args()`) and write it atomically to
    `out_path` in our format, recording the source's path and SHA-256."""
    model = load_model(source, **loader_args)
    size = model_input_size(model)
    args = {
        **model.training_args,
        "image_size": size,
        "imported_from": str(source),
        "source_sha256": file_sha256(source),
    }
    save_checkpoint(out_path, model, training_args=args)
    log.info(
        "imported %s (%s, %d classes, %d px, mean %s, std %s) as %s",
        source, model.arch, model.num_classes, size,
        model.normalize.mean.flatten().tolist(), model.normalize.std.flatten().tolist(),
        out_path,
    )  # fmt: skip
    return Path(out_path)


def export_checkpoint(
    source: str | os.PathLike, out_path: str | os.PathLike, **loader_args: Any
) -> tuple[Path, Path]:
    """Write the network of the guide model at `source` to `out_path` (`.safetensors`) and its
    sidecar (`.json` beside it), both atomically; returns their paths.

    `loader_args` are `load_model`'s keywords, for a source that does not record everything.
    """
    from safetensors.torch import save_file

    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: an export is named <name>.safetensors")
    model = load_model(source, **loader_args)
    # safetensors refuses tensors that share memory; clone each into its own storage.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.net.state_dict().items()}
    sidecar = {
        "format": EXPORT_FORMAT,
        "arch": model.arch,
        "num_classes": model.num_classes,
        "class_names": model.class_names,
        "mean": model.normalize.mean.flatten().tolist(),
        "std": model.normalize.std.flatten().tolist(),
        "image_size": model_input_size(model),
        "input": "RGB in [0, 1], normalised (x - mean) / std, image_size x image_size",
        "exported_from": str(source),
        "source_sha256": file_sha256(source),
    }
    side = sidecar_path(out)
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": EXPORT_FORMAT, "arch": model.arch})
        with atomic_path(side) as tmp_side:
            tmp_side.write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info("exported %s to %s and %s", source, out, side)
    return out, side
