import pandas as pd
import pytest
import torch
from PIL import Image

from lwise.data import dirmap
from lwise.data.imagefolder import BuildOptions, build
from lwise.guide.score import ScoringConfig, score
from lwise.stimuli.contact_sheet import contact_sheet
from lwise.stimuli.enhance import EnhanceConfig, enhance
from lwise.stimuli.natural import NaturalConfig, write_natural


@pytest.fixture(scope="module")
def held_out(digits_folder, tmp_path_factory):
    """Validation images only: the model never trained on them."""
    root = tmp_path_factory.mktemp("heldout")
    df = dirmap.read(digits_folder / "dirmap.csv")
    val = df[df["split"] == "val"].copy()
    val["im_path"] = val["im_path"].map(lambda p: str(digits_folder / p))
    val["im_path"] = dirmap.relative_to(val["im_path"], root)
    dirmap.write(val.drop(columns=["orig_im_path"]), root / "recipe.csv")
    build(root / "recipe.csv", root / "imagefolder", BuildOptions.from_config())
    return root / "imagefolder"


def _run(folder, model, out, *, eps, objective="logit", **settings):
    """Enhance with the config's defaults but `settings` (keys of the enhance section)."""
    return enhance(
        folder / "dirmap.csv", model, out, key_root=folder, eps=eps, objective=objective,
        cfg=EnhanceConfig.from_config(settings), workers=0, trusted=False,
    )  # fmt: skip


def _natural(folder, model, out):
    return write_natural(
        folder / "dirmap.csv", model, out, key_root=folder, cfg=NaturalConfig.from_config(),
        workers=0, trusted=False,
    )  # fmt: skip


def test_enhancement_raises_gt_logit_and_attack_lowers_it(held_out, digits_model, tmp_path):
    nat = _natural(held_out, digits_model, tmp_path / "natural")
    up = _run(held_out, digits_model, tmp_path / "up", eps=2.0)
    down = _run(held_out, digits_model, tmp_path / "down", eps=2.0, direction="attack")
    assert up["logit_gain"].mean() > 0.5 and down["logit_gain"].mean() < -0.5
    # Every version keeps the same relative key, and every key is a file in every version.
    assert list(up["im_path"]) == list(nat["im_path"]) == list(down["im_path"])
    for folder in ("natural", "up", "down"):
        assert all((tmp_path / folder / k).is_file() for k in up["im_path"])
    # The achieved 8-bit L2 distance stays within the budget (up to quantisation).
    assert up["l2_distance"].max() <= 2.0 + 0.5 and up["l2_distance"].mean() > 1.0
    with Image.open(tmp_path / "up" / up["im_path"].iloc[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB" and im.format == "PNG"
    steps = dirmap.read(tmp_path / "up/dirmap.csv")
    assert {"eps", "objective", "logit_gain", "gt_logit_natural"} <= set(steps.columns)


def test_enhancement_lowers_error_rate_of_held_out_images(held_out, digits_model, tmp_path):
    rates = {}
    for name, kw in (("natural", None), ("enhanced", {}), ("attacked", {"direction": "attack"})):
        folder = held_out
        if kw is not None:
            _run(held_out, digits_model, tmp_path / name, eps=1.5, **kw)
            folder = tmp_path / name
        outputs = [tmp_path / f"{name}{suffix}" for suffix in (".csv", "_acc.csv", ".png")]
        scored = score(
            folder / "dirmap.csv", digits_model, *outputs, cfg=ScoringConfig.from_config(),
            workers=0, trusted=False,
        )  # fmt: skip
        rates[name] = 1 - scored["correct"].mean()
    assert rates["enhanced"] < rates["natural"] < rates["attacked"]


def test_logit_diverge_against_named_classes(held_out, digits_model, tmp_path):
    out = _run(
        held_out,
        digits_model,
        tmp_path / "div",
        eps=1.0,
        objective="logit_diverge",
        diverge_from=["3", "5"],
    )
    assert not set(out["class"]) & {"3", "5"}  # the reference drops the named classes' rows
    with pytest.raises(ValueError, match=r"diverge_from class\(es\) \['cow'\]"):
        _run(
            held_out,
            digits_model,
            tmp_path / "bad",
            eps=1.0,
            objective="logit_diverge",
            diverge_from=["cow"],
        )
    assert not (tmp_path / "bad").exists()


def test_contact_sheet(held_out, digits_model, tmp_path):
    _natural(held_out, digits_model, tmp_path / "natural")
    _run(held_out, digits_model, tmp_path / "logit_eps1", eps=1.0)
    contact_sheet(
        {"natural": tmp_path / "natural", "logit_eps1": tmp_path / "logit_eps1"},
        tmp_path / "sheet.png",
        per_class=1,
    )
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.size[1] > im.size[0]  # 10 rows (one per class), 2 columns
    assert pd.read_csv(tmp_path / "natural/dirmap.csv")["im_path"].is_unique


# --- multi-view enhancement, steps per epsilon, provenance --------------------------------------


def test_views_and_steps_are_recorded_in_the_sets_provenance(held_out, digits_model, tmp_path):
    """Runs with and without views are told apart by the provenance.json written with the set;
    a steps mapping gives its epsilon's steps; a chunked multi-view run enhances too."""
    import json

    single = _run(held_out, digits_model, tmp_path / "single", eps=1.0, steps={1: 3, 4: 9})
    views = {"num_views": 2, "types": ["color", "translation", "cutout"], "seed": 5}
    multi = _run(held_out, digits_model, tmp_path / "multi", eps=1.0, views=views, view_chunk=64)
    plain, record = (
        json.loads((tmp_path / f / "provenance.json").read_text()) for f in ("single", "multi")
    )
    assert plain["settings"]["views"] is None and plain["steps"] == 3
    assert plain["settings"]["steps"] == {"1": 3, "4": 9}  # the setting as given (JSON keys)
    assert record["settings"]["views"] == {**views, "cutout": "inside"}
    assert record["steps"] == 2 and record["settings"]["view_chunk"] == 64
    assert {"eps", "objective", "images", "guide", "mode", "lwise", "set"} <= set(record)
    assert record["set"] == "multi" and record["images"] == len(multi)
    # Averaged over views (K·B = 400 views in chunks of 64), the gain is smaller but real.
    assert multi["logit_gain"].mean() > 0.1
    assert multi["logit_gain"].mean() < single["logit_gain"].mean()


def test_compilation_is_chosen_by_job_size_unless_set():
    from lwise.guide.compiling import (
        COMPILE_FROM_IMAGE_STEPS,
        cudnn_autotune,
        is_compiled,
        should_compile,
    )

    assert should_compile(True, 10, 1) is True and should_compile(False, 10**7, 40) is False
    assert should_compile("auto", 1000, 40) is False  # 41,000 image-steps: eager
    assert should_compile("auto", COMPILE_FROM_IMAGE_STEPS // 41 + 1, 40) is None  # GPU: compile
    assert EnhanceConfig.from_config().compile == "auto"
    # cuDNN's per-shape autotuning, like compiling, only for jobs large enough to repay it.
    assert not cudnn_autotune(4096, 40) and cudnn_autotune(COMPILE_FROM_IMAGE_STEPS // 41 + 1, 40)
    with pytest.raises(Exception, match="compile"):
        EnhanceConfig.from_config({"compile": "sometimes"})
    # What turns on pgd's compiled update in a job: a compiled guide net.
    net = torch.nn.Linear(2, 2)
    assert not is_compiled(net) and is_compiled(torch.compile(net))
