"""Guide models from files: every layout with the config's loader settings, contradictions,
untrusted pickles, import and export, and pooling a finer model's logits per dataset class."""

import json

import dill
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from safetensors.torch import load_file

from lwise.guide.checkpoints import (
    CheckpointError,
    GuideFileConfig,
    load_model,
    read_record,
    save_checkpoint,
)
from lwise.guide.export import export_checkpoint, file_sha256, import_checkpoint
from lwise.guide.load import load_guide, pool_logits, pooled_members
from lwise.guide.models import build_model
from lwise.guide.score import ScoringConfig, score

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("small_cnn", 12, MEAN, STD).eval()
    for p in m.parameters():  # away from the initial values, so a wrong load shows
        p.data.add_(0.1 * torch.randn_like(p))
    for b in m.net.modules():
        if isinstance(b, torch.nn.BatchNorm2d):
            b.running_mean.uniform_(-0.2, 0.2)
            b.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def robustness_state(model) -> dict[str, torch.Tensor]:
    """`DataParallel(AttackerModel).state_dict()` as robustness `train.py` saves it."""
    net = model.net.state_dict()
    norm = {
        "new_mean": model.normalize.mean.view(3, 1, 1),
        "new_std": model.normalize.std.view(3, 1, 1),
    }
    state = {f"module.normalizer.{k}": v for k, v in norm.items()}
    state |= {f"module.model.{k}": v for k, v in net.items()}
    state |= {f"module.attacker.normalize.{k}": v for k, v in norm.items()}
    return state | {f"module.attacker.model.{k}": v for k, v in net.items()}


def write_layout(layout: str, model, path):
    """`model` saved in one of the layouts users bring; returns the path."""
    if layout == "ours":
        save_checkpoint(path, model, training_args={"image_size": 32})
    elif layout == "plain":
        torch.save(model.net.state_dict(), path)
    elif layout == "plain_module":  # saved from a DataParallel wrapper
        torch.save({f"module.{k}": v for k, v in model.net.state_dict().items()}, path)
    elif layout == "robustness":  # dill, with a lambda as robustness's LambdaLR schedules hold
        payload = {
            "model": robustness_state(model),
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.1).state_dict(),
            "schedule": {"lr_lambda": lambda epoch: 0.1**epoch},
            "epoch": 3,
        }
        torch.save(payload, path, pickle_module=dill)
    else:
        raise ValueError(layout)
    return path


LOADER = {"arch": "small_cnn", "mean": MEAN, "std": STD, "image_size": 32}


@pytest.mark.parametrize("layout", ["ours", "plain", "plain_module", "robustness"])
def test_every_layout_loads_with_the_config_settings(tmp_path, model, images, layout):
    path = write_layout(layout, model, tmp_path / f"{layout}.pt")
    trusted = layout == "robustness"
    guide = load_guide(path, trusted=trusted, device="cpu", **LOADER)
    assert guide.num_classes == 12 and guide.input_size == 32
    with torch.no_grad():
        assert torch.allclose(guide.net(images), model(images), atol=1e-6)


@pytest.mark.parametrize("stored", ["float32", "float16", "channels_last"])
def test_a_network_takes_the_files_weights_as_float32_contiguous_tensors(
    tmp_path, model, images, stored, monkeypatch
):
    """The network is built empty and takes the file's tensors as they are; a file of another
    dtype or layout is copied into an initialised network instead, as before."""
    import copy

    import lwise.guide.checkpoints as checkpoints

    saved = copy.deepcopy(model)
    if stored == "float16":
        saved.net.half()
    elif stored == "channels_last":
        saved.to(memory_format=torch.channels_last)
    save_checkpoint(tmp_path / "m.pt", saved, training_args={"image_size": 32})
    builds, real_build = [], checkpoints.build_model

    def build(*args, **kwargs):
        builds.append(kwargs.get("empty", False))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "build_model", build)
    loaded = load_model(tmp_path / "m.pt")
    # the head's probe and the network, both empty; an initialised one only when needed
    assert builds == [True, True] + ([False] if stored != "float32" else [])
    tensors = [*loaded.net.parameters(), *loaded.net.buffers()]
    assert all(not t.is_meta and t.is_contiguous() for t in tensors)
    assert all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    assert all(p.requires_grad for p in loaded.parameters())
    for (name, a), b in zip(
        loaded.net.state_dict().items(), saved.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b.float()), name
    if stored != "float16":
        with torch.no_grad():
            assert torch.equal(loaded(images), model(images))


def test_robustness_file_without_trust_is_refused_saying_why_and_how(tmp_path, model):
    path = write_layout("robustness", model, tmp_path / "checkpoint.pt.best")
    with pytest.raises(CheckpointError) as err:
        load_model(path, **LOADER)
    text = str(err.value)
    assert "pickled Python objects" in text and "runs whatever code" in text  # why
    assert "guide.trusted: true" in text and "--trusted" in text  # how
    assert "dill" in text


def test_what_the_file_records_wins_and_a_contradiction_names_both(tmp_path, model, caplog):
    robust = write_layout("robustness", model, tmp_path / "r.pt")
    # The file's normalisation wins over the config's, as in L-WISE, with a warning.
    loaded = load_model(robust, trusted=True, arch="small_cnn", mean=[0.1] * 3, std=[0.9] * 3)
    assert loaded.normalize.mean.flatten().tolist() == pytest.approx(MEAN)
    assert "using the checkpoint's normalisation" in caplog.text
    # 12 outputs in the file and num_classes 16 in the config.
    with pytest.raises(CheckpointError, match=r"has 12 classes but num_classes=16.*guide\.num"):
        load_model(robust, trusted=True, arch="small_cnn", num_classes=16)
    ours = write_layout("ours", model, tmp_path / "ours.pt")
    with pytest.raises(CheckpointError, match="records arch 'small_cnn', but 'resnet18'"):
        load_model(ours, arch="resnet18")
    with pytest.raises(CheckpointError, match="records image_size 32, but 224 was given"):
        load_model(ours, image_size=224)
    with pytest.raises(CheckpointError, match=r"does not record its architecture: give arch"):
        load_model(robust, trusted=True)
    plain = write_layout("plain", model, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match=r"stores no normalisation: give mean and std"):
        load_model(plain, arch="small_cnn")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothere.pt")


def test_guide_config_section_gives_the_loader_arguments():
    cfg = GuideFileConfig.from_config({"arch": "resnet50", "trusted": True})
    assert cfg.loader_args() == {
        "trusted": True, "arch": "resnet50", "num_classes": None, "mean": None, "std": None,
        "image_size": None,
    }  # fmt: skip
    with pytest.raises(ValueError, match="guide.num_classes 0"):
        GuideFileConfig.from_config({"num_classes": 0})


def test_import_writes_our_format_that_needs_no_trust(tmp_path, model, images):
    robust = write_layout("robustness", model, tmp_path / "r.pt")
    out = import_checkpoint(robust, tmp_path / "imported.pt", trusted=True, **LOADER)
    raw = torch.load(out, weights_only=True)  # no unpickling of code
    assert raw["arch"] == "small_cnn" and raw["num_classes"] == 12
    assert raw["training_args"]["source_sha256"] == file_sha256(robust)
    guide = load_guide(out, trusted=False, device="cpu")
    assert guide.input_size == 32
    with torch.no_grad():
        assert torch.allclose(guide.net(images), model(images), atol=1e-6)


def test_export_is_a_plain_state_dict_with_a_sidecar(tmp_path, images):
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", 3, MEAN, STD, class_names=["a", "b", "c"]).eval()
    src = tmp_path / "ours.pt"
    save_checkpoint(src, model, training_args={"image_size": 32})
    weights, sidecar = export_checkpoint(src, tmp_path / "out" / "guide.safetensors")
    assert sidecar == tmp_path / "out" / "guide.json"
    meta = json.loads(sidecar.read_text())
    assert meta["arch"] == "mobilenet_v3_small" and meta["class_names"] == ["a", "b", "c"]
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD)
    assert meta["image_size"] == 32 and meta["num_classes"] == 3
    # Plain torchvision keys: a stock torchvision model loads them strictly.
    net = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    net.load_state_dict(load_file(str(weights)))
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(net(x), model(images), atol=1e-5)
        back = load_model(weights)  # the sidecar says everything
        assert back.class_names == ["a", "b", "c"]
        assert torch.allclose(back(images), model(images), atol=1e-5)
    with pytest.raises(ValueError, match="safetensors"):
        export_checkpoint(src, tmp_path / "guide.pt")


def test_read_record_names_the_layout(tmp_path, model):
    for layout, expected in [("plain_module", "plain"), ("robustness", "robustness")]:
        rec = read_record(write_layout(layout, model, tmp_path / layout), trusted=True)
        assert rec.layout == expected
        assert set(rec.net_state) == set(model.net.state_dict())  # no attacker copies


def test_pool_logits_takes_each_class_maximum_over_its_members():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, -1.0], [4.0, 0.0, 0.5, 6.0, 7.0]])
    pooled = pool_logits(logits, {1: [3, 4], 0: [0, 2]})  # columns in sorted class order
    assert pooled.tolist() == [[3.0, 2.0], [4.0, 7.0]]
    # Class 1 of row 0 would lose under a sum of 2 members against 2, not under a max of one.
    with pytest.raises(ValueError, match="outside the model's 5 classes"):
        pool_logits(logits, {0: [0, 5]})
    with pytest.raises(ValueError, match="at least one member"):
        pool_logits(logits, {0: []})


def test_pooled_members_come_from_the_dirmap():
    df = pd.DataFrame(
        {"class": ["dog", "dog", "fish", "fish", "dog"], "class_num": [0, 0, 1, 1, 0],
         "orig_class_num": [151, 152, 0, 391, 151]}
    )  # fmt: skip
    assert pooled_members(df, "orig_class_num") == {0: [151, 152], 1: [0, 391]}
    assert pooled_members(df, "class_num") is None
    df.loc[2, "orig_class_num"] = 152  # one fine class under two superclasses
    with pytest.raises(ValueError, match="orig_class_num 152 belongs to several classes"):
        pooled_members(df, "orig_class_num")


def test_a_finer_model_decides_among_the_datasets_classes(digits_folder, digits_model, tmp_path):
    """The 10-way digits model on a two-class 'low'/'high' dataset: scores use the digit
    (orig_class_num, as the 1000-way index on ImageNet-16); the decision, the confusion
    matrix, the probabilities and the accuracy per class pool the digits' logits by max."""
    df = pd.read_csv(digits_folder / "dirmap.csv")
    df = df.groupby(["split", "class_num"]).head(6).reset_index(drop=True)
    df["orig_class_num"] = df["class_num"]
    df["orig_class"] = df["class"].astype(str)
    df["class_num"] = (df["orig_class_num"] >= 5).astype(int)
    df["class"] = np.where(df["class_num"] == 1, "high", "low")
    csv = digits_folder / "low_high.csv"
    df.to_csv(csv, index=False)
    out = tmp_path / "scored"
    scored = score(
        csv, digits_model, out / "dirmap.csv", out / "accuracy.csv", out / "confusion.png",
        out / "probabilities.csv", cfg=ScoringConfig.from_config({}), workers=0, trusted=False,
    )  # fmt: skip
    logits = load_guide(digits_model, trusted=False, device="cpu").model.eval()
    from lwise.data.loading import DirmapImages, eval_transform

    data = DirmapImages(df, digits_folder, eval_transform(32), "orig_class_num")
    with torch.no_grad():
        z = logits(torch.stack([data[i][0] for i in range(len(df))]))
    # Score columns: the ground-truth digit's logit, as the rules use orig_class_num.
    gt = z.gather(1, torch.tensor(df["orig_class_num"].to_numpy())[:, None])[:, 0]
    assert np.allclose(scored["robust_gt_logit"], gt.numpy(), atol=1e-4)
    low, high = z[:, :5].amax(1), z[:, 5:].amax(1)
    expected = (high > low).long().numpy()
    assert (scored["predicted_class_num"].to_numpy() == expected).all()
    assert (scored["correct"] == (expected == df["class_num"].to_numpy())).all()
    assert (scored["predicted_orig_class_num"] == z.argmax(1).numpy()).all()
    probs = pd.read_csv(out / "probabilities.csv")
    assert list(probs.columns) == ["im_path", "low", "high"]
    expected_p = torch.stack([low, high], 1).softmax(1).numpy()
    assert np.allclose(probs[["low", "high"]].to_numpy(), expected_p, atol=1e-5)
    acc = pd.read_csv(out / "accuracy.csv")
    assert set(acc["class"]) == {"(all)", "low", "high"}
