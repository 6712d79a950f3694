"""Stage 6: enhancement: PGD that raises the ground-truth evidence, one image set per epsilon.

As L-WISE `enhance.py`: images are preprocessed (shorter side, centre crop) exactly like the
natural set (`lwise.stimuli.natural`), perturbed within an L2 (or L-inf) ball, and saved as
8-bit images under the same key (`im_path`) in every version, so one key names an image in all
its versions.

A job is a pipeline that keeps the GPU busy: the preprocessed pixels (`lwise.data.pixels`,
decoded once per dataset) are read ahead in a thread, the attack runs on the GPU, each result
is copied off it in a second thread while the next batch is attacked, and PNG encoding and
writing run behind it in worker processes (`lwise.stimuli._write.ImageWriter`).
Without a pixel cache the images are decoded ahead in DataLoader workers. Where the fast mode's
half precision overflows, the batch is enhanced again in float32 (`_attack`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from lwise.core.atomic import atomic_path
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.loading import to_unit
from lwise.data.pixels import pixel_batches
from lwise.guide.attacks import pgd
from lwise.guide.augment import MultiView, views_cost
from lwise.guide.compiling import cudnn_autotune, is_compiled, should_compile
from lwise.guide.load import Guide, load_guide
from lwise.stimuli._write import ImageWriter, stimulus_dirmap, stimulus_keys, to_uint8
from lwise.stimuli.settings import Encoding, provenance, steps_for, write_provenance

__all__ = ["EnhanceConfig", "default_batch_size", "enhance", "quantise"]

log = logging.getLogger(__name__)

# Batch sizes when the config leaves `batch_size` null. On an H200 (ResNet-50, 224 px, eps 20)
# the fast mode ran 325.6 images/s at 256 against 265.5 at 128 (issue 12's measurements).
GPU_BATCH, CPU_BATCH = 256, 128


@dataclass(frozen=True)
class EnhanceConfig(Encoding):
    """One enhancement job's settings: the `enhance` config section but its list of epsilons
    and objectives (each job has one of each) and the contact sheet's size; the encoding keys
    come from `Encoding`. Meanings and defaults are in the schema:
    `EnhanceConfig.from_config({"direction": "attack"})`."""

    step_size: float
    steps: int | dict | None
    constraint: str
    direction: str
    diverge_from: list[str] | None
    views: dict | None
    view_chunk: int
    batch_size: int | None
    fast_dtype: str
    compile: bool | str


def default_batch_size(device: torch.device) -> int:
    """The batch size of a job whose config says null: 256 on a GPU, 128 on the CPU."""
    return GPU_BATCH if device.type == "cuda" else CPU_BATCH


def quantise(x: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file holds: round(255·x) (torchvision `save_image`), back in [0, 1]."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def _competitors(
    df: pd.DataFrame, guide: Guide, diverge_from: list[str] | None, csv: Path
) -> tuple[torch.Tensor, pd.DataFrame]:
    """The logit_diverge competitor mask over the model's classes, and the rows to enhance.

    As L-WISE `enhance.py --diverge_from`: the named classes compete, and their own rows go;
    without names, the other classes present in the dirmap compete.
    """
    label = guide.label_column
    competitors = torch.zeros(guide.num_classes, dtype=torch.bool, device=guide.device)
    if not diverge_from:
        competitors[torch.as_tensor(sorted(df[label].unique()), device=guide.device)] = True
        return competitors, df
    by_name = dict(zip(df["class"], df[label], strict=False))
    missing = sorted(set(diverge_from) - set(by_name))
    if missing:
        raise ValueError(f"diverge_from class(es) {missing} not in {csv}")
    competitors[[int(by_name[c]) for c in diverge_from]] = True
    return competitors, df[~df["class"].isin(diverge_from)].reset_index(drop=True)


class _FiniteWatch(nn.Module):
    """The model as PGD sees it, noting on the device (no host sync) whether any logit or any
    input gradient was not finite."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.bad = None
        self.eval()

    def _note(self, t: torch.Tensor) -> None:
        flag = ~torch.isfinite(t).all()
        self.bad = flag if self.bad is None else self.bad | flag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x.register_hook(self._note)
        out = self.net(x)
        self._note(out)
        return out


def enhance(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    key_root: str | os.PathLike,
    eps: float,
    objective: str,
    cfg: EnhanceConfig,
    workers: int,
    trusted: bool,
    pixels: tuple[str | os.PathLike, str | os.PathLike] | None = None,
    label_column: str | None = None,
    mode: str | None = None,
) -> pd.DataFrame:
    """Enhance (or, with `cfg.direction` "attack", disrupt) every image of the dirmap.

    Steps default to max(1, round(2·eps)) with step 0.5, so step·steps = eps (L-WISE
    `scripts/batch_enhance/*.sh`). `mode` is "fast" or "reference" (default: fast on a GPU);
    `label_column` defaults to the one that fits the model (`lwise.guide.load`). `pixels` is
    the dataset's pixel cache (`lwise.data.pixels.build`: the .npy and its index) with keys
    under `key_root`; without it the files are decoded. `workers` processes encode the files
    (0: the simple loop, all in the caller; the files are the same byte for byte). The output
    dirmap records, per image, the L2 distance actually achieved between the saved natural and
    enhanced 8-bit images, and the ground-truth-logit gain between them.
    """
    csv = Path(dirmap_csv)
    df = dirmap.read(csv)
    # The encoder processes are forked first, before this process touches the GPU.
    with ImageWriter(workers, cfg) as writer:
        steps = steps_for(cfg.steps, eps)
        guide = load_guide(
            model_path, trusted=trusted, fast=None if mode is None else mode == "fast",
            fast_dtype=cfg.fast_dtype, dirmap=df, label_column=label_column,
            compile=should_compile(cfg.compile, len(df), steps),
        )  # fmt: skip
        guide.model.requires_grad_(False)  # gradients for the input only
        torch.backends.cudnn.benchmark = cudnn_autotune(len(df), steps)  # after prepare_fast
        batch = cfg.batch_size or default_batch_size(guide.device)
        competitors = None
        if objective == "logit_diverge":
            competitors, df = _competitors(df, guide, cfg.diverge_from, csv)
        multiview = MultiView.from_config(cfg.views)  # None: single view
        nets = (guide.net, guide.model)  # fast (or reference) and the float32 fallback
        if multiview is not None:
            nets = tuple(multiview.through(net, cfg.view_chunk) for net in nets)
            log.info("multi-view %s: %s", multiview.settings, views_cost(
                multiview.num_views, batch, cfg.view_chunk))  # fmt: skip
        attack = {
            "eps": eps, "step_size": cfg.step_size, "steps": steps, "constraint": cfg.constraint,
            "objective": objective, "direction": cfg.direction, "competitors": competitors,
            "use_best": multiview is None, "fast_dtype": cfg.fast_dtype,
            # With the model compiled, the step arithmetic too (H200, eps 20, batch 256:
            # 346 -> 362 images/s, bench/enhance.py --compare-update).
            "compile_update": is_compiled(guide.net),
        }  # fmt: skip
        keys = stimulus_keys(df, csv, key_root, cfg.format)
        labels = torch.as_tensor(df[guide.label_column].astype(int).to_numpy().copy())
        stats = np.zeros((len(df), 3), dtype=np.float64)  # l2, gt logit natural and enhanced
        cuda = guide.device.type == "cuda"
        layout = torch.channels_last if guide.fast else torch.contiguous_format
        source = pixel_batches(
            df, csv, key_root, pixels, guide.input_size, batch, workers, cuda
        )  # fmt: skip
        bar = progress(total=len(df), desc=f"{objective} eps={eps:g}", unit="img")
        with bar, atomic_path(out_dir, directory=True) as tmp, writer.stopping_on_error():
            with _handing_over(writer) as hand_over:
                for pos, u8 in source:
                    x = to_unit(u8.to(guide.device, non_blocking=True))
                    x = x.contiguous(memory_format=layout)
                    y = labels[pos].to(guide.device, non_blocking=True)
                    adv = _attack(guide, nets, x, y, attack)
                    stats[pos] = _achieved(guide, x, adv, y)
                    hand_over(to_uint8(adv), [tmp / keys[i] for i in pos])
                    bar.update(len(pos))
            writer.finish()  # every file written before the rename
            out = stimulus_dirmap(
                df,
                keys,
                eps=eps,
                objective=objective,
                direction=cfg.direction,
                l2_distance=stats[:, 0],
                gt_logit_natural=stats[:, 1],
                gt_logit_enhanced=stats[:, 2],
                logit_gain=stats[:, 2] - stats[:, 1],
            )
            dirmap.write(out, tmp / "dirmap.csv")
            write_provenance(tmp, provenance(
                cfg, multiview and multiview.settings, set=Path(out_dir).name, eps=eps,
                objective=objective, steps=steps, images=len(out), guide=str(model_path),
                mode=guide.mode, label_column=guide.label_column, torch=torch.__version__,
            ))  # fmt: skip
    log.info(
        "%s eps=%g (%d steps of %g, batch %d): mean L2 %.3f, mean logit gain %.3f",
        objective, eps, steps, cfg.step_size, batch, out["l2_distance"].mean(),
        out["logit_gain"].mean(),
    )  # fmt: skip
    return out


@contextlib.contextmanager
def _handing_over(writer: ImageWriter) -> Iterator[Callable[[torch.Tensor, list[Path]], None]]:
    """`hand_over(u8, paths)`: copy a batch off the GPU and into the writer's ring in a thread,
    so that the next batch's attack is launched meanwhile (8,192 images at eps 20 on an H200:
    188 images/s with the copy in the loop, 205 with it here). One batch at most is in hand;
    its error is raised at the next hand-over or on leaving, which waits for it, so the writer
    is never aborted under it."""
    thread = ThreadPoolExecutor(1, thread_name_prefix="lwise-handover")
    last: Future | None = None

    def hand_over(u8: torch.Tensor, paths: list[Path]) -> None:
        nonlocal last
        if last is not None:
            last.result()
        last = thread.submit(lambda: writer.write(u8.cpu().numpy(), paths))

    try:
        yield hand_over
        if last is not None:
            last.result()
    finally:
        thread.shutdown(wait=True)


def _attack(
    guide: Guide, nets: tuple, x: torch.Tensor, y: torch.Tensor, attack: dict
) -> torch.Tensor:
    """`pgd` on one batch through `nets[0]`; where the fast mode's half precision gave a
    non-finite logit or input gradient, the whole batch again in float32 through `nets[1]`
    (the reference model), logged. Fails only when float32 is not finite either: then the
    model itself is at fault."""
    watched = _FiniteWatch(nets[0])
    adv = pgd(watched, x, y, mode=guide.mode, **attack)
    if watched.bad is None or not bool(watched.bad):  # one host sync per batch
        return adv
    if guide.fast:
        log.warning(
            "%s overflowed (non-finite logits or gradients) on a batch of %d images: "
            "enhancing it again in float32",
            guide.fast_dtype, len(x),
        )  # fmt: skip
        watched = _FiniteWatch(nets[1])
        adv = pgd(watched, x.contiguous(), y, mode="reference", **attack)
        if not bool(watched.bad):
            return adv
    raise FloatingPointError(
        f"the guide model itself produces non-finite logits or input gradients in float32 on a "
        f"batch of {len(x)} images: check the model (a diverged training?)"
    )


def _achieved(guide: Guide, x: torch.Tensor, adv: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per image: the L2 distance between the 8-bit natural and enhanced images, and the
    ground-truth logit of each (what the saved files give, not the float iterates), in the
    guide's precision; rows that overflow it are computed again in float32."""
    natural_q, adv_q = quantise(x), quantise(adv)
    both = torch.cat([natural_q, adv_q])
    if guide.fast:
        both = both.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), guide.autocast():
        logits = guide.net(both).float()
    bad = ~torch.isfinite(logits).all(1)
    if bool(bad.any()):
        with torch.no_grad():
            logits[bad] = guide.model(both[bad].contiguous()).float()
    gt = logits.gather(1, torch.cat([y, y])[:, None])[:, 0].view(2, -1)
    l2 = (adv_q - natural_q).flatten(1).norm(dim=1)
    return torch.stack([l2, gt[0], gt[1]], 1).cpu().numpy()
