import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import SMALL_TRAIN

from lwise.core.config import ConfigError
from lwise.guide._optim import lr_multiplier, make_optimizer, step_schedule
from lwise.guide.checkpoints import load_model, save_checkpoint
from lwise.guide.fast import LiveFolded
from lwise.guide.models import build_model
from lwise.guide.train import TrainConfig, _attack, _train_epoch, run_training, train


def settings(**overrides) -> TrainConfig:
    return TrainConfig.from_config(overrides)


def test_schedules():
    step = settings(schedule="step", step_lr=50, step_gamma=0.1)
    assert [lr_multiplier(step, e) for e in (0, 49, 50, 120)] == pytest.approx([1, 1, 0.1, 0.01])
    cos = settings(schedule="cosine", lr=0.1, epochs=15, warmup_epochs=5)
    assert lr_multiplier(cos, 0) == pytest.approx(0.2)
    assert lr_multiplier(cos, 5) == pytest.approx(1.0)  # peak: the configured lr itself
    assert lr_multiplier(cos, 10) == pytest.approx(0.5)
    ref = settings(schedule="cosine_reference", lr=0.1, epochs=15, warmup_epochs=5)
    assert 0.1 * lr_multiplier(ref, 5) == pytest.approx(0.01)  # L-WISE's lr² peak
    pw = settings(schedule="piecewise", milestones=[[0, 1.0], [3, 0.5], [6, 0.1]])
    assert [lr_multiplier(pw, e) for e in (0, 3, 5, 6)] == [1.0, 0.5, 0.5, 0.1]


def test_training_config_defaults_come_from_the_schema():
    cfg = TrainConfig.from_config({})
    # robustness/defaults.py (ImageNet) as L-WISE fills them in.
    assert (cfg.arch, cfg.lr, cfg.momentum, cfg.weight_decay) == ("resnet50", 0.1, 0.9, 1e-4)
    assert (cfg.eps, cfg.attack_steps, cfg.attack_lr, cfg.constraint) == (3.0, 7, 0.5, "2")
    assert (cfg.optimizer, cfg.schedule) == ("sgd", "step")
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.milestones == ()
    assert TrainConfig.from_dict(SMALL_TRAIN) == TrainConfig.from_config(SMALL_TRAIN)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"epochs": "two"}, r"guide\.train\.epochs 'two': 'two' is not of type 'integer'"),
        ({"eps": -3}, r"guide\.train\.eps -3: -3 is less than the minimum of 0"),
        ({"schedule": "linear"}, r"guide\.train\.schedule 'linear'"),
        ({"constraint": 2}, r"guide\.train\.constraint 2"),
        ({"epoch": 3}, r"'epoch' was unexpected"),
        ({"milestones": [[3]]}, r"guide\.train\.milestones\.0 \[3\]"),
        ({"optimizer": "adam"}, r"guide\.train\.optimizer 'adam'"),
        ({"plateau_factor": 1.5}, r"guide\.train\.plateau_factor 1\.5"),
    ],
)
def test_training_config_errors_name_the_key_and_value(bad, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_config(bad)


def test_adamw_and_the_plateau_schedule_are_visalign_s():
    model = build_model("small_cnn", 10, [0.5] * 3, [0.25] * 3)
    opt, sched = make_optimizer(model, settings())  # the defaults: today's SGD
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    cfg = settings(optimizer="adamw", lr=1e-5, weight_decay=0.01, schedule="plateau")
    opt, sched = make_optimizer(model, cfg)
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.AdamW)
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (
        1e-5, 0.01, (0.9, 0.999), 1e-8,
    )  # fmt: skip
    # VisAlign's pl_model.py: mode min, factor 0.5, patience 10, cooldown 10, min_lr 1e-6.
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (sched.mode, sched.factor, sched.patience, sched.cooldown) == ("min", 0.5, 10, 10)
    assert sched.min_lrs == [1e-6]
    lrs = []
    for loss in [1.0] * 40:  # never improves: a cut after 11 validations, then 10 of cooldown
        step_schedule(sched, {"train_loss": 0.5})  # an epoch without validation: no step
        step_schedule(sched, {"val_loss": loss})
        lrs.append(opt.param_groups[0]["lr"])
    cuts = [i + 1 for i in range(1, len(lrs)) if lrs[i] < lrs[i - 1]]
    assert cuts == [12, 33] and lrs[-1] == pytest.approx(2.5e-6)
    with pytest.raises(ValueError, match="plateau"):
        lr_multiplier(cfg, 0)


class _Killed(Exception):
    pass


def test_plateau_schedule_resumes_where_it_was_killed(digits_folder, tmp_path, monkeypatch, caplog):
    """A run killed after epoch 2 continues with the plateau's count of epochs without
    improvement, so it cuts the learning rate where a run without the kill does."""
    import lwise.guide.train as training

    csv = _class_subset(digits_folder, tmp_path / "imagefolder", ["0", "1"])
    # So small a learning rate that the validation loss never improves by the threshold.
    cfg = TrainConfig.from_dict(
        {**SMALL_TRAIN, "epochs": 4, "adversarial": False, "optimizer": "adamw", "lr": 1e-7,
         "schedule": "plateau", "plateau_patience": 1, "plateau_cooldown": 1,
         "plateau_min_lr": 0.0, "eval_every": 1}
    )  # fmt: skip

    def run(name):
        out = tmp_path / name
        train(csv, out / "model.pt", out / "metrics.csv", out / "state", cfg)
        return pd.read_csv(out / "metrics.csv"), torch.load(out / "state/last.pt")

    straight, state = run("straight")
    real = training.save_state

    def killed_after_epoch_2(last, key, epoch, *args):
        real(last, key, epoch, *args)
        if epoch == 2:
            raise _Killed

    monkeypatch.setattr(training, "save_state", killed_after_epoch_2)
    with pytest.raises(_Killed):
        run("killed")
    monkeypatch.undo()
    with caplog.at_level("INFO", logger="lwise.guide"):
        resumed, resumed_state = run("killed")
    assert "resuming after epoch 2" in caplog.text
    # Epoch 1 sets the best loss, 2 and 3 miss it: a cut, which needs epoch 2's count.
    assert straight["lr"].tolist() == pytest.approx([1e-7] * 3 + [5e-8], rel=1e-9)
    pd.testing.assert_frame_equal(
        resumed.drop(columns="seconds"), straight.drop(columns="seconds"), rtol=1e-6
    )
    assert resumed_state["scheduler"] == state["scheduler"]
    assert state["kinds"] == ["AdamW", "ReduceLROnPlateau"]


def test_torchrun_entry_point_checks_its_config_before_training(tmp_path):
    message = r"guide\.train\.epochs 'two': 'two' is not of type 'integer'"
    (tmp_path / "cfg.json").write_text(json.dumps({**SMALL_TRAIN, "epochs": "two"}))
    proc = subprocess.run(
        [sys.executable, "-m", "lwise.guide.train", "--dirmap", str(tmp_path / "none.csv"),
         "--out-model", str(tmp_path / "m.pt"), "--out-metrics", str(tmp_path / "m.csv"),
         "--state-dir", str(tmp_path / "s"), "--config", str(tmp_path / "cfg.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0 and "ConfigError" in proc.stderr
    assert re.search(message, proc.stderr) and not (tmp_path / "s").exists()


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
        adv = _attack(model.train(), x, y, settings(eps=1.0, attack_steps=2), LiveFolded(model))
    assert "non-finite" not in caplog.text
    assert ((adv - x).flatten(1).norm(dim=1) > 0.5).all()
    assert model.training  # handed back in training mode
    cfg = settings(eps=1.0, attack_steps=2, mixed_precision=False)  # fp32: the reference
    assert torch.isfinite(_attack(model, x, y, cfg, None)).all()


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
    # Augmented, with loader workers kept across epochs: a resumed run draws the same crops.
    cfg = {**SMALL_TRAIN, "epochs": 4, "adversarial": False, "eval_every": 2,
           "augment": "crop_flip", "workers": 2}  # fmt: skip
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
def test_two_processes_train_with_ddp_on_cpu(digits_folder, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CPU processes (gloo) on any machine
    cfg = TrainConfig.from_dict({**SMALL_TRAIN, "epochs": 3, "adversarial": False})
    run_training(
        digits_folder / "dirmap.csv",
        tmp_path / "m.pt",
        tmp_path / "m.csv",
        tmp_path / "s",
        cfg,
        gpus=2,
    )
    # Both ranks compared every parameter and buffer at the end and found them identical.
    assert capfd.readouterr().err.count("the 2 training processes hold identical weights") == 2
    metrics = pd.read_csv(tmp_path / "m.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    assert metrics["val_clean_acc"].iloc[-1] > 0.6  # chance is 0.1; digits are easy
    assert load_model(tmp_path / "m.pt").num_classes == 10


def test_replicas_that_differ_are_caught(tmp_path):
    """The end-of-training check really compares the ranks: one changed weight fails it."""
    script = tmp_path / "ranks.py"
    script.write_text(
        "import os, torch, torch.distributed as dist\n"
        "from lwise.guide._distributed import replicas_agree\n"
        "dist.init_process_group('gloo')\n"
        "torch.manual_seed(0)\n"
        "m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))\n"
        "same = replicas_agree(m, torch.device('cpu'))\n"
        "if dist.get_rank() == 1:\n"
        "    m[1].running_mean[1] += 1e-6\n"
        # One write per rank: a pipe write this short is atomic, so the ranks' lines never mix.
        "after = replicas_agree(m, torch.device('cpu'))\n"
        "os.write(1, f'agree {same} {after}\\n'.encode())\n"
        "dist.destroy_process_group()\n"
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(script)], capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("agree True False") == 2


# --- resume state belongs to one run (issue 13, items 1 and 11) --------------------------------


def _class_subset(digits_folder, out, classes: list[str]):
    """An ImageFolder of some digit classes, renumbered 0..K-1 as the imagefolder stage does."""
    from lwise.data import dirmap

    df = dirmap.read(digits_folder / "dirmap.csv")
    df = df[df["class"].isin(classes)].copy()
    df["class_num"] = df["class"].map({c: i for i, c in enumerate(sorted(classes))})
    if out.exists():
        shutil.rmtree(out)
    for rel in df["im_path"]:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(digits_folder / rel, out / rel)
    dirmap.write(df.drop(columns=["orig_im_path"], errors="ignore"), out / "dirmap.csv")
    return out / "dirmap.csv"


def test_changed_dataset_is_not_resumed(digits_folder, tmp_path, caplog):
    cfg = TrainConfig.from_dict({**SMALL_TRAIN, "epochs": 1, "adversarial": False})
    folder, state = tmp_path / "imagefolder", tmp_path / "resume"
    outs = (tmp_path / "model.pt", tmp_path / "metrics.csv", state)

    def rerun(classes):
        caplog.clear()
        csv = _class_subset(digits_folder, folder, classes)
        with caplog.at_level("INFO", logger="lwise.guide"):
            train(csv, *outs, cfg)
        return load_model(tmp_path / "model.pt")

    assert rerun(["0", "1", "2"]).class_names == ["0", "1", "2"]
    first = (tmp_path / "model.pt").read_bytes()
    # The same run, with settings that change only its speed: resumed, nothing to do.
    faster = TrainConfig.from_dict({**SMALL_TRAIN, "epochs": 1, "adversarial": False,
                                    "workers": 2, "compile": True})  # fmt: skip
    with caplog.at_level("INFO", logger="lwise.guide"):
        train(folder / "dirmap.csv", *outs, faster)
    assert "resuming after epoch 1" in caplog.text
    assert rerun(["3", "4", "5"]).class_names == ["3", "4", "5"]
    assert "resuming" not in caplog.text
    assert "its run had other training data" in caplog.text
    assert (tmp_path / "model.pt").read_bytes() != first
    four = rerun(["3", "4", "5", "6"])  # a head of another size: no size-mismatch traceback
    assert four.num_classes == 4 and four.class_names == ["3", "4", "5", "6"]
    assert "its run had other training data" in caplog.text


def test_changed_initial_checkpoint_is_not_resumed(digits_folder, tmp_path, caplog):
    csv = _class_subset(digits_folder, tmp_path / "imagefolder", ["0", "1"])
    init = tmp_path / "init.pt"
    cfg = TrainConfig.from_dict(
        {**SMALL_TRAIN, "epochs": 1, "adversarial": False, "init_checkpoint": str(init)}
    )
    outs = (tmp_path / "model.pt", tmp_path / "metrics.csv", tmp_path / "resume")
    torch.manual_seed(0)
    save_checkpoint(init, build_model("small_cnn", 2, [0.5] * 3, [0.25] * 3))
    train(csv, *outs, cfg)
    torch.manual_seed(1)  # the same path, another starting model
    save_checkpoint(init, build_model("small_cnn", 2, [0.5] * 3, [0.25] * 3))
    with caplog.at_level("INFO", logger="lwise.guide"):
        train(csv, *outs, cfg)
    assert "resuming" not in caplog.text
    assert "its run had other initial checkpoint" in caplog.text


def test_resume_state_of_another_class_count_is_discarded(tmp_path, caplog):
    """A state with this run's key but a model of another shape (e.g. written by hand or by an
    older version) is discarded with the reason, never a size-mismatch traceback."""
    from lwise.guide._resume import load_state, save_state

    def parts(classes):
        model = build_model("small_cnn", classes, [0.5] * 3, [0.25] * 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)

    key = {"settings": "s", "data": "d", "init_checkpoint": "none"}
    last = tmp_path / "last.pt"
    save_state(last, key, 3, *parts(3), [{"epoch": 3}], 0.5)
    with caplog.at_level("INFO", logger="lwise.guide"):
        assert load_state(last, key, *parts(4)) == ([], 0, -1.0)
    assert "shape (3, " in caplog.text and "(4, " in caplog.text
    assert "another number of classes" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="lwise.guide"):  # the matching model resumes
        assert load_state(last, key, *parts(3)) == ([{"epoch": 3}], 3, 0.5)
        assert load_state(last, {**key, "settings": "t"}, *parts(3)) == ([], 0, -1.0)
    assert "its run had other training settings" in caplog.text
    torch.save({"epoch": 1, "digest": "abc"}, last)  # the format before run keys
    with caplog.at_level("INFO", logger="lwise.guide"):
        assert load_state(last, key, *parts(3)) == ([], 0, -1.0)
    assert "no run key" in caplog.text


def test_resume_state_of_another_optimizer_is_discarded(tmp_path, caplog):
    """A state with this run's key written with another optimizer or schedule (by hand, or
    before the run key knew them) is discarded with the reason, not loaded into the wrong one."""
    from lwise.guide._resume import load_state, save_state

    model = build_model("small_cnn", 3, [0.5] * 3, [0.25] * 3)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    key = {"settings": "s", "data": "d", "init_checkpoint": "none"}
    last = tmp_path / "last.pt"
    save_state(last, key, 2, model, sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda e: 1.0),
               [{"epoch": 2}], 0.5)  # fmt: skip
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-5)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(adamw)
    with caplog.at_level("INFO", logger="lwise.guide"):
        assert load_state(last, key, model, adamw, plateau) == ([], 0, -1.0)
    assert "are SGD and LambdaLR, this run's AdamW and ReduceLROnPlateau" in caplog.text
    plateau.step(1.0)
    plateau.step(2.0)  # one validation without improvement
    save_state(last, key, 2, model, adamw, plateau, [{"epoch": 2}], 0.5)
    fresh = torch.optim.lr_scheduler.ReduceLROnPlateau(adamw)
    assert load_state(last, key, model, adamw, fresh) == ([{"epoch": 2}], 2, 0.5)
    assert (fresh.best, fresh.num_bad_epochs) == (1.0, 1)


def test_gradient_clipping_bounds_each_update():
    """guide.train.grad_clip_norm (VisAlign's 0.5): one SGD step without momentum moves the
    weights by lr x the clipped gradient, whose total norm is the bound."""
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) * 50  # large inputs: a large gradient
    y = torch.arange(8) % 10
    moves = {}
    for clip in (None, 0.5):
        torch.manual_seed(1)
        model = build_model("small_cnn", 10, [0.5] * 3, [0.25] * 3)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        cfg = settings(lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=clip)
        opt, _ = make_optimizer(model, cfg)
        loader = [(x, y, torch.arange(8))]
        run = type("R", (), {"device": torch.device("cpu"), "fast": False, "main": True})()
        _train_epoch(model, model, loader, opt, cfg, run, None, "t")
        after = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves[clip] = (after - before).norm().item()
    assert moves[0.5] == pytest.approx(0.5, rel=1e-4)
    assert moves[None] > 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_robust_training_with_a_compiled_attack_learns_as_the_eager_one(digits_folder, tmp_path):
    """`guide.train.compile`: the training attacks run on the compiled folded copy (compiled
    once, for full batches) and the model learns as with the eager copy."""
    final = {}
    for compiled in (False, True):
        cfg = TrainConfig.from_dict({**SMALL_TRAIN, "epochs": 3, "compile": compiled})
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        out = tmp_path / str(compiled)
        metrics = train(digits_folder / "dirmap.csv", out / "m.pt", out / "m.csv", out / "s", cfg)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        # 600 images in batches of 25, all full: one shape, with and without input gradients;
        # and pgd's compiled update, for its first step (no best iterate yet) and the others.
        assert graphs == (4 if compiled else 0)
        final[compiled] = metrics.iloc[-1]
        assert final[compiled]["val_clean_acc"] > 0.6 and final[compiled]["val_adv_acc"] > 0.3
    for key in ("val_clean_acc", "val_adv_acc"):
        assert abs(final[True][key] - final[False][key]) < 0.1, key


def test_augmentation_depends_on_seed_epoch_and_image_only(digits_folder):
    """Each image's random crop and flip come from (seed, epoch, position): the same with loader
    workers kept across epochs as in the main process, in any order of loading; another epoch
    draws anew."""
    from lwise.guide import _train_data
    from lwise.guide._distributed import Run

    def epoch_batches(workers: int, epochs: list[int]) -> dict[int, dict[int, torch.Tensor]]:
        cfg = TrainConfig.from_dict(
            {**SMALL_TRAIN, "augment": "crop_flip", "workers": workers, "batch_size": 100}
        )
        train_set, _, _ = _train_data.datasets(digits_folder / "dirmap.csv", cfg)
        loader = _train_data.train_loader(train_set, cfg, Run(torch.device("cpu"), 0, 1), False)
        seen = {}
        for epoch in epochs:
            loader.sampler.set_epoch(epoch)
            batches = list(loader)
            pairs = (zip(xs, pos, strict=True) for xs, _, pos in batches)
            seen[epoch] = {int(i): x for pair in pairs for x, i in pair}
            seen[epoch]["order"] = torch.cat([pos for _, _, pos in batches])
        return seen

    main = epoch_batches(0, [1, 2])
    workers = epoch_batches(2, [0, 1])  # the same workers load epochs 0 and 1
    assert torch.equal(main[1]["order"], workers[1]["order"])
    assert not torch.equal(main[1]["order"], main[2]["order"])
    images = [i for i in main[1] if i != "order"]
    assert len(images) == 600
    assert all(torch.equal(main[1][i], workers[1][i]) for i in images)
    changed = sum(not torch.equal(main[1][i], main[2][i]) for i in images)
    assert changed > 500  # crops of 0.8-1 of the area at 32 px rarely coincide
