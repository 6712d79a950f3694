"""The enhancement job as a pipeline: same files as the simple loop, nothing complete after an
interruption, the decode-once pixel cache, GPU-style decoding, and the float16 fallback."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lwise.data import dirmap, pixels
from lwise.data.loading import (
    DirmapImages,
    EncodedImages,
    collate_encoded,
    decode_images,
    eval_transform,
)
from lwise.guide.checkpoints import save_checkpoint
from lwise.guide.load import load_guide
from lwise.guide.models import build_model
from lwise.guide.score import ScoringConfig, score
from lwise.stimuli import enhance as enhance_module
from lwise.stimuli._write import ImageWriter
from lwise.stimuli.enhance import EnhanceConfig, enhance
from lwise.stimuli.natural import NaturalConfig, write_natural
from lwise.stimuli.settings import PNG_STRATEGIES, Encoding

SIZE = 24


def _folder(root, n=20, fmt="PNG"):
    """`n` smooth random images (not square, larger than SIZE) in two classes, with a dirmap."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        cls = i % 2
        coarse = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((37, 30), Image.Resampling.BICUBIC)
        ext = "jpg" if fmt == "JPEG" else "png"
        path = root / "train" / f"c{cls}" / f"{i:03d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format=fmt)
        rows.append({"split": "train", "class": f"c{cls}", "class_num": cls,
                     "im_path": path.relative_to(root).as_posix()})  # fmt: skip
    dirmap.write(pd.DataFrame(rows), root / "dirmap.csv")
    return root


def _model(path, scale=1.0, seed=0):
    torch.manual_seed(seed)
    model = build_model("small_cnn", 2, [0.5] * 3, [0.25] * 3).eval()
    with torch.no_grad():
        model.net.fc.weight.mul_(scale)
        model.net.fc.bias.mul_(scale)
    save_checkpoint(path, model, training_args={"image_size": SIZE})
    return path


@pytest.fixture
def setup(tmp_path):
    folder = _folder(tmp_path / "imagefolder")
    model = _model(tmp_path / "model.pt")
    cache = (tmp_path / "preprocessed.npy", tmp_path / "preprocessed.csv")
    pixels.build(folder / "dirmap.csv", *cache, key_root=folder, size=SIZE, workers=0)
    return folder, model, cache


def _enhance(folder, model, out, *, workers, cache=None, eps=1.0, mode=None, **settings):
    cfg = EnhanceConfig.from_config({"batch_size": 8, **settings})
    return enhance(
        folder / "dirmap.csv", model, out, key_root=folder, eps=eps, objective="logit", cfg=cfg,
        workers=workers, trusted=False, pixels=cache, mode=mode,
    )  # fmt: skip


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.png")}


def test_pipelined_job_writes_the_same_files_and_dirmap_as_the_simple_loop(setup, tmp_path):
    folder, model, cache = setup
    simple = _enhance(folder, model, tmp_path / "simple", workers=0)
    piped = _enhance(folder, model, tmp_path / "piped", workers=2, cache=cache)
    assert len(_files(tmp_path / "simple")) == 20
    assert _files(tmp_path / "simple") == _files(tmp_path / "piped")  # byte-identical PNGs
    pd.testing.assert_frame_equal(simple, piped)
    assert (tmp_path / "simple/dirmap.csv").read_bytes() == (
        tmp_path / "piped/dirmap.csv"
    ).read_bytes()
    assert simple["logit_gain"].mean() > 0
    cfg = NaturalConfig.from_config()
    for name, kw in (
        ("nat_simple", {"workers": 0}),
        ("nat_piped", {"workers": 2, "pixels": cache}),
    ):
        write_natural(folder / "dirmap.csv", model, tmp_path / name, key_root=folder, cfg=cfg,
                      trusted=False, **kw)  # fmt: skip
    assert _files(tmp_path / "nat_simple") == _files(tmp_path / "nat_piped")


def test_interrupted_enhancement_leaves_nothing_taken_as_complete(setup, tmp_path, monkeypatch):
    folder, model, cache = setup
    calls = []

    def failing_pgd(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first batch is already being written by the workers
            raise KeyboardInterrupt
        return real_pgd(*args, **kwargs)

    real_pgd = enhance_module.pgd
    monkeypatch.setattr(enhance_module, "pgd", failing_pgd)
    with pytest.raises(KeyboardInterrupt):
        _enhance(folder, model, tmp_path / "out", workers=2, cache=cache)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # the temporary folder went too
    # A failing encoder (a file that cannot be written) fails the job the same way.
    monkeypatch.setattr(enhance_module, "pgd", real_pgd)
    monkeypatch.setattr(enhance_module, "stimulus_keys", lambda *a: ["/dev/null/x.png"] * 20)
    with pytest.raises(OSError):
        _enhance(folder, model, tmp_path / "out", workers=2, cache=cache)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


@pytest.mark.parametrize("failing", [2, 3])
def test_a_failed_hand_over_to_the_encoders_fails_the_job(setup, tmp_path, monkeypatch, failing):
    """Batches reach the encoders from a thread: its error (the middle batch: raised at the
    next hand-over; the last: on leaving) fails the job, nothing more is handed over after it,
    and nothing is left."""
    folder, model, cache = setup
    real_write, calls = ImageWriter.write, []

    def write(self, arrays, paths):
        calls.append(len(paths))
        if len(calls) == failing:
            raise OSError("disk full (injected)")
        return real_write(self, arrays, paths)

    monkeypatch.setattr(ImageWriter, "write", write)
    with pytest.raises(OSError, match="injected"):
        _enhance(folder, model, tmp_path / "out", workers=2, cache=cache)
    assert calls == [8, 8, 4][:failing]  # 20 images in batches of 8
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_pixel_cache_holds_the_preprocessed_pixels_and_refuses_a_stale_one(setup, tmp_path):
    folder, model, cache = setup
    arr = np.load(cache[0])
    data = DirmapImages.from_csv(folder / "dirmap.csv", eval_transform(SIZE))
    assert arr.shape == (20, SIZE, SIZE, 3) and arr.dtype == np.uint8
    expected = (data[3][0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(arr[3], expected)
    pc = pixels.PixelCache(*cache)
    with pytest.raises(ValueError, match=r"holds 24-px images but the guide model takes 32 px"):
        pc.rows(["train/c0/000.png"], 32)
    with pytest.raises(ValueError, match=r"no image 'train/c9/new.png'.*rebuild it"):
        pc.rows(["train/c9/new.png"], SIZE)
    other = _model(tmp_path / "other.pt")
    torch.save(torch.load(other, weights_only=False) | {"training_args": {"image_size": 16}}, other)
    with pytest.raises(ValueError, match="stale"):
        _enhance(folder, other, tmp_path / "stale", workers=0, cache=cache)


def test_device_decoding_gives_the_cpu_paths_logits(tmp_path):
    """decode_images (torchvision's decoder, on the CPU here; nvjpeg on a GPU) against the
    PIL path that DataLoader workers run, JPEGs and a PNG in one batch."""
    folder = _folder(tmp_path / "jpeg", n=12, fmt="JPEG")
    df = dirmap.read(folder / "dirmap.csv")
    png = folder / "train/c0/000.png"
    Image.open(folder / df["im_path"][0]).save(png)
    df.loc[0, "im_path"] = "train/c0/000.png"
    items = [EncodedImages(df, folder, SIZE, "class_num")[i] for i in range(len(df))]
    data, labels, rows = collate_encoded(items)
    assert data[0].ndim == 3 and data[1].ndim == 1  # the PNG decoded on the CPU already
    x, fell_back = decode_images(data, SIZE, torch.device("cpu"))
    ref = torch.stack([DirmapImages(df, folder, eval_transform(SIZE))[i][0] for i in range(12)])
    assert fell_back == 0 and x.shape == ref.shape and list(rows) == list(range(12))
    assert (x - ref).abs().max() <= 3 / 255  # decoders and resize kernels round differently
    guide = load_guide(_model(tmp_path / "m.pt"), trusted=False, device="cpu")
    with torch.no_grad():
        a, b = guide.net(x), guide.net(ref)
    assert torch.allclose(a, b, rtol=0, atol=2e-2 * b.abs().max().item())
    # A batch that the device decoder refuses falls back to PIL.
    broken = [d if i else torch.frombuffer(bytearray(b"\xff\xd8\xffjunk"), dtype=torch.uint8)
              for i, d in enumerate(map(torch.as_tensor, data))]  # fmt: skip
    with pytest.raises(OSError):  # then PIL, which cannot read junk either, says so
        decode_images(broken, SIZE, torch.device("cpu"))


def test_scoring_starts_decoding_at_the_call_before_a_batch_is_asked_for(tmp_path):
    """`image_batches` forks its loader's workers at once, so that a scoring job decodes while
    it moves the model to the device; the batches then come in dirmap order."""
    import multiprocessing

    from lwise.guide.score import image_batches

    folder = _folder(tmp_path / "imagefolder", n=5)
    df = dirmap.read(folder / "dirmap.csv")
    before = set(multiprocessing.active_children())
    batches = image_batches(df, folder, size=SIZE, device=torch.device("cpu"), batch=2,
                            workers=1, decode="cpu", label="class_num")  # fmt: skip
    assert set(multiprocessing.active_children()) - before  # the worker runs already
    got = list(batches)
    assert [len(rows) for _, rows in got] == [2, 2, 1]
    assert torch.cat([rows for _, rows in got]).tolist() == list(range(5))
    ref = DirmapImages(df, folder, eval_transform(SIZE))
    assert torch.equal(got[1][0][1], ref[3][0])  # the values of eval_transform


def _score(folder, model, out, **kw):
    return score(
        folder / "dirmap.csv", model, out / "d.csv", out / "a.csv", out / "c.png",
        cfg=ScoringConfig.from_config({"fast_dtype": "float16"}), workers=0, trusted=False, **kw,
    )  # fmt: skip


def test_float16_overflow_is_recomputed_in_float32(setup, tmp_path, caplog):
    """Logits beyond float16's range (65504): scoring recomputes those rows and enhancement
    the batch in float32, and say so; a model non-finite in float32 fails, saying that."""
    folder, _, cache = setup
    big = _model(tmp_path / "big.pt", scale=1e6)
    with caplog.at_level(logging.WARNING, logger="lwise"):
        fast = _score(folder, big, tmp_path / "fast", mode="fast")
        ref = _score(folder, big, tmp_path / "ref", mode="reference")
    assert (
        np.isfinite(fast["robust_gt_logit"]).all() and fast["robust_gt_logit"].abs().max() > 65504
    )
    np.testing.assert_allclose(fast["robust_gt_logit"], ref["robust_gt_logit"], rtol=1e-4)
    assert "overflowed float16 (non-finite logits): computed again in float32" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lwise"):
        out = _enhance(folder, big, tmp_path / "enh", workers=0, cache=cache, mode="fast")
    assert np.isfinite(out[["gt_logit_natural", "gt_logit_enhanced"]].to_numpy()).all()
    assert "float16 overflowed" in caplog.text and "again in float32" in caplog.text
    nan = _model(tmp_path / "nan.pt", scale=float("inf"))
    with pytest.raises(FloatingPointError, match="the guide model itself produces non-finite"):
        _score(folder, nan, tmp_path / "nan", mode="fast")
    with pytest.raises(FloatingPointError, match="the guide model itself produces non-finite"):
        _enhance(folder, nan, tmp_path / "nan_enh", workers=0, mode="fast")
    assert not (tmp_path / "nan_enh").exists()


def test_image_writer_reuses_its_ring_slots_and_writes_what_the_caller_gave(tmp_path):
    """More batches than ring slots, a batch that outgrows the slots, and rows read from a
    .npy by the workers: every file holds exactly its pixels, as the simple loop writes them;
    the shared-memory ring is gone afterwards."""
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (n, 8, 8, 3), np.uint8) for n in (3, 3, 2, 3, 3, 5, 1)]
    npy = tmp_path / "cache.npy"
    np.save(npy, np.concatenate(batches))
    rows = np.arange(len(np.load(npy)))[::-1].copy()
    for procs in (0, 2):
        out = tmp_path / f"w{procs}"
        with ImageWriter(procs, Encoding.from_config(), depth=2) as writer:
            for b, arrays in enumerate(batches):
                writer.write(arrays, [out / f"b{b}_{i}.png" for i in range(len(arrays))])
            writer.write_rows(npy, rows, [out / f"r{i}.png" for i in range(len(rows))])
            ring = writer._ring_dir
            assert writer.finish() == 2 * len(rows)
        assert ring is None or not os.path.exists(ring)
        for b, arrays in enumerate(batches):
            for i, a in enumerate(arrays):
                assert np.array_equal(np.asarray(Image.open(out / f"b{b}_{i}.png")), a)
        stacked = np.load(npy)
        for i, r in enumerate(rows):
            assert np.array_equal(np.asarray(Image.open(out / f"r{i}.png")), stacked[r])
    assert _files(tmp_path / "w0") == _files(tmp_path / "w2")


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_files_are_encoded_as_configured_with_the_same_pixels(tmp_path, fmt):
    """`png_strategy` reaches every PNG: the bytes are PIL's for that zlib strategy, the pixels
    are the same under both, and rle is no larger on a photo-like image; JPEG keeps its quality."""
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((48, 48), Image.Resampling.BICUBIC))
    noisy = np.clip(smooth + rng.normal(0, 1.3, smooth.shape), 0, 255).round().astype(np.uint8)
    arrays = np.stack([smooth, noisy])
    written = {}
    for strategy in PNG_STRATEGIES:
        encoding = Encoding.from_config({"format": fmt, "jpeg_quality": 80,
                                         "png_strategy": strategy})  # fmt: skip
        for procs in (0, 2):
            paths = [tmp_path / f"{strategy}{procs}/{i}.{fmt}" for i in range(2)]
            with ImageWriter(procs, encoding) as writer:
                writer.write(arrays, paths)
            written[strategy, procs] = [p.read_bytes() for p in paths]
        expected = []
        for a in arrays:
            buf = io.BytesIO()
            options = {"quality": 80} if fmt == "jpeg" else {
                "compress_type": PNG_STRATEGIES[strategy]}  # fmt: skip
            Image.fromarray(a).save(buf, format=fmt.upper(), **options)
            expected.append(buf.getvalue())
        assert written[strategy, 0] == written[strategy, 2] == expected
    if fmt == "jpeg":  # the strategy is for PNG only
        assert written["rle", 0] == written["default", 0]
        return
    assert written["rle", 0] != written["default", 0]
    for rle, default, a in zip(written["rle", 0], written["default", 0], arrays, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(rle))), a)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(default))), a)
        assert len(rle) <= len(default) * 1.01
