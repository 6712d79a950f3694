"""Stage 6: enhancement: PGD that raises the ground-truth evidence, one image set per epsilon.

As L-WISE `enhance.py`: images are preprocessed (shorter side, centre crop) exactly like the
natural set, perturbed within an L2 (or L-inf) ball, and saved as 8-bit images under the same
relative key (`im_path`) in every version, so one key names an image in all its versions.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from lwise.core.atomic import atomic_path
from lwise.data import dirmap
from lwise.data.imaging import FORMATS
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide.attacks import pgd, steps_for_eps
from lwise.guide.augment import MultiView
from lwise.guide.checkpoints import load_model
from lwise.guide.models import prepare_fast
from lwise.guide.score import label_column_for, model_input_size

log = logging.getLogger(__name__)


def image_keys(df: pd.DataFrame, csv: Path, key_root: Path, fmt: str) -> pd.Series:
    """Each image's path relative to `key_root`, with the output format's extension."""
    ext = FORMATS[fmt]
    return df["im_path"].map(
        lambda p: (
            Path(os.path.relpath((csv.parent / p).resolve(), key_root.resolve()))
            .with_suffix(ext)
            .as_posix()
        )
    )


def quantise(x: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file holds: round(255·x) (torchvision `save_image`), back in [0, 1]."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def _save(batch: torch.Tensor, paths: list[Path], fmt: str, quality: int) -> None:
    arrays = (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    kwargs = {"quality": quality} if fmt == "jpeg" else {}

    def one(item):
        array, path = item
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array)).save(path, **kwargs)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, zip(arrays, paths, strict=True)))


def _load(dirmap_csv, model_path, label_column, image_size, trusted):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(model_path, trusted=trusted).to(device)
    df = dirmap.read(dirmap_csv)
    label = label_column_for(df, model.num_classes, label_column)
    size = image_size or model_input_size(model)
    return device, model, df, label, size


def write_natural(
    dirmap_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    key_root: str | os.PathLike,
    image_size: int,
    fmt: str = "png",
    jpeg_quality: int = 95,
    batch_size: int = 64,
    workers: int = 4,
) -> pd.DataFrame:
    """The natural stimuli: the same preprocessing and 8-bit encoding as the enhanced ones."""
    csv = Path(dirmap_csv)
    df = dirmap.read(csv)
    keys = image_keys(df, csv, Path(key_root), fmt)
    data = DirmapImages(df, csv.parent, eval_transform(image_size))
    with atomic_path(out_dir, directory=True) as tmp:
        for x, _, idx in tqdm(
            DataLoader(data, batch_size=batch_size, num_workers=workers), desc="natural"
        ):
            _save(x, [tmp / keys[int(i)] for i in idx], fmt, jpeg_quality)
        out = df.assign(im_path=keys, orig_im_path=df.get("orig_im_path", df["im_path"]))
        dirmap.write(out, tmp / "dirmap.csv")
    return out


def enhance(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    key_root: str | os.PathLike,
    eps: float,
    objective: str = "logit",
    steps: int | None = None,
    step_size: float = 0.5,
    constraint: str = "2",
    direction: str = "enhance",
    diverge_from: list[str] | None = None,
    views: dict | None = None,
    label_column: str = "auto",
    image_size: int | None = None,
    fmt: str = "png",
    jpeg_quality: int = 95,
    batch_size: int = 64,
    workers: int = 4,
    mode: str | None = None,
    fast_dtype: str = "float16",
    trusted: bool = False,
) -> pd.DataFrame:
    """Enhance (or, with direction="attack", disrupt) every image of the dirmap.

    Steps default to max(1, round(2·eps)) with step 0.5, so step·steps = eps (L-WISE batch
    scripts). The output dirmap records, per image, the L2 distance actually achieved between
    the saved natural and enhanced 8-bit images, and the ground-truth-logit gain between them.
    """
    csv = Path(dirmap_csv)
    device, model, df, label, size = _load(csv, model_path, label_column, image_size, trusted)
    steps = steps or steps_for_eps(eps)
    mode = mode or ("fast" if device.type == "cuda" else "reference")
    net = prepare_fast(model) if mode == "fast" else model.eval().requires_grad_(False)

    competitors = None
    if objective == "logit_diverge":
        competitors = torch.zeros(model.num_classes, dtype=torch.bool, device=device)
        if diverge_from:  # as the reference: named classes compete, and their own rows go
            by_name = dict(zip(df["class"], df[label], strict=False))
            missing = sorted(set(diverge_from) - set(by_name))
            if missing:
                raise ValueError(f"diverge_from class(es) {missing} not in {csv}")
            competitors[[int(by_name[c]) for c in diverge_from]] = True
            df = df[~df["class"].isin(diverge_from)].reset_index(drop=True)
        else:  # the other classes present in the dirmap
            competitors[torch.as_tensor(sorted(df[label].unique()), device=device)] = True
    multiview = MultiView(**views) if views else None

    keys = image_keys(df, csv, Path(key_root), fmt)
    data = DirmapImages(df, csv.parent, eval_transform(size), label)
    loader = DataLoader(
        data, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    stats = np.zeros((len(df), 3), dtype=np.float64)  # l2, gt logit natural, gt logit enhanced
    with atomic_path(out_dir, directory=True) as tmp:
        for x, y, idx in tqdm(loader, desc=f"{objective} eps={eps:g}"):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            adv = pgd(
                net, x, y, eps=eps, step_size=step_size, steps=steps, constraint=constraint,
                objective=objective, direction=direction, competitors=competitors,
                views=multiview, mode=mode, fast_dtype=fast_dtype,
            )  # fmt: skip
            natural_q, adv_q = quantise(x), quantise(adv)
            with torch.no_grad():
                both = net(
                    torch.cat([natural_q, adv_q]).contiguous(memory_format=torch.channels_last)
                )
            gt = both.float().gather(1, torch.cat([y, y])[:, None])[:, 0].view(2, -1)
            l2 = (adv_q - natural_q).flatten(1).norm(dim=1)
            stats[idx.numpy()] = torch.stack([l2, gt[0], gt[1]], 1).cpu().numpy()
            _save(adv, [tmp / keys[int(i)] for i in idx], fmt, jpeg_quality)
        out = df.assign(
            im_path=keys,
            orig_im_path=df.get("orig_im_path", df["im_path"]),
            eps=eps,
            objective=objective,
            direction=direction,
            l2_distance=stats[:, 0],
            gt_logit_natural=stats[:, 1],
            gt_logit_enhanced=stats[:, 2],
            logit_gain=stats[:, 2] - stats[:, 1],
        )
        dirmap.write(out, tmp / "dirmap.csv")
    log.info(
        "%s eps=%g (%d steps of %g): mean L2 %.3f, mean logit gain %.3f",
        objective, eps, steps, step_size, out["l2_distance"].mean(), out["logit_gain"].mean(),
    )  # fmt: skip
    return out


def contact_sheet(
    versions: dict[str, str | os.PathLike], out_png: str | os.PathLike, per_class: int = 2
) -> None:
    """A grid: rows are a few images per class, columns the versions (natural, each epsilon)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = dirmap.read(Path(next(iter(versions.values()))) / "dirmap.csv")
    rows = first.sort_values(["class_num", "im_path"]).groupby("class_num").head(per_class)
    fig, axes = plt.subplots(
        len(rows), len(versions), figsize=(1.6 * len(versions), 1.6 * len(rows)), squeeze=False
    )
    for r, (_, row) in enumerate(rows.iterrows()):
        for c, (name, folder) in enumerate(versions.items()):
            ax = axes[r][c]
            path = Path(folder) / row["im_path"]
            if path.exists():
                with Image.open(path) as img:
                    ax.imshow(img.convert("RGB"))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
            if c == 0:
                ax.set_ylabel(str(row["class"]), fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
