"""Grad-CAM, the GRADIA attention loss and target maps, and attention fine-tuning on images
whose class signal sits in one region and a spurious cue in another."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lwise.alignment.attention.run import cam_iou
from lwise.guide import attention as ga


def test_attention_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    pred_w = torch.tensor([1.0, 0.4])
    att_w = torch.tensor([0.0, 1.6])
    cams = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # sample 1 only: the one with a weight
    targets = torch.tensor([[[0.0, 1.0], [0.5, 0.0]]])
    ce0, ce1 = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    task = (1.0 * ce0 + 0.4 * ce1) / 2
    per_sample = 1.6 * (0.5 / 4)  # mean |cam - target| over the 4 cells
    total, t, a = ga.attention_loss(logits, labels, cams, targets, pred_w, att_w)
    assert t.item() == pytest.approx(task)
    assert a.item() == pytest.approx(per_sample / 2)  # over the batch
    assert total.item() == pytest.approx(task + per_sample / 2)
    total, _, a = ga.attention_loss(logits, labels, cams, targets, pred_w, att_w, reference=True)
    assert a.item() == pytest.approx(per_sample)  # GRADIA.py: over the weighted samples only
    total, _, _ = ga.attention_loss(logits, labels, cams, targets, pred_w, att_w, scale=2.0)
    assert total.item() == pytest.approx(task + per_sample)
    with pytest.raises(ValueError, match="samples with an attention weight"):
        ga.attention_loss(logits, labels, cams[:0], targets[:0], pred_w, att_w)


def test_target_map_rounds_like_gradia_in_reference_mode():
    # A 48x48 mask on a 3x3 grid: 8 of the top-left cell's 256 pixels attended. The area resize
    # gives 255*8/256 = 7.97 -> 8 in 8 bits; the blur ([1,2,1]/4 each way, borders reflected
    # without the edge) gives [[2, 1, 0], [1, 0.5, 0], [0, 0, 0]], and OpenCV rounds 0.5 up.
    mask = np.zeros((48, 48), bool)
    mask[0:2, 0:4] = True
    ref = ga.target_map(mask, (3, 3), reference=True)
    np.testing.assert_allclose(ref, [[1, 0.5, 0], [0.5, 0.5, 0], [0, 0, 0]])
    exact = ga.target_map(mask, (3, 3))
    np.testing.assert_allclose(exact, [[1, 0.5, 0], [0.5, 0.25, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="empty"):
        ga.target_map(np.zeros((8, 8)), (2, 2))


def test_area_resize_averages_covered_pixels():
    image = np.arange(36, dtype=float).reshape(6, 6)
    np.testing.assert_allclose(
        ga.area_resize(image, (2, 3)), image.reshape(2, 3, 3, 2).mean((1, 3))
    )
    assert ga.area_resize(np.ones((5, 7)), (2, 3)) == pytest.approx(np.ones((2, 3)))


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


def test_gradcam_batched_equals_one_image_at_a_time():
    model = _net().eval()
    x = torch.rand(5, 3, 16, 16)
    cams, logits = ga.gradcam(model, model[5], x)
    assert cams.shape == (5, 16, 16) and logits.shape == (5, 2)
    assert cams.min() >= 0 and cams.max() <= 1
    for i in range(5):
        single, _ = ga.gradcam(model, model[5], x[i : i + 1])
        torch.testing.assert_close(single[0], cams[i])
    train = ga.training_cams(model, model[5], x, torch.tensor([0, 1, 0, 1, 1]))
    per_image = ga.training_cams(model, model[5], x, torch.tensor([0, 1, 0, 1, 1]), per_image=True)
    assert train.shape == (5, 8, 8)
    torch.testing.assert_close(train, per_image)
    assert ga.default_layer(model, 16) == "5"


def _images(n, rng, cue):
    """Class 0: a horizontal bar, class 1: a vertical bar, both in the top-left quadrant; the
    spurious cue (a bright square, bottom right) marks class 1 when `cue`."""
    x = rng.normal(0.5, 0.08, (n, 1, 16, 16))
    y = np.arange(n) % 2
    for i in range(n):
        o = rng.integers(1, 6)
        if y[i] == 0:
            x[i, 0, o : o + 2, 1:7] += 0.4
        else:
            x[i, 0, 1:7, o : o + 2] += 0.4
        if cue and y[i] == 1:
            x[i, 0, 10:15, 10:15] += 0.5
    x = np.repeat(np.clip(x, 0, 1), 3, 1)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


class _Indexed(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


def test_attention_finetuning_beats_plain_finetuning_without_the_cue():
    rng = np.random.default_rng(0)
    x_train, y_train = _images(160, rng, cue=True)
    x_feedback, y_feedback = _images(80, rng, cue=True)  # validation images with human masks
    x_select, y_select = _images(40, rng, cue=True)  # held-out validation images
    x_test, y_test = _images(60, rng, cue=False)  # the cue removed
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:8, :8] = True  # people look at the bars
    cpu = torch.device("cpu")

    def loader(x, y, shuffle=False, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(_Indexed(x, y), batch_size=40, shuffle=shuffle, generator=gen)

    def iou_and_accuracy(model, x, y):
        cams, logits = ga.gradcam(model, model[5], x)
        iou = cam_iou(cams, mask.expand_as(cams), 0.75).mean().item()
        return iou, (logits.argmax(1) == y).float().mean().item()

    model, _ = ga.train_phase1(
        _net(),
        loader(x_train, y_train, shuffle=True),
        loader(x_select, y_select),
        epochs=10,
        lr=1e-2,
        device=cpu,
    )
    phase1 = {k: v.clone() for k, v in model.state_dict().items()}
    iou_before, acc_before = iou_and_accuracy(model, x_test, y_test)
    assert acc_before < 0.6  # phase 1 learned the cue

    x2, y2 = torch.cat([x_train, x_feedback]), torch.cat([y_train, y_feedback])
    target = torch.from_numpy(ga.target_map(mask.numpy(), (8, 8)))
    targets = target.expand(len(x2), 8, 8).clone()
    results = {}
    for name, weight in (("plain", 0.0), ("attention", 1.0)):
        model.load_state_dict(phase1)
        att_w = torch.cat([torch.zeros(len(x_train)), torch.full((len(x_feedback),), weight)])

        def select(m, weight=weight):
            iou, acc = iou_and_accuracy(m, x_select, y_select)
            return iou if weight else acc

        tuned, history = ga.train_phase2(
            model,
            model[5],
            loader(x2, y2, shuffle=True, seed=1),
            targets,
            torch.ones(len(x2)),
            att_w,
            select,
            epochs=6,
            lr=1e-2,
            device=cpu,
        )
        assert sum(h.selected for h in history) == 1
        assert (max(h.attention_loss for h in history) > 0) == bool(weight)
        results[name] = iou_and_accuracy(tuned, x_test, y_test)
    iou_plain, acc_plain = results["plain"]
    iou_att, acc_att = results["attention"]
    assert iou_att > iou_before + 0.05
    assert iou_att > iou_plain + 0.05
    assert acc_att > acc_plain + 0.2
