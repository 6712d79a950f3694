"""Human attention input (mask folders, GRADIA JSON with updates and removals, reasonability
tables), roles and weights, and the attention stage's entry points end to end on tiny files."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lwise.alignment.attention.evaluate import evaluate, reasonability_matrix
from lwise.alignment.attention.masks import (
    ImageIndex,
    MaskError,
    fit_masks,
    load_masks,
    read_assessment,
    read_reasonability,
    write_synthetic_masks,
)
from lwise.alignment.attention.run import AttentionConfig, assign_roles, finetune, sample_weights
from lwise.guide.checkpoints import load_model, save_checkpoint
from lwise.guide.models import build_model


def _dataset(root, n=(8, 6, 4), size=32):
    """A dirmap of ink-on-paper images (a dark square, top left) in train/val/test."""
    rng = np.random.default_rng(0)
    rows = []
    for split, count in zip(("train", "val", "test"), n, strict=True):
        for i in range(count):
            cls = i % 2
            img = np.full((size, size), 230, np.uint8)
            img[4 : 4 + 8 + 4 * cls, 4:12] = rng.integers(0, 40)
            path = f"{split}/{cls}/im_{split}_{i}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).convert("RGB").save(root / path)
            rows.append((split, str(cls), cls, path))
    df = pd.DataFrame(rows, columns=["split", "class", "class_num", "im_path"])
    df.to_csv(root / "dirmap.csv", index=False)
    return df


def _mask(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8) * 255).save(path)


def test_mask_folder_matches_images_and_checks_them(tmp_path):
    df = _dataset(tmp_path)
    index = ImageIndex(df)
    folder = tmp_path / "masks"
    square = np.zeros((16, 16))
    square[:8, :8] = 1
    _mask(folder / "val" / "0" / "im_val_0.png", square)  # half the size: stretched
    _mask(folder / "im_val_1.bmp", np.ones((32, 32)))  # by file name, other format
    masks = load_masks(folder, index)
    assert sorted(masks.arrays) == [8, 9]
    fitted = fit_masks(masks, df, tmp_path, 32)
    assert fitted[8].shape == (32, 32) and fitted[8][:16, :16].all() and not fitted[8][16:].any()

    _mask(folder / "nothere.png", np.ones((4, 4)))
    with pytest.raises(MaskError, match=r"nothere.png: unknown image 'nothere.png'"):
        load_masks(folder, index)
    (folder / "nothere.png").unlink()

    _mask(folder / "test" / "1" / "im_test_1.png", np.zeros((32, 32)))
    with pytest.raises(MaskError, match=r"im_test_1.png: empty mask"):
        load_masks(folder, index)
    _mask(folder / "test" / "1" / "im_test_1.png", np.ones((32, 16)))
    with pytest.raises(MaskError, match=r"im_test_1.png: wrong shape: mask is 16x32"):
        fit_masks(load_masks(folder, index), df, tmp_path, 32)


def test_gradia_json_with_updates_and_removals(tmp_path):
    df = _dataset(tmp_path)
    index = ImageIndex(df)
    full, half = np.ones((32, 32), int).tolist(), np.zeros((32, 32), int)
    half[:16] = 1
    base = tmp_path / "attention_val.json"
    base.write_text(
        json.dumps(
            [
                {"img": "gender_data/val/man/im_val_0.png", "attention": full},
                {"img": "im_val_1.png", "attention": full},
                {"img": "im_val_2.png", "attention": full},
            ]
        )
    )
    update = tmp_path / "update.json"
    update.write_text(json.dumps([{"img": "im_val_1.png", "attention": half.tolist()}]))
    remove = tmp_path / "remove.json"
    remove.write_text(json.dumps([{"img": "im_val_2.png"}]))
    masks = load_masks(base, index, updates=[update], removals=[remove])
    assert sorted(masks.arrays) == [8, 9]
    assert masks.arrays[9].sum() == 16 * 32  # the update replaced the mask
    assert "update.json entry 0" in masks.origins[9]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"img": "im_val_0.png", "attention": [[1, 0], [1]]}]))
    with pytest.raises(MaskError, match=r"bad.json entry 0: field 'attention' has the wrong shape"):
        load_masks(bad, index)
    bad.write_text(json.dumps([{"img": "im_val_0.png", "attention": [1, 0, 1]}]))
    with pytest.raises(MaskError, match=r"bad.json entry 0 field 'attention': wrong shape \(3,\)"):
        load_masks(bad, index)
    bad.write_text(json.dumps([{"img": "im_val_0.png"}]))
    with pytest.raises(MaskError, match=r"bad.json entry 0: missing field 'attention'"):
        load_masks(bad, index)
    bad.write_text(json.dumps([{"img": "COCO_1.jpg", "attention": full}]))
    with pytest.raises(
        MaskError, match=r"bad.json entry 0 field 'img': unknown image 'COCO_1.jpg'"
    ):
        load_masks(bad, index)
    remove.write_text(json.dumps([{"img": "im_test_0.png"}]))
    with pytest.raises(MaskError, match=r"remove.json entry 0: removes image 'im_test_0.png'"):
        load_masks(base, index, removals=[remove])


def test_reasonability_and_assessment_tables(tmp_path):
    df = _dataset(tmp_path)
    index = ImageIndex(df)
    path = tmp_path / "reasonablity_val.json"
    path.write_text(json.dumps({"im_val_0.png": "Unreasonable Accurate", "im_val_1.png": "RI"}))
    assert read_reasonability(path, index) == {
        8: "Unreasonable Accurate",
        9: "Reasonable Inaccurate",
    }
    csv = tmp_path / "r.csv"
    pd.DataFrame({"image": ["im_val_2.png"], "label": ["somewhat"]}).to_csv(csv, index=False)
    with pytest.raises(MaskError, match=r"r.csv line 2: label 'somewhat' is not one of"):
        read_reasonability(csv, index)
    judged = tmp_path / "assessment.json"
    judged.write_text(
        json.dumps([{"img": "", "label": "x"}, {"img": "im_test_0.png", "label": "unreasonable"}])
    )
    assert read_assessment(judged, index) == {14: "unreasonable"}


def test_roles_and_weights():
    df = pd.DataFrame(
        {
            "split": ["train"] * 4 + ["val"] * 8,
            "class_num": [0, 1] * 6,
            "im_path": list("abcdefghijkl"),
        }
    )
    roles = assign_roles(df, feedback_fraction=0.5, selection_fraction=0.25, seed=0)
    assert (roles[:4] == "train").all()
    assert roles[4:].value_counts().to_dict() == {"feedback": 4, "selection": 2, "evaluation": 2}
    with pytest.raises(ValueError, match="leave validation images for evaluation"):
        assign_roles(df, feedback_fraction=0.5, selection_fraction=0.5, seed=0)
    weights = AttentionConfig.from_config().weights
    labels = {1: "Unreasonable Accurate", 2: "Reasonable Accurate"}
    pred, att = sample_weights([0, 1, 2, 3], {1, 2, 3}, labels, weights, reference=False)
    assert pred.tolist() == pytest.approx([1.0, 0.4, 1.0, 1.0])
    assert att.tolist() == pytest.approx([0.0, 1.6, 0.0, 1.0])  # no label: no_label's pair
    _, att = sample_weights([3], {3}, {}, weights, reference=True)
    assert att.tolist() == [0.0]  # GRADIA.py: no label, no attention loss


def test_synthetic_masks_then_finetune_evaluate_and_matrix(tmp_path):
    data = tmp_path / "data"
    _dataset(data, n=(12, 8, 6))
    masks = tmp_path / "masks_synthetic"
    assert write_synthetic_masks(data / "dirmap.csv", masks) == 14  # val and test images
    assert not (masks / "train").exists()
    first = np.asarray(Image.open(masks / "val" / "0" / "im_val_0.png"))
    assert first[6, 6] == 255 and first[30, 30] == 0  # the ink, not the paper

    torch.manual_seed(0)
    model = build_model("small_cnn", 2, (0.5,) * 3, (0.25,) * 3, class_names=["0", "1"])
    save_checkpoint(tmp_path / "guide.pt", model, training_args={"image_size": 32})
    settings = {
        "phase1_epochs": 1,
        "phase2_epochs": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "overlay_images": 2,
    }
    out = tmp_path / "out"
    history = finetune(
        data / "dirmap.csv",
        tmp_path / "guide.pt",
        masks,
        out / "phase1.pt",
        out / "model.pt",
        out / "history.csv",
        out / "roles.csv",
        settings=settings,
        threads=1,
    )
    assert list(history["phase"]) == [1, 1, 2, 2]
    assert history.loc[history["phase"] == 2, "attention_loss"].gt(0).all()
    tuned = load_model(out / "model.pt")
    assert tuned.training_args["image_size"] == 32
    roles = pd.read_csv(out / "roles.csv")
    assert set(roles.loc[roles["split"] == "test", "role"]) == {"evaluation"}

    metrics = evaluate(
        data / "dirmap.csv",
        out / "phase1.pt",
        out / "model.pt",
        out / "roles.csv",
        masks,
        out / "metrics.csv",
        out / "iou.csv",
        out / "overlays.png",
        settings=settings,
        synthetic=True,
        threads=1,
    )
    assert list(metrics["model"]) == ["before", "after"]
    assert (metrics["images"] == 6).all() and (metrics["masks"] == 6).all()
    assert metrics["mean_iou"].between(0, 1).all()
    per_image = pd.read_csv(out / "iou.csv")
    assert len(per_image) == 6 and per_image["iou_after"].between(0, 1).all()
    assert Image.open(out / "overlays.png").size[0] > 100

    assessment = tmp_path / "assessment.csv"
    pd.DataFrame(
        {
            "image": ["im_test_0.png", "im_test_1.png", "im_test_2.png"],
            "label": ["reasonable", "unreasonable", "reasonable"],
        }
    ).to_csv(assessment, index=False)
    matrix = reasonability_matrix(out / "iou.csv", assessment, out / "reasonability_test.csv")
    assert matrix[["reasonable", "unreasonable"]].to_numpy().sum() == 3
    assert list(matrix["prediction"]) == ["accurate", "inaccurate"]
