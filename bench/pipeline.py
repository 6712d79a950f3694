"""End-to-end throughput of the GPU stages on files, exactly as the workflow's rules run them.

    python bench/pipeline.py                 # on a GPU (H200: about 5 minutes)
    python bench/pipeline.py --quick         # CPU smoke run

A JPEG dirmap (synthetic 298x256 photos-like images, as `bench/enhance.py` makes them) goes
in; PNG sets and dirmaps come out. Each job runs in a fresh Python process, as a Snakemake job
does, calling the same library function as the rule's script (`lwise.data.pixels.build`,
`lwise.stimuli.natural.write_natural`, `lwise.stimuli.enhance.enhance`,
`lwise.guide.score.score`); the torch.compile cache starts empty, so the first job of a kind
pays compilation and the second finds it cached. Beside each job: the GPU-only rate of the same
work on tensors already on the GPU (this process, warm), and their ratio. Then the machine's
limits: JPEG decoding on one core, on all cores and on the GPU; PNG encoding likewise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from enhance import make_model, random_images  # noqa: E402  (bench/enhance.py)

from lwise.data import dirmap  # noqa: E402
from lwise.data.loading import (  # noqa: E402
    DirmapImages,
    EncodedImages,
    collate_encoded,
    decode_images,
    preprocess_transform,
)
from lwise.guide.attacks import pgd  # noqa: E402
from lwise.guide.checkpoints import save_checkpoint  # noqa: E402
from lwise.guide.compiling import should_compile  # noqa: E402
from lwise.guide.load import load_guide  # noqa: E402
from lwise.stimuli._write import ImageWriter, to_uint8  # noqa: E402
from lwise.stimuli.settings import PNG_STRATEGIES, Encoding  # noqa: E402

JOB = """
import json, sys, time
t0 = time.perf_counter()
kind, args = sys.argv[1], json.loads(sys.argv[2])
if kind == "enhance":
    from lwise.stimuli.enhance import EnhanceConfig, enhance as run
    args["cfg"] = EnhanceConfig.from_config(args.pop("cfg"))
elif kind == "score":
    from lwise.guide.score import ScoringConfig, score as run
    args["cfg"] = ScoringConfig.from_config(args.pop("cfg"))
elif kind == "natural":
    from lwise.stimuli.natural import NaturalConfig, write_natural as run
    args["cfg"] = NaturalConfig.from_config(args.pop("cfg"))
else:
    from lwise.stimuli.natural import preprocess_stimuli as run
positional = args.pop("positional")
t1 = time.perf_counter()
run(*positional, **args)
t2 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "call_s": t2 - t1}))
"""


def _one_image(job: tuple[int, int, int, str]) -> None:
    """Smooth random image (coarse noise, bicubic upsampling), numpy and PIL only: forked
    workers must not run torch's thread pools."""
    seed, size, shape_w, path = job
    coarse = np.random.default_rng(seed).integers(0, 256, (size // 16, size // 16, 3), np.uint8)
    img = Image.fromarray(coarse).resize((shape_w, size + size // 7), Image.Resampling.BICUBIC)
    img.save(path, quality=90)


def jpeg_dirmap(root: Path, n: int, size: int, classes: int, processes: int) -> Path:
    """n JPEGs (quality 90, 4/3 x 8/7 of `size`, as bench/enhance.py) and their dirmap."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    jobs = [(i, size, size * 4 // 3, str(root / f"img/{i:05d}.jpg")) for i in range(n)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_one_image, jobs, chunksize=64)
    rows = [{"split": "test", "class": f"c{i % classes}", "class_num": i % classes,
             "im_path": f"img/{i:05d}.jpg"} for i in range(n)]  # fmt: skip
    dirmap.write(pd.DataFrame(rows), root / "dirmap.csv")
    return root / "dirmap.csv"


def job(kind: str, env: dict, **args) -> dict:
    """Run one stage function in a fresh process; wall time includes Python's start."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", JOB, kind, json.dumps(args, default=str)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{kind} job failed:\n{proc.stderr[-4000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_s": wall}


def gpu_only_enhance(guide, n, batch, eps, steps) -> float:
    """pgd alone at `batch` on tensors already on the device (warm), images/s."""
    gen = torch.Generator().manual_seed(1)
    x = random_images(batch, guide.input_size, gen).to(guide.device)
    y = torch.randint(0, guide.num_classes, (batch,), generator=gen).to(guide.device)
    kw = {"eps": eps, "step_size": 0.5, "steps": steps, "objective": "logit", "mode": guide.mode}
    pgd(guide.net, x, y, **kw)  # warm-up (compile)
    sync(guide.device)
    start = time.perf_counter()
    for _ in range(max(1, n // batch)):
        pgd(guide.net, x, y, **kw)
    sync(guide.device)
    return max(1, n // batch) * batch / (time.perf_counter() - start)


def gpu_only_score(guide, batch, repeats) -> float:
    x = torch.rand(batch, 3, guide.input_size, guide.input_size, device=guide.device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), guide.autocast():
        guide.net(x)
        sync(guide.device)
        start = time.perf_counter()
        for _ in range(repeats):
            guide.net(x)
        sync(guide.device)
    return repeats * batch / (time.perf_counter() - start)


def compare_decoding(guide, csv: Path, n: int) -> dict:
    """Scoring's logits with JPEGs decoded on the device against the CPU (PIL) path."""
    from lwise.guide.score import image_batches, model_outputs

    df = dirmap.read(csv).iloc[:n].reset_index(drop=True)
    where = {"size": guide.input_size, "device": guide.device, "batch": 256, "workers": 8,
             "label": "class_num"}  # fmt: skip
    logits = {
        decode: model_outputs(guide, image_batches(df, csv.parent, decode=decode, **where))
        for decode in ("auto", "cpu")
    }
    diff = (logits["auto"] - logits["cpu"]).abs()
    scale = logits["cpu"].abs().max().item()
    return {"images": n, "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item(),
            "max_abs_logit": scale, "same_argmax": (logits["auto"].argmax(1)
            == logits["cpu"].argmax(1)).float().mean().item()}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def limits(csv: Path, size: int, n: int, processes: int, device: torch.device, out: Path) -> dict:
    """Decode + preprocess on 1 core, on `processes` processes and on the device; PNG encoding
    of perturbed images on 1 core and on `processes` processes."""
    df = dirmap.read(csv).iloc[:n]
    data = DirmapImages(df, csv.parent, preprocess_transform(size))
    res = {}
    start = time.perf_counter()
    for i in range(min(n, 256)):
        data[i]
    res["decode_1_core"] = min(n, 256) / (time.perf_counter() - start)
    loader = DataLoader(data, batch_size=64, num_workers=processes)
    start = time.perf_counter()
    for _ in loader:
        pass
    res[f"decode_{processes}_processes"] = n / (time.perf_counter() - start)
    enc = DataLoader(EncodedImages(df, csv.parent, size, "class_num"), batch_size=256,
                     num_workers=8, collate_fn=collate_encoded)  # fmt: skip
    batches = [b[0] for b in enc]
    decode_images(batches[0], size, device)  # warm-up
    sync(device)
    start = time.perf_counter()
    for b in batches:
        decode_images(b, size, device)
    sync(device)
    res[f"decode_{device.type}"] = n / (time.perf_counter() - start)
    gen = torch.Generator().manual_seed(2)
    imgs = random_images(256, size, gen)
    imgs = to_uint8((imgs + 0.03 * torch.randn(imgs.shape, generator=gen)).clamp(0, 1)).numpy()
    for strategy in PNG_STRATEGIES:  # rle (ours) and default (zlib's, as L-WISE)
        encoding = Encoding.from_config({"png_strategy": strategy})
        for procs in (0, processes):
            folder = out / f"png_{strategy}{procs}"
            with ImageWriter(procs, encoding) as writer:
                count = 256 if procs == 0 else 2048
                start = time.perf_counter()
                for k in range(count // 256):
                    writer.write(imgs, [folder / f"{k}_{i}.png" for i in range(256)])
                writer.finish()
            where = f"{max(1, procs)}_{'core' if procs == 0 else 'processes'}"
            res[f"png_{strategy}_encode_{where}"] = count / (time.perf_counter() - start)
        sizes = [p.stat().st_size for p in folder.glob("*.png")]
        res[f"png_{strategy}_kib"] = sum(sizes) / len(sizes) / 1024
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    parser.add_argument("--images", type=int, default=4096, help="enhanced images per job")
    parser.add_argument("--score-images", type=int, default=16384)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.images, args.score_images, args.size, args.processes = 32, 64, 32, 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    root = Path(tempfile.mkdtemp(prefix="lwise-bench-"))
    env = {
        **os.environ,
        "TORCHINDUCTOR_CACHE_DIR": str(root / "compile-cache"),
        "TRITON_CACHE_DIR": str(root / "compile-cache/triton"),
        "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
    }
    if args.quick:
        env["CUDA_VISIBLE_DEVICES"] = ""
    os.environ.update({k: env[k] for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")})
    t = time.perf_counter()
    csv_all = jpeg_dirmap(root / "data", args.score_images, args.size, args.classes, args.processes)
    sub = dirmap.read(csv_all).iloc[: args.images]
    csv = root / "data/enhance.csv"
    dirmap.write(sub, csv)
    print(f"{args.score_images} JPEGs written in {time.perf_counter() - t:.1f} s", flush=True)
    torch.manual_seed(0)
    arch = argparse.Namespace(arch="small_cnn" if args.quick else "resnet50",
                              num_classes=args.classes)  # fmt: skip
    calib = random_images(64, args.size, torch.Generator().manual_seed(0))
    if args.quick:
        from lwise.guide.models import build_model

        model = build_model("small_cnn", args.classes, [0.5] * 3, [0.25] * 3).eval()
    else:
        model = make_model(arch, calib.to(device)).cpu()
    save_checkpoint(root / "model.pt", model, training_args={"image_size": args.size})
    model_path = str(root / "model.pt")
    workers = max(1, args.processes - 1)
    results: dict = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "images": args.images,
        "cores": args.processes,
        # Without cached bytecode each job compiles torch's modules again on import: on the
        # H200 machine (PYTHONDONTWRITEBYTECODE set, no .pyc installed) 8.9-11 s instead of 3-4.5.
        "bytecode_cached": not sys.flags.dont_write_bytecode,
    }
    if sys.flags.dont_write_bytecode:
        print(
            "note: PYTHONDONTWRITEBYTECODE is set: each job's imports include compiling "
            "bytecode; unset it (PYTHONPYCACHEPREFIX for a read-only install)",
            flush=True,
        )
    cache = [str(root / "pre.npy"), str(root / "pre.csv")]
    pre = job("preprocess", env, positional=[str(csv), model_path, *cache],
              key_root=str(csv.parent), workers=args.processes, trusted=False)  # fmt: skip
    results["preprocess"] = {**pre, "images_per_s": args.images / pre["wall_s"]}
    nat = job(
        "natural",
        env,
        positional=[str(csv), model_path, str(root / "natural")],
        key_root=str(csv.parent),
        cfg={},
        workers=workers,
        trusted=False,
        pixels=cache,
    )
    results["natural"] = {**nat, "images_per_s": args.images / nat["wall_s"]}
    guide = load_guide(model_path, trusted=False, fast=None, fast_dtype="float16")
    guide.model.requires_grad_(False)
    eager = load_guide(model_path, trusted=False, fast=None, fast_dtype="float16", compile=False)
    eager.model.requires_grad_(False)
    batch = 256 if device.type == "cuda" else 16
    gpu = gpu_only_score(guide, 256, 64)
    # The default (PIL, as L-WISE) twice, then nvjpeg (`scoring.decode: auto`).
    for which, decode in (("first", "cpu"), ("second", "cpu"), ("gpu_decode", "auto")):
        out = root / f"score_{which}"
        r = job(
            "score",
            env,
            positional=[
                str(csv_all),
                model_path,
                str(out / "d.csv"),
                str(out / "a.csv"),
                str(out / "c.png"),
            ],
            cfg={"decode": decode},
            workers=workers,
            trusted=False,
        )
        r.update(
            images_per_s=args.score_images / r["wall_s"],
            images_per_s_in_call=args.score_images / r["call_s"],
            gpu_only_images_per_s=gpu,
        )
        r["ratio"] = r["images_per_s"] / gpu
        results[f"score_{which}"] = r
        print("score", which, json.dumps(r), flush=True)
    results["decode_agreement"] = compare_decoding(guide, csv_all, min(args.score_images, 1024))
    print("GPU vs CPU decoding:", json.dumps(results["decode_agreement"]), flush=True)
    results["limits"] = limits(csv_all, args.size, min(args.score_images, 4096), args.processes,
                               device, root / "limits")  # fmt: skip
    print("limits (images/s):", json.dumps(results["limits"]), flush=True)
    for eps, steps in ((20.0, 40), (2.0, 4)):
        if args.quick:
            eps, steps = eps / 10, max(1, steps // 10)
        name = f"enhance_eps{eps:g}_steps{steps}"
        for which in ("first", "second"):
            r = job(
                "enhance",
                env,
                positional=[str(csv), model_path, str(root / f"{name}_{which}")],
                key_root=str(csv.parent),
                eps=eps,
                objective="logit",
                cfg={"steps": steps},
                workers=workers,
                trusted=False,
                pixels=cache,
            )
            r["images_per_s"] = args.images / r["wall_s"]
            r["images_per_s_in_call"] = args.images / r["call_s"]
            results[f"{name}_{which}"] = r
            print(name, which, json.dumps(r), flush=True)
        # After the jobs, so that the first job meets an empty compile cache; compiled or eager
        # as the job itself chose (`compile: auto`).
        compiled = device.type == "cuda" and should_compile("auto", args.images, steps) is None
        gpu = gpu_only_enhance(guide if compiled else eager, min(args.images, 1024 if steps > 10
                               else 4096), batch, eps, steps)  # fmt: skip
        print(f"{name}: GPU only, {'compiled' if compiled else 'eager'}: {gpu:.1f} images/s")
        for which in ("first", "second"):
            r = results[f"{name}_{which}"]
            r.update(gpu_only_images_per_s=gpu, ratio=r["images_per_s"] / gpu)
            r["ratio_in_call"] = r["images_per_s_in_call"] / gpu
    print(json.dumps(results, indent=1), flush=True)
    print("\n| job | end to end images/s (wall, fresh process) | in the call | GPU only | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for key, r in results.items():
        if isinstance(r, dict) and "gpu_only_images_per_s" in r:
            print(f"| {key} | {r['images_per_s']:.1f} ({r['wall_s']:.1f} s) | "
                  f"{r['images_per_s_in_call']:.1f} | {r['gpu_only_images_per_s']:.1f} | "
                  f"{r['ratio']:.2f} |")  # fmt: skip
    for key in ("preprocess", "natural"):
        print(
            f"| {key} | {results[key]['images_per_s']:.1f} ({results[key]['wall_s']:.1f} s) | | | |"
        )
    print("limits (images/s):", json.dumps({k: round(v, 1) for k, v in results["limits"].items()}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
