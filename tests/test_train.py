import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import SMALL_TRAIN

from lwise.guide.checkpoints import load_model, save_checkpoint
from lwise.guide.models import build_model
from lwise.guide.train import TrainConfig, _attack, lr_multiplier, run_training, train


def test_schedules():
    step = TrainConfig(schedule="step", step_lr=50, step_gamma=0.1)
    assert [lr_multiplier(step, e) for e in (0, 49, 50, 120)] == pytest.approx([1, 1, 0.1, 0.01])
    cos = TrainConfig(schedule="cosine", lr=0.1, epochs=15, warmup_epochs=5)
    assert lr_multiplier(cos, 0) == pytest.approx(0.2)
    assert lr_multiplier(cos, 5) == pytest.approx(1.0)  # peak: the configured lr itself
    assert lr_multiplier(cos, 10) == pytest.approx(0.5)
    ref = TrainConfig(schedule="cosine_reference", lr=0.1, epochs=15, warmup_epochs=5)
    assert 0.1 * lr_multiplier(ref, 5) == pytest.approx(0.01)  # L-WISE's lr² peak
    pw = TrainConfig(schedule="piecewise", milestones=((0, 1.0), (3, 0.5), (6, 0.1)))
    assert [lr_multiplier(pw, e) for e in (0, 3, 5, 6)] == [1.0, 0.5, 0.5, 0.1]
    with pytest.raises(ValueError, match="schedule 'linear'"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match=r"unknown training option\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


def test_fast_training_attack_survives_logits_beyond_float16(caplog):
    """An untrained network's eval-mode logits can exceed float16's range (65504); the fast
    training attack still moves every image, as it runs in bfloat16 like the training step."""
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    with torch.no_grad():
        model.net.fc.weight.mul_(1e8)
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    assert model.eval()(x).abs().max() > 65504
    with caplog.at_level("WARNING", logger="lwise"):
        adv = _attack(model.train(), x, y, TrainConfig(eps=1.0, attack_steps=2), fast=True)
    assert "non-finite" not in caplog.text
    assert ((adv - x).flatten(1).norm(dim=1) > 0.5).all()
    assert model.training  # handed back in training mode
    cfg = TrainConfig(eps=1.0, attack_steps=2, mixed_precision=False)  # fp32: the reference
    assert torch.isfinite(_attack(model, x, y, cfg, fast=True)).all()


def test_small_robust_model_beats_chance(digits_model):
    metrics = pd.read_csv(digits_model.parent / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4]
    last = metrics.iloc[-1]
    assert last["val_clean_acc"] > 0.6 and last["val_adv_acc"] > 0.4  # chance is 0.1
    model = load_model(digits_model)
    assert model.num_classes == 10 and model.class_names == [str(i) for i in range(10)]


def _start(folder, out, cfg, device="cpu"):
    (out / "cfg.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "cfg.json").write_text(json.dumps(cfg))
    cmd = [
        sys.executable, "-m", "lwise.guide.train", "--dirmap", str(folder / "dirmap.csv"),
        "--out-model", str(out / "model.pt"), "--out-metrics", str(out / "metrics.csv"),
        "--state-dir", str(out / "state"), "--config", str(out / "cfg.json"),
    ]  # fmt: skip
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"),
        ),
    ],
)
def test_killed_training_resumes_the_same_schedule(digits_folder, tmp_path, device):
    cfg = {**SMALL_TRAIN, "epochs": 4, "adversarial": False, "eval_every": 2}
    proc = _start(digits_folder, tmp_path / "killed", cfg, device)
    state = tmp_path / "killed/state/last.pt"
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.exists() and torch.load(state, weights_only=True)["epoch"] >= 2:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed/model.pt").exists()
    resumed = _start(digits_folder, tmp_path / "killed", cfg, device)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert "resuming after epoch" in resumed.stderr.read()
    straight = _start(digits_folder, tmp_path / "straight", cfg, device)
    assert straight.wait() == 0
    a = pd.read_csv(tmp_path / "killed/metrics.csv")
    b = pd.read_csv(tmp_path / "straight/metrics.csv")
    assert list(a["epoch"]) == [1, 2, 3, 4]
    pd.testing.assert_series_equal(a["lr"], b["lr"])
    if device == "cuda":  # cuDNN kernels are not bitwise reproducible across runs
        return
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"], rtol=1e-5)
    wa = load_model(tmp_path / "killed/model.pt").state_dict()
    wb = load_model(tmp_path / "straight/model.pt").state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)


def test_fine_tune_replaces_head_and_freezes(digits_folder, tmp_path):
    base = build_model("small_cnn", 4, [0.5] * 3, [0.25] * 3)  # another dataset's 4 classes
    save_checkpoint(tmp_path / "base.pt", base)
    cfg = TrainConfig.from_dict(
        {**SMALL_TRAIN, "epochs": 1, "adversarial": False, "freeze": "last_layer",
         "init_checkpoint": str(tmp_path / "base.pt")}
    )  # fmt: skip
    train(digits_folder / "dirmap.csv", tmp_path / "m.pt", tmp_path / "m.csv", tmp_path / "s", cfg)
    tuned = load_model(tmp_path / "m.pt")
    assert tuned.num_classes == 10
    before, after = base.state_dict(), tuned.state_dict()
    frozen = [k for k in before if k.startswith("net.features")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)


@pytest.mark.slow
def test_two_processes_train_with_ddp_on_cpu(digits_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU processes (gloo) on any machine
    cfg = TrainConfig.from_dict({**SMALL_TRAIN, "epochs": 1, "adversarial": False})
    run_training(
        digits_folder / "dirmap.csv",
        tmp_path / "m.pt",
        tmp_path / "m.csv",
        tmp_path / "s",
        cfg,
        gpus=2,
    )
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert len(metrics) == 1 and metrics.loc[0, "val_clean_acc"] > 0.1
    assert load_model(tmp_path / "m.pt").num_classes == 10
