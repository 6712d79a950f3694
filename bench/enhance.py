"""Throughput of enhancement (reference vs fast PGD), difficulty scoring and adversarial training.

Run on a GPU:  python bench/enhance.py
CPU smoke run: python bench/enhance.py --quick

Unless --checkpoint is given, the guide model is a randomly initialised torchvision ResNet-50
whose BatchNorm statistics are first estimated on the benchmark images, so activations and
logits have realistic scales. Scoring reads synthetic JPEGs through
`lwise.data.loading`; training runs `lwise.guide.train.train` itself on such files. Timings are
wall-clock between torch.cuda.synchronize calls, after warm-up (which includes
torch.compile). The floor part times each convolution of
the fast model alone (forward and input gradient, replayed from CUDA graphs) to bound what any
fast mode built on these kernels can reach. The reference mode runs with PyTorch's default
precision flags (printed): cuDNN convolutions in TF32 on Ampere and later GPUs, as the original
robustness code ran there; --reference-precision ieee makes them strict fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide._distributed import Run
from lwise.guide._optim import make_optimizer
from lwise.guide.attacks import pgd
from lwise.guide.checkpoints import load_model
from lwise.guide.compiling import compile_fast
from lwise.guide.fast import FAST_DTYPES, ConvReLU, LiveFolded, prepare_fast
from lwise.guide.models import ImageClassifier, Normalize, build_model
from lwise.guide.pooling import GatherMaxPool2d
from lwise.guide.train import TrainConfig, _train_epoch, train

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PARTS = ("enhance", "floor", "scoring", "training", "train_step")
TRAIN_CLASSES = 16


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet50", help="torchvision classification model")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="guide-model weights for the enhancement and scoring parts (random init if absent:"
        " gradients of a random deep network are far more sensitive to bf16 than a trained one's)",
    )
    parser.add_argument(
        "--trusted", action="store_true", help="allow full unpickling of --checkpoint"
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=512, help="enhanced images per mode")
    # L-WISE ImageNet setting: eps 20, 40 steps of 0.5 (its README and
    # scripts/batch_enhance/batch_enhance_imagenet16.sh), logit objective.
    parser.add_argument("--eps", type=float, default=20.0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument("--objective", default="logit")
    parser.add_argument("--reference-batch", type=int, default=32)  # enhance.py default
    parser.add_argument(
        "--reference-precision",
        choices=("default", "ieee"),
        default="default",
        help="fp32 convolutions of the reference run: PyTorch's default (TF32 on cuDNN, as the "
        "original code ran on recent GPUs) or strict IEEE fp32",
    )
    parser.add_argument("--fast-batches", default="64,128,256")
    parser.add_argument(
        "--fast-dtypes",
        default="float16,bfloat16",
        help="comma-separated half precisions of the fast mode, each measured (first: scoring)",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the fast model (default: on CUDA only)",
    )
    parser.add_argument(
        "--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs"
    )
    parser.add_argument(
        "--compare-pooling",
        action="store_true",
        help="enhance part: also time the first fast dtype at its best batch with ATen's max "
        "pooling in place of GatherMaxPool2d (compiled: inductor's own pooling backward)",
    )
    parser.add_argument(
        "--compare-update",
        action="store_true",
        help="enhance part: also time the first fast dtype at its best batch with pgd's "
        "compile_update the other way (by default on exactly when the model is compiled)",
    )
    parser.add_argument("--score-images", type=int, default=1024)
    parser.add_argument("--score-batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--train-images", type=int, default=2048)
    parser.add_argument("--train-batch", type=int, default=128)
    # robustness training defaults (its defaults.py: 7 attack steps) with attack lr 0.5, as in
    # L-WISE's README recipes for robust_transfer_learning.py.
    parser.add_argument("--train-eps", type=float, default=3.0)
    parser.add_argument("--train-steps", type=int, default=7)
    parser.add_argument("--train-step-size", type=float, default=0.5)
    parser.add_argument(
        "--train-compile", choices=("auto", "true", "false"), default="auto",
        help="guide.train.compile for the training part (auto: eager at this size)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated subset of " + ",".join(PARTS) + " (each compiles its own graphs)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.device = "cpu"
        args.size, args.images, args.steps, args.eps = 64, 8, 2, 1.0
        args.reference_batch, args.fast_batches = 4, "4,8"
        args.score_images, args.score_batch, args.workers = 16, 8, 2
        args.train_images, args.train_batch, args.train_steps = 16, 8, 2
    args.fast_batches = [int(b) for b in args.fast_batches.split(",")]
    args.fast_dtypes = args.fast_dtypes.split(",")
    if set(args.fast_dtypes) - set(FAST_DTYPES):
        parser.error(f"--fast-dtypes: valid values are {', '.join(FAST_DTYPES)}")
    args.parts = args.parts.split(",")
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; valid: {', '.join(PARTS)}")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[object, float]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


@contextlib.contextmanager
def fp32_precision(precision: str) -> Iterator[None]:
    """Within the block, fp32 convolutions and matmuls use `precision` ("default": unchanged)."""
    if precision == "default":
        yield
        return
    # The new-style flags only: mixing them with the legacy allow_tf32 ones is an error.
    flags = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)
    saved = [flag.fp32_precision for flag in flags]
    try:
        for flag in flags:
            flag.fp32_precision = precision
        yield
    finally:
        for flag, value in zip(flags, saved, strict=True):
            flag.fp32_precision = value


def random_images(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random images in [0, 1]: coarse noise upsampled, so they have spatial structure."""
    coarse = torch.rand(n, 3, max(2, size // 16), max(2, size // 16), generator=gen)
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


def make_model(args: argparse.Namespace, calibration: torch.Tensor) -> ImageClassifier:
    """Random-init network with BatchNorm running statistics averaged over `calibration`."""
    net = torchvision.models.get_model(args.arch, weights=None, num_classes=args.num_classes)
    model = ImageClassifier(
        net, Normalize(IMAGENET_MEAN, IMAGENET_STD), arch=args.arch, num_classes=args.num_classes
    ).to(calibration.device)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momentum = norms[0].momentum
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for batch in calibration.split(32):
            model(batch)
    # Back to the usual momentum: with None, a training step reads the batch count on the host,
    # which breaks torch.compile graphs.
    for norm in norms:
        norm.momentum = momentum
    return model.eval()


def gt_logits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [
                model(xb).gather(1, yb[:, None]).squeeze(1)
                for xb, yb in zip(x.split(batch), y.split(batch), strict=True)
            ]
        )


def enhance_all(
    model, x, y, batch: int, mode: str, dtype: str | None, args, steps=None, compile_update=None
):
    if compile_update is None:  # as enhancement does: with a compiled model
        compile_update = mode == "fast" and fast_compiled(args)
    kwargs = {
        "compile_update": compile_update,
        "eps": args.eps,
        "step_size": args.step_size,
        "steps": args.steps if steps is None else steps,
        "objective": args.objective,
        "mode": mode,
        **({"fast_dtype": dtype} if dtype else {}),
    }
    return torch.cat(
        [
            pgd(model, xb, yb, **kwargs)
            for xb, yb in zip(x.split(batch), y.split(batch), strict=True)
        ]
    )


def fast_compiled(args) -> bool:
    """Whether `prepare_fast` compiles under these arguments."""
    return args.compile if args.compile is not None else args.device.startswith("cuda")


def with_aten_pooling(model: ImageClassifier, args) -> nn.Module:
    """The fast model as `prepare_fast` makes it, but with plain nn.MaxPool2d pooling."""
    fast = prepare_fast(model, compile=False)
    for name, module in list(fast.net.named_modules()):
        if isinstance(module, GatherMaxPool2d):
            plain = nn.MaxPool2d(module.kernel_size, module.stride, module.padding)
            fast.net.set_submodule(name, plain)
    return compile_fast(fast, args.compile_mode) if fast_compiled(args) else fast


def bench_enhance(args, device, model, fast_models, x, y, aten_pooling=None) -> dict:
    clean = gt_logits(model, x, y, args.reference_batch)
    gains = {}

    def run(net, batch: int, mode: str, dtype: str | None = None, compile_update=None) -> dict:
        def attack(images, labels, steps=None):
            return enhance_all(net, images, labels, batch, mode, dtype, args, steps, compile_update)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # Warm-up on one batch: torch.compile, cuDNN autotuning.
        timed(device, lambda: attack(x[:batch], y[:batch], 2))
        out, seconds = timed(device, lambda: attack(x, y))
        # Gains are always measured with the fp32 reference model.
        name = "reference" if mode == "reference" else f"fast {dtype}"
        gains[name, batch] = gt_logits(model, out, y, args.reference_batch) - clean
        row = {
            "mode": name,
            "batch": batch,
            "images_per_s": len(x) / seconds,
            "gt_logit_gain": gains[name, batch].mean().item(),
        }
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(
            f"  {name:<14} batch {batch:>4}: {row['images_per_s']:8.1f} images/s, "
            f"mean GT-logit gain {row['gt_logit_gain']:.4f}"
            + (f", peak {row['peak_gib']:.1f} GiB" if "peak_gib" in row else ""),
            flush=True,
        )
        return row

    print(
        f"enhancement: {len(x)} images {args.size}px, eps {args.eps}, {args.steps} steps of "
        f"{args.step_size}, objective {args.objective}",
        flush=True,
    )
    with fp32_precision(args.reference_precision):
        ref = run(model, args.reference_batch, "reference")
    results = {"reference": ref, "fast": {}}
    for dtype, fast_model in fast_models.items():
        rows = [run(fast_model, b, "fast", dtype) for b in args.fast_batches]
        best = max(rows, key=lambda r: r["images_per_s"])
        # PGD trajectories on a random-init network are chaotic (fp32 runs with other cuDNN
        # algorithms differ per image), so the gap between mean gains comes with its standard
        # error.
        diff = gains[best["mode"], best["batch"]] - gains["reference", ref["batch"]]
        scale = abs(ref["gt_logit_gain"])
        results["fast"][dtype] = {
            "best": best,
            "all": rows,
            "speedup": best["images_per_s"] / ref["images_per_s"],
            "gain_rel_diff": diff.mean().item() / scale,
            "gain_rel_diff_stderr": diff.std().item() / len(diff) ** 0.5 / scale,
        }
        r = results["fast"][dtype]
        print(
            f"  fast {dtype} (batch {best['batch']}) / reference: {r['speedup']:.2f}x images/s;"
            f" GT-logit gain relative difference {100 * r['gain_rel_diff']:+.2f} % "
            f"(standard error {100 * r['gain_rel_diff_stderr']:.2f} %)",
            flush=True,
        )
    if aten_pooling is not None:
        dtype = args.fast_dtypes[0]
        best = results["fast"][dtype]["best"]
        aten = run(aten_pooling, best["batch"], "fast", dtype)
        ratio = best["images_per_s"] / aten["images_per_s"]
        results["aten_pooling"] = {**aten, "gather_over_aten": ratio}
        print(f"  ... that run with ATen's max pooling; GatherMaxPool2d / ATen: {ratio:.3f}x")
    if args.compare_update:
        dtype = args.fast_dtypes[0]
        best = results["fast"][dtype]["best"]
        update = not fast_compiled(args)
        other = run(fast_models[dtype], best["batch"], "fast", dtype, compile_update=update)
        ratio = best["images_per_s"] / other["images_per_s"]
        results["other_update"] = {**other, "compile_update": update, "ratio": ratio}
        print(f"  ... that run with compile_update={update}; ratio {ratio:.3f}x")
    return results


def conv_calls(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Size]]:
    """Every convolution that one forward pass of `model` on `x` runs, with its input shape."""
    net = getattr(model, "_orig_mod", model)  # hooks need the uncompiled module
    in_fused = {id(m.conv) for m in net.modules() if isinstance(m, ConvReLU)}
    calls, hooks = [], []
    for m in net.modules():
        if isinstance(m, ConvReLU) or (isinstance(m, nn.Conv2d) and id(m) not in in_fused):
            conv = m.conv if isinstance(m, ConvReLU) else m
            hooks.append(
                m.register_forward_hook(lambda _, i, __, c=conv: calls.append((c, i[0].shape)))
            )
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def kernel_seconds(device: torch.device, fn: Callable[[], object], repeats: int) -> float:
    """GPU time of one `fn()` call: replayed from a CUDA graph, so Python and launch overheads
    drop out (plain wall-clock elsewhere)."""
    fn()  # cuDNN autotuning, outside the capture
    if device.type != "cuda":
        return timed(device, lambda: [fn() for _ in range(repeats)])[1] / repeats
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            fn()
    graph.replay()
    return timed(device, graph.replay)[1] / repeats


def bench_floor(args, device, fast_model, dtype: str, batch: int, reference: dict | None) -> dict:
    """The enhancement speed that the fast model's convolution kernels alone allow.

    Each convolution's forward and input-gradient kernels (cuDNN, as autotuned) are timed at
    `batch` in `dtype`, channels-last, and summed over one enhancement: `steps` forward and
    backward passes plus the final forward. Everything else the fast mode runs (ReLU backward,
    residual adds, pooling, the PGD update) is left out, so no implementation on these kernels
    can be faster.
    """
    half = FAST_DTYPES[dtype]
    x = torch.rand(batch, 3, args.size, args.size, device=device)
    with torch.autocast(device.type, dtype=half):
        calls = conv_calls(fast_model, x.contiguous(memory_format=torch.channels_last))
    repeats = 2 if args.quick else 10
    fwd_s = bwd_s = 0.0
    for conv, shape in calls:
        inp = torch.randn(shape, device=device, dtype=half).contiguous(
            memory_format=torch.channels_last
        )
        weight = conv.weight.detach().to(half)
        geometry = (conv.stride, conv.padding, conv.dilation)

        def forward(inp=inp, weight=weight, geometry=geometry, groups=conv.groups):
            return F.conv2d(inp, weight, None, *geometry, groups)

        grad = torch.randn_like(forward())

        def input_grad(inp=inp, weight=weight, geometry=geometry, grad=grad, groups=conv.groups):
            return torch.ops.aten.convolution_backward(
                grad, inp, weight, None, *geometry, False, (0, 0), groups, (True, False, False)
            )

        fwd_s += kernel_seconds(device, forward, repeats)
        bwd_s += kernel_seconds(device, input_grad, repeats)
    per_batch = args.steps * (fwd_s + bwd_s) + fwd_s
    result = {
        "batch": batch,
        "convolutions": len(calls),
        "forward_ms": 1e3 * fwd_s,
        "input_grad_ms": 1e3 * bwd_s,
        "images_per_s": batch / per_batch,
    }
    ratio = ""
    if reference:
        result["ratio_to_reference"] = result["images_per_s"] / reference["images_per_s"]
        ratio = f" = {result['ratio_to_reference']:.2f}x the reference"
    print(
        f"convolution floor, fast {dtype}, batch {batch}: {len(calls)} convolutions, forward "
        f"{result['forward_ms']:.2f} ms + input gradient {result['input_grad_ms']:.2f} ms per "
        f"pass -> at most {result['images_per_s']:.1f} images/s{ratio}",
        flush=True,
    )
    return result


def synthetic_dirmap(
    root: Path, splits: dict[str, int], num_classes: int, size: int, gen: torch.Generator
) -> pd.DataFrame:
    """Write JPEGs (quality 90) and `root/dirmap.csv`; labels cycle through the classes."""
    rows = []
    # Larger than the crop and not square, as photos are: Resize and CenterCrop both work.
    shape = (size * 4 // 3, size + size // 7)
    for split, count in splits.items():
        for first in range(0, count, 64):
            for offset, img in enumerate(random_images(min(64, count - first), size, gen)):
                i = first + offset
                im_path = f"{split}/{i:05d}.jpg"
                (root / split).mkdir(parents=True, exist_ok=True)
                array = (img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
                Image.fromarray(array).resize(shape).save(root / im_path, quality=90)
                label = i % num_classes
                rows.append({"split": split, "class": f"c{label}", "class_num": label,
                             "im_path": im_path})  # fmt: skip
    return dirmap.write(pd.DataFrame(rows), root / "dirmap.csv")


def bench_scoring(args, device, fast_model, dtype: str, gen) -> dict:
    """Forward-only logits of JPEG files as `lwise.guide.score` computes them, decoding included."""
    print(
        f"scoring: {args.score_images} JPEGs, batch {args.score_batch}, {args.workers} workers,"
        f" {dtype}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        df = synthetic_dirmap(Path(tmp), {"test": args.score_images}, args.num_classes,
                              args.size, gen)  # fmt: skip
        loader = DataLoader(
            DirmapImages(df, tmp, eval_transform(args.size)),
            batch_size=args.score_batch,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )

        # The numerics of lwise.guide.score.model_outputs on a fast guide; that guide comes from
        # a checkpoint file (lwise.guide.load), so the model prepared here runs directly.
        def score_epoch() -> torch.Tensor:
            logits = []
            with torch.no_grad(), torch.autocast(device.type, dtype=FAST_DTYPES[dtype]):
                for images, _, _ in loader:
                    images = images.to(device, non_blocking=True)
                    logits.append(
                        fast_model(images.contiguous(memory_format=torch.channels_last))
                        .float()
                        .cpu()
                    )
            return torch.cat(logits)

        timed(device, score_epoch)  # warm-up: compile, worker start-up paths, page cache
        _, seconds = timed(device, score_epoch)
        batch = next(iter(loader))[0].to(device).contiguous(memory_format=torch.channels_last)

        def forward_only() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=FAST_DTYPES[dtype]):
                for _ in range(len(loader)):
                    fast_model(batch)

        timed(device, forward_only)
        _, model_seconds = timed(device, forward_only)
    result = {
        "images_per_s": args.score_images / seconds,
        "model_only_images_per_s": len(loader) * len(batch) / model_seconds,
    }
    print(
        f"  with JPEG decoding: {result['images_per_s']:.1f} images/s; "
        f"model alone: {result['model_only_images_per_s']:.1f} images/s",
        flush=True,
    )
    return result


def bench_training(args, gen) -> dict:
    """Three epochs of `lwise.guide.train.train` (PGD adversarial training, bf16 on CUDA) on
    synthetic JPEGs: the second (warm, files in, no validation) is the epoch rate; the third
    ends with a small validation and the best-model checkpoint, timed with it."""
    val_images = 8
    print(
        f"adversarial training (lwise.guide.train): {args.train_images} images "
        f"{args.size}px, batch "
        f"{args.train_batch}, eps {args.train_eps}, {args.train_steps} steps",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        splits = {"train": args.train_images, "val": val_images}
        synthetic_dirmap(root, splits, TRAIN_CLASSES, args.size, gen)
        cfg = TrainConfig.from_config(
            {
                "arch": args.arch,
                "image_size": args.size,
                "epochs": 3,
                "batch_size": args.train_batch,
                "val_batch_size": val_images,
                "workers": args.workers,
                "eps": args.train_eps,
                "attack_steps": args.train_steps,
                "attack_lr": args.train_step_size,
                "eval_every": 3,
                "seed": args.seed,
                "compile": {"true": True, "false": False}.get(args.train_compile, "auto"),
            }
        )
        metrics = train(
            root / "dirmap.csv", root / "model.pt", root / "metrics.csv", root / "state", cfg
        )
    seconds = metrics["seconds"]
    result = {
        "images_per_s": args.train_images / seconds.iloc[1],
        "with_validation_images_per_s": args.train_images / seconds.iloc[2],
    }
    print(
        f"  warm epoch {result['images_per_s']:.1f} images/s; with validation and checkpoint"
        f" {result['with_validation_images_per_s']:.1f}",
        flush=True,
    )
    return result


def robustness_step(model, opt, x, y, eps: float, steps: int, step_size: float) -> None:
    """One training step of the robustness library's `train_loop` with its defaults, rewritten
    here (it is not a dependency): the model's `make_adv` call attacks in eval mode with the L2
    step (gradient over its per-image L2 norm + 1e-10, times the step size; renorm to eps; clamp
    to [0, 1]) and keeps each image's best iterate (`use_best`, one more forward at the end),
    then the cross-entropy update in train mode; fp32 with PyTorch's default precision flags."""
    model.eval()
    adv, best, best_loss = x.clone(), None, None

    def keep_best(losses: torch.Tensor, adv: torch.Tensor) -> None:  # its `replace_best`
        nonlocal best, best_loss
        if best_loss is None:
            best, best_loss = adv.clone(), losses.clone()
            return
        better = best_loss < losses
        best_loss = torch.where(better, losses, best_loss)
        best = torch.where(better[:, None, None, None], adv, best)

    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        losses = F.cross_entropy(model(adv), y, reduction="none")
        (grad,) = torch.autograd.grad(losses.mean(), [adv])
        keep_best(losses.detach(), adv.detach())
        norm = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        stepped = adv.detach() + grad / (norm + 1e-10) * step_size
        adv = (x + (stepped - x).renorm(p=2, dim=0, maxnorm=eps)).clamp(0, 1)
    with torch.no_grad():
        keep_best(F.cross_entropy(model(adv), y, reduction="none"), adv)
    model.train()
    loss = F.cross_entropy(model(best), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _repeat(fn: Callable[[], object], times: int) -> None:
    for _ in range(times):
        fn()


def _attack_split(model, x, y, cfg, device: torch.device, repeats: int) -> dict:
    """Where our step's time goes: its attack alone on the live model (BatchNorm unfolded), on
    the folded copy the step uses (`LiveFolded`, refreshed each time), and on that copy
    compiled."""
    out = {}
    folded = LiveFolded(model.eval(), compile_batch=len(x))
    variants = (
        ("attack_live", lambda: model),
        ("attack_folded", lambda: folded.refresh(model)),
        ("attack_folded_compiled", lambda: folded.refresh(model, len(x))),
    )
    for key, net in variants:
        model.eval()

        def attack(net=net):
            return pgd(
                net(), x, y, eps=cfg.eps, step_size=cfg.attack_lr, steps=cfg.attack_steps,
                objective="cross_entropy", direction="attack", mode="fast",
                fast_dtype="bfloat16",
            )  # fmt: skip

        attack()
        _, seconds = timed(device, functools.partial(_repeat, attack, repeats))
        out[key] = len(x) * repeats / seconds
        print(f"  its attack alone ({key}): {out[key]:.1f} images/s", flush=True)
    model.train()
    return out


def bench_train_step(args, device: torch.device, gen) -> dict:
    """Images/s of a training step on tensors already on the device: ours (`_train_epoch`:
    bf16 autocast, channels_last, fast-mode attack on a GPU) and robustness's
    (`robustness_step`), same model, batch, eps and attack steps, in this one run."""
    batch, repeats = args.train_batch, 3 if args.quick else 10
    x = random_images(batch, args.size, gen).to(device)
    y = torch.randint(0, TRAIN_CLASSES, (batch,), generator=gen).to(device)
    cfg = TrainConfig.from_config({
        "arch": args.arch, "image_size": args.size, "batch_size": batch, "eps": args.train_eps,
        "attack_steps": args.train_steps, "attack_lr": args.train_step_size,
    })  # fmt: skip
    result = {"batch": batch, "eps": args.train_eps, "steps": args.train_steps}
    run = Run(device, 0, 1)
    # ours_compiled: the training attack compiled (`guide.train.compile`), GPU only.
    names = ("robustness", "ours", "ours_compiled") if run.fast else ("robustness", "ours")
    for name in names:
        torch.manual_seed(args.seed)
        model = build_model(args.arch, TRAIN_CLASSES, IMAGENET_MEAN, IMAGENET_STD).to(device)
        opt, _ = make_optimizer(model, cfg)
        if name.startswith("ours"):
            if run.fast:
                model = model.to(memory_format=torch.channels_last)
            batches = [(x, y, None)] * repeats
            compiled = batch if name == "ours_compiled" else None
            folded = LiveFolded(model, compile_batch=compiled) if run.fast else None
            step = functools.partial(
                _train_epoch, model, model, batches, opt, cfg, run, None, "train step", folded
            )
        else:
            one = functools.partial(
                robustness_step, model, opt, x, y, cfg.eps, cfg.attack_steps, cfg.attack_lr
            )
            step = functools.partial(_repeat, one, repeats)
        _, warm = timed(device, step)  # warm-up (cuDNN algorithms, compilation)
        _, seconds = timed(device, step)
        result[name] = batch * repeats / seconds
        print(f"  training step, {name}: {result[name]:.1f} images/s (warm-up {warm:.1f} s)",
              flush=True)  # fmt: skip
        if name == "ours" and run.fast:
            result.update(_attack_split(model, x, y, cfg, device, repeats))
    for name in names[1:]:
        result[f"ratio_{name}"] = result[name] / result["robustness"]
        print(f"  {name} / robustness: {result[f'ratio_{name}']:.2f}x", flush=True)
    return result


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # for both modes alike
    torch.manual_seed(args.seed)  # the random-init weights
    gen = torch.Generator().manual_seed(args.seed)
    x = random_images(args.images, args.size, gen).to(device)
    y = torch.randint(0, args.num_classes, (args.images,), generator=gen).to(device)
    if args.checkpoint:
        model = load_model(
            args.checkpoint,
            arch=args.arch,
            num_classes=args.num_classes,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            trusted=args.trusted,
            map_location=device,
        )
    else:
        model = make_model(args, x[:64])
    # One prepared (compiled) model per half precision, as each job of the workflow has one.
    fast_models = {
        dtype: prepare_fast(model, compile=args.compile, compile_mode=args.compile_mode)
        for dtype in args.fast_dtypes
    }
    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cudnn_conv_fp32": torch.backends.cudnn.conv.fp32_precision,
        "matmul_fp32": torch.backends.cuda.matmul.fp32_precision,
        "reference_precision": args.reference_precision,
        "arch": args.arch,
        "weights": str(args.checkpoint) if args.checkpoint else "random init",
    }
    print(" ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    results = {"env": env}
    if "enhance" in args.parts:
        aten = with_aten_pooling(model, args) if args.compare_pooling else None
        results["enhance"] = bench_enhance(args, device, model, fast_models, x, y, aten)
    if "floor" in args.parts:
        dtype = args.fast_dtypes[0]
        enhance = results.get("enhance")
        batch = enhance["fast"][dtype]["best"]["batch"] if enhance else max(args.fast_batches)
        reference = enhance["reference"] if enhance else None
        results["floor"] = bench_floor(args, device, fast_models[dtype], dtype, batch, reference)
    if "scoring" in args.parts:
        dtype = args.fast_dtypes[0]
        results["scoring"] = bench_scoring(args, device, fast_models[dtype], dtype, gen)
    if "training" in args.parts:
        results["training"] = bench_training(args, gen)
    if "train_step" in args.parts:
        results["train_step"] = bench_train_step(args, device, gen)
    if "training" in args.parts and "train_step" in args.parts:
        step = results["train_step"]
        compiled = args.train_compile == "true" and "ours_compiled" in step
        ours = "ours_compiled" if compiled else "ours"
        ratio = results["training"]["images_per_s"] / step[ours]
        print(f"warm epoch on files / our training step ({ours}): {ratio:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
