"""`lwise`: the workflow's stages on a folder of images, without Snakemake.

    lwise score     IMAGES --checkpoint MODEL --out DIR            # difficulty, accuracy, ...
    lwise enhance   IMAGES --checkpoint MODEL --out DIR --eps 2 4  # one set per eps, objective
    lwise export-checkpoint MODEL --out model.safetensors          # + model.json beside it
    lwise import-checkpoint MODEL --out model.pt --arch resnet50 --trusted ...

IMAGES is a dirmap CSV, or a folder: an ImageFolder made by the workflow (its `dirmap.csv` is
used) or any `<split>/<class>/<image>` tree (train, val, test), indexed into `DIR/input/dirmap.csv`.
MODEL is any checkpoint `lwise.guide.checkpoints` reads; `--arch`, `--num-classes`, `--mean`,
`--std` and `--image-size` fill in what the file does not record (the `guide` config keys),
`--trusted` allows unpickling a robustness-library file. Each command calls the library
functions the workflow's rules call, with the config's defaults for every setting not given,
and prints every file or folder it wrote.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("lwise.cli")


def _loader_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading the checkpoint (what the file does not record)")
    g.add_argument("--arch", help="architecture, e.g. resnet50, tv:<name>, timm:<name>")
    g.add_argument("--num-classes", type=int, help="class count (default: from the head)")
    g.add_argument("--mean", type=float, nargs=3, metavar="M", help="normalisation mean")
    g.add_argument("--std", type=float, nargs=3, metavar="S", help="normalisation std")
    g.add_argument("--image-size", type=int, help="input side in pixels (default 224)")
    g.add_argument(
        "--trusted",
        action="store_true",
        help="allow full unpickling (robustness-library files); runs code the file names",
    )


def _loader_args(args: argparse.Namespace) -> dict:
    from lwise.guide.checkpoints import GuideFileConfig

    given = {
        "trusted": args.trusted,
        "arch": args.arch,
        "num_classes": args.num_classes,
        "mean": args.mean,
        "std": args.std,
        "image_size": args.image_size,
    }
    return GuideFileConfig.from_config(given).loader_args()  # the schema's checks


def _wrote(path: Path | str, what: str) -> None:
    print(f"wrote {path}: {what}")


def _dirmap(images: Path, out: Path) -> tuple[Path, Path]:
    """(dirmap CSV, the folder image keys are relative to) for a CSV or an image folder."""
    from lwise.data import definers, dirmap

    if images.is_file():
        dirmap.read(images)  # validated here, with the file named, before any model loads
        return images, images.parent
    if not images.is_dir():
        raise SystemExit(f"lwise: {images} is neither a dirmap CSV nor a folder")
    if (images / "dirmap.csv").is_file():
        return images / "dirmap.csv", images
    csv = out / "input" / "dirmap.csv"
    definers.define("imagefolder", images, csv)
    _wrote(csv, f"the dirmap of {images} (<split>/<class>/<image>)")
    return csv, images


def _checkpoint(args: argparse.Namespace, scratch: Path) -> tuple[Path, bool]:
    """The checkpoint to hand to the stage, and whether it needs trust: the file itself, or,
    when loader settings are given, the file read with them into our format (as the
    workflow's import_guide rule does)."""
    loader = _loader_args(args)
    if all(loader[k] is None for k in ("arch", "num_classes", "mean", "std", "image_size")):
        return Path(args.checkpoint), args.trusted
    from lwise.guide.export import import_checkpoint

    return import_checkpoint(args.checkpoint, scratch / "guide.pt", **loader), False


def _score(args: argparse.Namespace) -> None:
    from lwise.guide.score import ScoringConfig, score

    out = Path(args.out)
    csv, _ = _dirmap(Path(args.images), out)
    overrides = {"batch_size": args.batch_size, "label_column": args.label_column,
                 "difficulty_scope": args.difficulty_scope}  # fmt: skip
    cfg = ScoringConfig.from_config({k: v for k, v in overrides.items() if v is not None})
    with tempfile.TemporaryDirectory() as scratch:
        model, trusted = _checkpoint(args, Path(scratch))
        scored = score(
            csv, model, out / "dirmap.csv", out / "accuracy.csv", out / "confusion_matrix.png",
            out / "probabilities.csv", cfg=cfg, workers=args.workers, trusted=trusted,
        )  # fmt: skip
    _wrote(out / "dirmap.csv", f"{len(scored)} images with {cfg.gt_logit_column} and difficulty")
    _wrote(out / "accuracy.csv", f"accuracy overall and per class ({scored['correct'].mean():.4f})")
    _wrote(out / "confusion_matrix.png", "the confusion matrix")
    _wrote(out / "probabilities.csv", "the model's softmax over the dataset's classes")


def _enhance(args: argparse.Namespace) -> None:
    from lwise.core.keys import set_name
    from lwise.stimuli.enhance import EnhanceConfig, enhance
    from lwise.stimuli.natural import NaturalConfig, write_natural

    out = Path(args.out)
    csv, key_root = _dirmap(Path(args.images), out)
    overrides = {"batch_size": args.batch_size, "steps": args.steps, "step_size": args.step_size,
                 "format": args.format, "direction": args.direction}  # fmt: skip
    given = {k: v for k, v in overrides.items() if v is not None}
    with tempfile.TemporaryDirectory() as scratch:
        model, trusted = _checkpoint(args, Path(scratch))
        if args.natural:
            natural = {k: v for k, v in given.items() if k == "format"}
            write_natural(
                csv, model, out / "natural", key_root=key_root, workers=args.workers,
                cfg=NaturalConfig.from_config(natural), trusted=trusted,
            )  # fmt: skip
            _wrote(out / "natural", "the natural images, preprocessed as the enhanced ones")
        for objective in args.objective:
            for eps in args.eps:
                target = out / set_name(objective, eps)
                done = enhance(
                    csv, model, target, key_root=key_root, eps=eps, objective=objective,
                    cfg=EnhanceConfig.from_config(given), workers=args.workers,
                    trusted=trusted,
                )  # fmt: skip
                _wrote(target, f"{len(done)} images, {objective} eps {eps:g}, and dirmap.csv")


def _export(args: argparse.Namespace) -> None:
    from lwise.guide.export import export_checkpoint

    weights, sidecar = export_checkpoint(args.checkpoint, args.out, **_loader_args(args))
    _wrote(weights, "the network's state dict (torchvision/timm keys)")
    _wrote(sidecar, "its architecture, classes, normalisation and input size")


def _import(args: argparse.Namespace) -> None:
    from lwise.guide.export import import_checkpoint

    import_checkpoint(args.checkpoint, args.out, **_loader_args(args))
    _wrote(args.out, "the guide model in lwise's format (loads without trust)")


def parser() -> argparse.ArgumentParser:
    from lwise.core.keys import OBJECTIVES

    top = argparse.ArgumentParser(prog="lwise", description=__doc__.split("\n\n")[0])
    top.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="difficulty scores, accuracy and confusion matrix")
    p.add_argument("images", help="a dirmap CSV or an image folder")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--label-column", help="dirmap column of the model's class ids (auto)")
    p.add_argument("--difficulty-scope", choices=["dataset", "class"])
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    _loader_options(p)
    p.set_defaults(run=_score)

    p = sub.add_parser("enhance", help="enhanced images, one set per objective and epsilon")
    p.add_argument("images", help="a dirmap CSV or an image folder")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="output folder (one subfolder per set)")
    p.add_argument("--eps", type=float, nargs="+", required=True, help="L2 budgets")
    p.add_argument("--objective", nargs="+", default=["logit"], choices=list(OBJECTIVES))
    p.add_argument("--steps", type=int, help="PGD steps (default max(1, round(2 eps)))")
    p.add_argument("--step-size", type=float)
    p.add_argument("--direction", choices=["enhance", "attack"])
    p.add_argument("--format", help="image format of the outputs (png, jpeg, ...)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--natural", action="store_true", help="also write the natural set")
    p.add_argument("--workers", type=int, default=0, help="data-loading processes")
    _loader_options(p)
    p.set_defaults(run=_enhance)

    p = sub.add_parser("export-checkpoint", help="safetensors state dict + JSON sidecar")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="<name>.safetensors (the sidecar: <name>.json)")
    _loader_options(p)
    p.set_defaults(run=_export)

    p = sub.add_parser("import-checkpoint", help="any checkpoint into lwise's format")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the .pt file to write")
    _loader_options(p)
    p.set_defaults(run=_import)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from lwise.core.config import ConfigError
    from lwise.data.dirmap import DirmapError
    from lwise.guide.checkpoints import CheckpointError

    try:
        args.run(args)
    except (CheckpointError, ConfigError, DirmapError, FileNotFoundError) as err:
        print(f"lwise {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
