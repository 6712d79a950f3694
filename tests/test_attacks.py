"""PGD core and multi-view augmentations: hand-computed cases, then a small trained model."""

import logging
import math
import re

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from lwise.guide import attacks
from lwise.guide.attacks import (
    l2_project,
    l2_random_start,
    l2_step,
    linf_project,
    linf_random_start,
    linf_step,
    objective_loss,
    pgd,
    steps_for_eps,
)
from lwise.guide.augment import MultiView, cutout, resize, translation
from lwise.guide.fast import prepare_fast
from lwise.guide.models import build_model

# --- steps and projections ---------------------------------------------------------------------


def test_l2_project_rescales_only_samples_outside_the_ball():
    x0 = torch.zeros(2, 2)
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    out = l2_project(x0 + x, x0, eps=1.0)
    # (3, 4) has norm 5: scaled by 1/5 to (0.6, 0.8); (0.3, 0.4) is inside and kept.
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.3, 0.4]]), atol=1e-6)


def test_l2_project_clamps_to_unit_range():
    x0 = torch.full((1, 3), 0.9)
    out = l2_project(torch.tensor([[1.5, 0.9, -0.4]]), x0, eps=10.0)
    assert torch.equal(out, torch.tensor([[1.0, 0.9, 0.0]]))


def test_l2_step_moves_step_size_along_the_normalised_gradient():
    x = torch.zeros(2, 1, 1, 2)
    grad = torch.tensor([3.0, 4.0]).view(1, 1, 1, 2) * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1)
    out = l2_step(x, grad, step_size=0.5)
    # Both samples move by 0.5 along (0.6, 0.8), whatever their gradient's scale.
    assert torch.allclose(out, torch.tensor([0.3, 0.4]).expand(2, 1, 1, 2))


def test_linf_step_and_projection():
    x = torch.tensor([[0.5, 0.5, 0.5]])
    stepped = linf_step(x, torch.tensor([[2.0, -0.1, 0.0]]), step_size=0.25)
    assert torch.equal(stepped, torch.tensor([[0.75, 0.25, 0.5]]))
    projected = linf_project(stepped, x, eps=0.1)
    assert torch.allclose(projected, torch.tensor([[0.6, 0.4, 0.5]]))
    assert torch.equal(
        linf_project(torch.tensor([[1.3, -0.2]]), torch.tensor([[0.95, 0.05]]), 1),
        torch.tensor([[1.0, 0.0]]),
    )


def test_random_starts_lie_in_the_ball_and_follow_the_generator():
    x = torch.full((4, 3, 5, 5), 0.5)
    l2 = l2_random_start(x, 0.5, torch.Generator().manual_seed(0))
    norms = torch.linalg.vector_norm((l2 - x).flatten(1), dim=1)
    assert torch.allclose(norms, torch.full((4,), 0.5), atol=1e-5)  # on the sphere
    assert torch.equal(l2, l2_random_start(x, 0.5, torch.Generator().manual_seed(0)))
    linf = linf_random_start(x, 0.1, torch.Generator().manual_seed(0))
    assert (linf - x).abs().max() <= 0.1 + 1e-7
    assert (linf - x).std() > 0.03  # spread over the box, not collapsed


@pytest.mark.parametrize(
    ("eps", "steps"), [(0.25, 1), (0.5, 1), (1, 2), (2, 4), (8, 16), (10, 20), (20, 40)]
)
def test_steps_for_eps_matches_the_lwise_scripts(eps, steps):
    assert steps_for_eps(eps) == steps


# --- objectives --------------------------------------------------------------------------------


def test_objective_losses_by_hand():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 1.0, 1.0]])
    y = torch.tensor([0, 1])
    assert torch.equal(objective_loss(logits, y, "logit"), torch.tensor([-1.0, -5.0]))
    ce = torch.tensor([-math.log(math.exp(1) / sum(math.exp(v) for v in (1, 2, 3, 4)))])
    assert torch.allclose(objective_loss(logits, y, "cross_entropy")[:1], ce)
    # Default competitors: every other class. Sample 0: -(1 - 3) = 2; sample 1: -(5 - 2/3).
    diverge = objective_loss(logits, y, "logit_diverge")
    assert torch.allclose(diverge, torch.tensor([2.0, -(5 - 2 / 3)]))
    # A [C] mask that includes each sample's own class: y is left out automatically.
    mask = torch.tensor([True, True, True, False])
    assert torch.allclose(
        objective_loss(logits, y, "logit_diverge", mask), torch.tensor([-(1 - 2.5), -(5 - 0.5)])
    )
    per_sample = torch.tensor([[False, True, False, False], [True, False, False, True]])
    assert torch.allclose(
        objective_loss(logits, y, "logit_diverge", per_sample), torch.tensor([1.0, -(5 - 0.5)])
    )


def test_objective_errors():
    logits, y = torch.zeros(1, 3), torch.tensor([0])
    with pytest.raises(ValueError, match="logit, logit_diverge, cross_entropy"):
        objective_loss(logits, y, "margin")
    with pytest.raises(ValueError, match="no competing class"):
        objective_loss(logits, y, "logit_diverge", torch.tensor([True, False, False]))


# --- PGD on hand-made models -------------------------------------------------------------------


class MeanTarget(nn.Module):
    """Ground-truth logit −(mean(x) − target)²; class 1's logit is 0."""

    def __init__(self, target: float):
        super().__init__()
        self.target = target

    def forward(self, x):
        gt = -((x.mean(dim=(1, 2, 3)) - self.target) ** 2)
        return torch.stack([gt, torch.zeros_like(gt)], dim=1)


def _mean_target_pgd(x0, step_mean, steps, use_best):
    # An L2 step of α along the all-ones direction raises every value by α/√n.
    alpha = step_mean * math.sqrt(x0[0].numel())
    return pgd(
        MeanTarget(0.3).eval(),
        x0,
        torch.tensor([0]),
        eps=100.0,
        step_size=alpha,
        steps=steps,
        objective="logit",
        use_best=use_best,
    )


def test_best_iterate_is_kept_when_later_steps_overshoot():
    x0 = torch.zeros(1, 3, 2, 2)
    # Means: x0 0, x1 0.25 (best, 0.05 from 0.3), x2 0.5 (0.2 from 0.3).
    out = _mean_target_pgd(x0, 0.25, steps=2, use_best=True)
    assert torch.allclose(out, torch.full_like(x0, 0.25))
    last = _mean_target_pgd(x0, 0.25, steps=2, use_best=False)
    assert torch.allclose(last, torch.full_like(x0, 0.5))
    # The iterate after the last step counts too (robustness evaluates the loss once more).
    assert torch.allclose(
        _mean_target_pgd(x0, 0.25, steps=1, use_best=True), torch.full_like(x0, 0.25)
    )


def test_best_iterate_is_x0_when_nothing_improves():
    x0 = torch.full((1, 3, 2, 2), 0.28)
    # Every step overshoots to 0.48 or comes back to 0.28 (a tie, which keeps x0).
    assert torch.equal(_mean_target_pgd(x0, 0.2, steps=3, use_best=True), x0)
    assert not torch.allclose(_mean_target_pgd(x0, 0.2, steps=3, use_best=False), x0)


@pytest.fixture
def linear_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5)).eval()


@pytest.mark.parametrize("constraint", ["2", "inf"])
def test_enhance_lowers_and_attack_raises_the_loss(linear_model, constraint):
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 5
    eps = 1.0 if constraint == "2" else 0.05
    loss0 = objective_loss(linear_model(x), y, "cross_entropy")
    for direction, compare in (("enhance", torch.lt), ("attack", torch.gt)):
        adv = pgd(
            linear_model,
            x,
            y,
            eps=eps,
            step_size=eps / 4,
            steps=8,
            constraint=constraint,
            direction=direction,
        )
        assert compare(objective_loss(linear_model(adv), y, "cross_entropy"), loss0).all()
        delta = (adv - x).flatten(1)
        size = delta.norm(dim=1) if constraint == "2" else delta.abs().amax(dim=1)
        assert (size <= eps + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1


def test_pgd_leaves_parameters_and_input_alone(linear_model):
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    before = x.clone()
    adv = pgd(linear_model.double(), x, torch.tensor([0, 1]), eps=1, step_size=0.5, steps=3)
    assert adv.dtype == torch.float64 and not adv.requires_grad
    assert torch.equal(x, before) and not torch.equal(adv, x)
    assert all(p.grad is None for p in linear_model.parameters())


class _InfGradient(torch.autograd.Function):
    """Identity whose gradient is infinite for the samples whose mean exceeds 0.5."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        bad = (x.flatten(1).mean(1) > 0.5).view(-1, *[1] * (x.dim() - 1))
        return torch.where(bad, torch.inf, grad)


@pytest.mark.parametrize("compile_update", [False, True])
def test_fast_mode_skips_non_finite_gradients_per_sample(linear_model, caplog, compile_update):
    class Model(nn.Module):
        def forward(self, x):
            return linear_model(_InfGradient.apply(x))

    x = torch.cat([torch.full((1, 3, 4, 4), 0.9), torch.full((2, 3, 4, 4), 0.2)])
    kwargs = {"eps": 1.0, "step_size": 0.25, "steps": 3, "objective": "logit", "mode": "fast",
              "compile_update": compile_update}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="lwise.guide.attacks"):
        out = pgd(Model().eval(), x, torch.tensor([0, 1, 2]), **kwargs)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1:], x[1:])
    assert "1 of 3 images had non-finite float16 gradients in 3 steps" in caplog.text
    with pytest.raises(ValueError, match="fast_dtype"):
        pgd(Model().eval(), x, torch.tensor([0, 1, 2]), fast_dtype="float8", **kwargs)


@pytest.mark.parametrize(("constraint", "eps"), [("2", 0.5), ("inf", 0.05)])
def test_compiled_update_follows_the_eager_update(linear_model, monkeypatch, constraint, eps):
    """`compile_update` runs every fast step's update compiled, to float32 rounding of the
    eager iterates, best-iterate choice included; the reference mode ignores it."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 4, 4, generator=gen), torch.tensor([0, 1, 2, 0])
    kwargs = {"eps": eps, "step_size": eps / 2, "steps": 3, "constraint": constraint,
              "objective": "cross_entropy", "random_start": True}  # fmt: skip
    real, calls = attacks._compiled_update(), []

    def counted():
        return lambda *args, **kw: (calls.append(1), real(*args, **kw))[1]

    monkeypatch.setattr(attacks, "_compiled_update", counted)
    for mode in ("fast", "reference"):
        eager = pgd(linear_model, x, y, mode=mode, generator=torch.Generator().manual_seed(1),
                    **kwargs)  # fmt: skip
        fused = pgd(linear_model, x, y, mode=mode, compile_update=True,
                    generator=torch.Generator().manual_seed(1), **kwargs)  # fmt: skip
        assert not torch.allclose(eager, x, atol=1e-3)
        if mode == "fast":
            assert len(calls) == 3 and torch.allclose(fused, eager, atol=1e-5)
        else:
            assert len(calls) == 3 and torch.equal(fused, eager)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_pgd_works_inside_gradient_free_contexts(linear_model, context):
    # Values near 0.5, so that no step reaches the [0, 1] clamp.
    x = 0.4 + 0.2 * torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    kwargs = {"eps": 1.0, "step_size": 0.5, "steps": 2, "objective": "logit"}
    outside = pgd(linear_model, x, y, **kwargs)
    with context():
        inside = pgd(linear_model, x.clone(), y, **kwargs)  # an inference tensor in there
    assert torch.equal(inside, outside)
    # The logit objective's gradient is the class's weight row w_y: two L2 steps of 0.5 along
    # it raise the logit by exactly eps·‖w_y‖.
    w = linear_model[1].weight.detach()
    with torch.no_grad():
        gain = (linear_model(inside) - linear_model(x)).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(gain, 1.0 * w[y].norm(dim=1), rtol=1e-4)


def test_pgd_rejects_a_model_in_training_mode(linear_model):
    with pytest.raises(ValueError, match="eval mode"):
        pgd(
            linear_model.train(),
            torch.rand(1, 3, 4, 4),
            torch.tensor([0]),
            eps=1,
            step_size=0.5,
            steps=1,
        )


# --- multi-view augmentations ------------------------------------------------------------------


def test_multiview_shapes_order_and_gradients():
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    views = MultiView(num_views=4, generator=torch.Generator().manual_seed(0))(x)
    assert views.shape == (12, 3, 16, 16)
    # View-major: rows k·B + i come from image i. A per-image weight shows up in its views.
    weights = torch.tensor([1.0, 10.0, 100.0])
    (grad,) = torch.autograd.grad((views.reshape(4, 3, -1).sum(dim=(0, 2)) * weights).sum(), x)
    assert (grad[0].abs().max() < grad[1].abs().max() < grad[2].abs().max()).item()
    assert grad.abs().sum() > 0


def test_single_augmentations():
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(8, 3, 16, 16)
    shifted = translation(x, gen)
    assert shifted.shape == x.shape
    # Whole-pixel shifts of at most 2 px (0.125·16): zeros only in border bands of width ≤ 2.
    assert torch.equal(shifted[:, :, 2:-2, 2:-2], x[:, :, 2:-2, 2:-2])
    assert (shifted.sum(dim=(1, 2, 3)) >= 3 * 14 * 14).all()
    cut = cutout(x, gen)
    zeros = (cut[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros <= 64).all() and (zeros > 0).all()  # one 8×8 square, maybe cut by the border
    assert resize(x, gen).shape == x.shape
    with pytest.raises(ValueError, match="unknown augmentation"):
        MultiView(types=("blur",))


# --- a small model trained on sklearn digits ---------------------------------------------------


@pytest.fixture(scope="module")
def digits_model():
    """small_cnn trained for a few seconds on 8×8 digits upsampled to 32×32 RGB, and 200
    held-out images with Gaussian noise (so that some are misclassified)."""
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    images = F.interpolate(images, size=32, mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1).clamp(0, 1)
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels))
    images, labels = images[order], labels[order]
    model = build_model("small_cnn", 10, [0.5] * 3, [0.5] * 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(8):
        for i in range(0, 1400, 64):
            loss = F.cross_entropy(model(images[i : i + 64]), labels[i : i + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    noise = 0.2 * torch.randn(images[1400:1600].shape, generator=torch.Generator().manual_seed(1))
    held_out = (images[1400:1600] + noise).clamp(0, 1)
    return model, held_out, labels[1400:1600]


def _gt_logit_and_error(model, x, y):
    with torch.no_grad():
        logits = model(x)
    return logits.gather(1, y[:, None]).mean().item(), (logits.argmax(1) != y).float().mean().item()


def test_enhancement_helps_and_attack_hurts_a_trained_model(digits_model):
    model, x, y = digits_model
    logit0, error0 = _gt_logit_and_error(model, x, y)
    assert error0 > 0.1  # the noisy held-out set leaves room to improve
    kwargs = {"eps": 2.0, "step_size": 0.5, "steps": steps_for_eps(2.0), "objective": "logit"}
    logit_e, error_e = _gt_logit_and_error(model, pgd(model, x, y, **kwargs), y)
    logit_a, error_a = _gt_logit_and_error(model, pgd(model, x, y, direction="attack", **kwargs), y)
    assert logit_e > logit0 + 2 and error_e < error0 / 4
    assert logit_a < logit0 - 2 and error_a > 2 * error0


@pytest.mark.parametrize("objective", ["logit", "logit_diverge", "cross_entropy"])
def test_fast_mode_matches_reference_gain(digits_model, objective):
    model, x, y = digits_model
    fast_model = prepare_fast(model)
    logit0, _ = _gt_logit_and_error(model, x, y)
    kwargs = {"eps": 1.0, "step_size": 0.5, "steps": 2, "objective": objective}
    gain_ref = _gt_logit_and_error(model, pgd(model, x, y, **kwargs), y)[0] - logit0
    fast = pgd(fast_model, x, y, mode="fast", **kwargs)
    gain_fast = _gt_logit_and_error(model, fast, y)[0] - logit0
    assert gain_ref > 0.5
    assert abs(gain_fast - gain_ref) <= 0.1 * gain_ref


def test_restarts_keep_the_best_run_per_sample(digits_model):
    model, x, y = digits_model
    x, y = x[:32], y[:32]
    # Steps far smaller than the ball: where each run ends depends mostly on its start, so
    # random starts beat the run from x on some samples whatever the model's training.
    kwargs = {
        "eps": 0.05,
        "step_size": 1e-4,
        "steps": 3,
        "constraint": "inf",
        "objective": "cross_entropy",
        "direction": "attack",
    }
    # Run 0 starts at x; runs 1 and 2 draw their starts from the generator in turn.
    gen = torch.Generator().manual_seed(0)
    runs = [pgd(model, x, y, **kwargs)] + [
        pgd(model, x, y, random_start=True, generator=gen, **kwargs) for _ in range(2)
    ]
    combined = pgd(model, x, y, restarts=2, generator=torch.Generator().manual_seed(0), **kwargs)
    with torch.no_grad():
        losses = torch.stack([objective_loss(model(r), y, "cross_entropy") for r in runs])
        kept = objective_loss(model(combined), y, "cross_entropy")
    # Per sample, the kept run is the best one (up to GPU nondeterminism across runs).
    assert torch.all(kept >= losses.max(dim=0).values - 1e-4)
    assert (losses.argmax(dim=0) > 0).any()  # some restart did win somewhere


def test_multiview_enhancement_returns_the_last_iterate_and_helps(digits_model):
    model, x, y = digits_model
    x, y = x[:64], y[:64]
    kwargs = {"eps": 2.0, "step_size": 0.5, "steps": 4, "objective": "logit"}
    with_best = pgd(
        model,
        x,
        y,
        views=MultiView(2, generator=torch.Generator().manual_seed(0)),
        use_best=True,
        **kwargs,
    )
    without = pgd(
        model,
        x,
        y,
        views=MultiView(2, generator=torch.Generator().manual_seed(0)),
        use_best=False,
        **kwargs,
    )
    assert torch.equal(with_best, without)
    # Averaging over shifted views makes the gain far smaller than single-view PGD's on this
    # small non-robust model, but it is still a gain.
    logit0, error0 = _gt_logit_and_error(model, x, y)
    logit1, error1 = _gt_logit_and_error(model, with_best, y)
    assert logit1 > logit0 + 0.4 and error1 < error0


# --- issue 13: messages and named competitors ---------------------------------------------------


def test_pgd_errors_name_the_argument_and_its_value(linear_model):
    x, y = torch.rand(1, 3, 4, 4), torch.tensor([0])
    with pytest.raises(ValueError, match=r"^pgd: eps -3 \(must be >= 0\)$"):
        pgd(linear_model, x, y, eps=-3, step_size=0.5, steps=1)
    with pytest.raises(ValueError, match=r"step_size 0 \(must be > 0\), steps -1 \(must be >= 0\)"):
        pgd(linear_model, x, y, eps=1, step_size=0, steps=-1)
    with pytest.raises(ValueError, match=r"restarts -2 \(must be >= 0\)"):
        pgd(linear_model, x, y, eps=1, step_size=0.5, steps=1, restarts=-2)
    with pytest.raises(ValueError, match=r"eps nan"):
        pgd(linear_model, x, y, eps=float("nan"), step_size=0.5, steps=1)


def test_logit_diverge_from_named_classes_moves_away_from_them(digits_model):
    """L-WISE `enhance.py --diverge_from`: only the named classes compete. Their logits fall
    relative to the true class's, by more than when every class competes."""
    model, x, y = digits_model
    keep = (y != 3) & (y != 5)
    x, y = x[keep][:64], y[keep][:64]
    named = torch.zeros(10, dtype=torch.bool)
    named[[3, 5]] = True
    kwargs = {"eps": 1.0, "step_size": 0.5, "steps": 2, "objective": "logit_diverge"}

    def margin(images):  # true-class logit minus the mean of the named classes' logits
        with torch.no_grad():
            logits = model(images)
        return logits.gather(1, y[:, None]).squeeze(1) - logits[:, [3, 5]].mean(1)

    before = margin(x)
    targeted = margin(pgd(model, x, y, competitors=named, **kwargs)) - before
    untargeted = margin(pgd(model, x, y, **kwargs)) - before
    assert (targeted > 0).float().mean() > 0.95 and targeted.mean() > 1.0
    assert targeted.mean() > untargeted.mean() + 0.3


# --- issue 13 item 16: survivors of the mutmut 3.8.1 run over lwise/guide/attacks.py -------------


def _mid(*shape, seed=0):
    """Values in [0.4, 0.6]: small steps never reach the [0, 1] clamp."""
    return 0.4 + 0.2 * torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_l2_step_adds_1e_10_to_the_gradient_norm_as_robustness_does():
    x = torch.zeros(1, 1, dtype=torch.float64)
    grad = torch.full((1, 1), 1e-10, dtype=torch.float64)
    assert l2_step(x, grad, step_size=0.5).item() == 0.25  # 0.5 · 1e-10 / (1e-10 + 1e-10)


def test_l2_project_is_torch_renorm_then_clamp():
    """robustness `L2Step.project` uses torch.renorm: only norms above eps shrink, by
    eps/(norm + 1e-7); a perturbation exactly on the sphere stays as it is."""
    x0 = torch.full((4, 4), 0.5, dtype=torch.float64)
    delta = torch.tensor(
        [[0.25, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.125, 0, 0, 0], [3.0, 4.0, 0, 0]],
        dtype=torch.float64,
    )
    out = l2_project(x0 + delta, x0, eps=0.25)
    assert torch.equal(out, torch.clamp(x0 + torch.renorm(delta, p=2, dim=0, maxnorm=0.25), 0, 1))
    assert torch.equal(out[0], x0[0] + delta[0])


@pytest.mark.parametrize("start", [l2_random_start, linf_random_start])
def test_random_starts_stay_in_the_unit_range_and_follow_the_generator(start):
    x = torch.zeros(4, 3, 5, 5)
    x[2:] = 1.0
    a = start(x, 0.5, torch.Generator().manual_seed(0))
    assert a.min() >= 0 and a.max() <= 1
    assert (a[:2] > 0).any() and (a[2:] < 1).any()  # moved inwards from both bounds
    assert torch.equal(a, start(x, 0.5, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, start(x, 0.5, torch.Generator().manual_seed(1)))


def test_logit_diverge_with_two_classes_and_its_errors():
    logits, y = torch.tensor([[1.0, 3.0], [2.0, -1.0]]), torch.tensor([0, 0])
    assert torch.equal(objective_loss(logits, y, "logit_diverge"), torch.tensor([2.0, -3.0]))
    with pytest.raises(ValueError, match="^logit_diverge needs at least two classes$"):
        objective_loss(torch.zeros(1, 1), torch.tensor([0]), "logit_diverge")
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="^competitors has 3 rows for 2 labels$"):
        objective_loss(torch.zeros(2, 4), y, "logit_diverge", torch.ones(3, 4, dtype=torch.bool))
    one_without = torch.tensor([[False, True, True, False], [False, True, False, False]])
    with pytest.raises(ValueError, match="^logit_diverge: some sample has no competing class"):
        objective_loss(torch.zeros(2, 4), y, "logit_diverge", one_without)


class _Precision(nn.Module):
    """Records, for every call, the autocast dtype the model runs under (None: full precision)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        on = torch.is_autocast_enabled(x.device.type)
        self.seen.append(torch.get_autocast_dtype(x.device.type) if on else None)
        return self.inner(x)


@pytest.mark.parametrize(
    "mode, fast_dtype, expected",
    [("reference", "float16", None), ("fast", "float16", torch.float16),
     ("fast", "bfloat16", torch.bfloat16)],
)  # fmt: skip
def test_the_model_runs_in_the_precision_of_the_mode(linear_model, caplog, mode, fast_dtype,
                                                     expected):  # fmt: skip
    model = _Precision(linear_model).eval()
    x, y = _mid(2, 3, 4, 4), torch.tensor([0, 1])
    with caplog.at_level(logging.WARNING, logger="lwise.guide.attacks"):
        out = pgd(model, x, y, eps=1.0, step_size=0.5, steps=2, mode=mode, fast_dtype=fast_dtype)
    assert model.seen == [expected] * 3  # two steps, then the loss of the last iterate
    assert out.shape == x.shape and out.dtype == x.dtype and caplog.text == ""


def test_fast_mode_steps_where_a_batch_mean_gradient_would_underflow_float16():
    """Fast mode differentiates the sum of the losses: with the mean, 1/64 of a gradient of
    2^-20 is 2^-26, which float16 rounds to zero, and the images would not move."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 5, bias=False)).eval()
    signs = torch.sign(torch.randn(5, 48, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        model[1].weight.copy_(signs * 2.0**-20)
    x, y = _mid(64, 3, 4, 4), torch.arange(64) % 5
    kwargs = {"eps": 1.0, "step_size": 0.5, "steps": 1, "objective": "logit"}
    reference = pgd(model, x, y, **kwargs)
    fast = pgd(model, x, y, mode="fast", **kwargs)
    # Reference mode is robustness' step: the gradient of the batch mean, whose norm
    # (sqrt(48)·2^-20/64) is small enough here for the 1e-10 to shorten the step.
    grad = model[1].weight.detach()[y] / 64
    norm = grad.norm(dim=1, keepdim=True)
    assert torch.allclose(reference, x + (0.5 * grad / (norm + 1e-10)).view_as(x), atol=1e-6)
    assert (reference - x).abs().max() > 0.05
    # The same step (up to robustness' 1e-10 added to the norm of a tiny gradient).
    assert torch.allclose(fast, reference, atol=1e-3)


def test_a_non_finite_gradient_is_a_zero_step_and_the_warning_counts_it(linear_model, caplog):
    class Model(nn.Module):
        def forward(self, x):
            return linear_model(_InfGradient.apply(x))

    x = torch.cat([torch.full((1, 3, 4, 4), 0.9), _mid(2, 3, 4, 4) - 0.2])  # means 0.9, < 0.5
    kwargs = {"eps": 1.0, "step_size": 0.25, "steps": 1, "objective": "logit", "mode": "fast"}
    with caplog.at_level(logging.WARNING, logger="lwise.guide.attacks"):
        out = pgd(Model().eval(), x, torch.tensor([0, 1, 2]), use_best=False, **kwargs)
    assert torch.equal(out[0], x[0]) and not torch.equal(out[1:], x[1:])
    assert [r.getMessage() for r in caplog.records] == [
        "1 of 3 images had non-finite float16 gradients in 1 steps in all (skipped); "
        "fast_dtype bfloat16 has the range of float32"
    ]


def test_views_average_the_loss_over_the_views_at_every_step(linear_model):
    x, y = _mid(2, 3, 4, 4), torch.tensor([0, 1])

    def mirrored(t):  # two views per image, view-major
        return torch.cat([t, t.flip(-1)])

    out = pgd(linear_model, x, y, eps=10.0, step_size=0.05, steps=2, objective="logit",
              views=mirrored)  # fmt: skip
    # The logit's gradient, averaged over both views, is w_y + flip(w_y) (up to a factor).
    w = linear_model[1].weight.detach().view(5, 3, 4, 4)[y]
    d = w + w.flip(-1)
    d = d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(out, x + 2 * 0.05 * d, atol=1e-6)


def test_one_logit_diverge_step_moves_away_from_the_named_classes_only(linear_model):
    x, y = _mid(2, 3, 4, 4), torch.tensor([0, 1])
    named = torch.tensor([False, False, True, True, False])
    out = pgd(linear_model, x, y, eps=10.0, step_size=0.1, steps=1, objective="logit_diverge",
              competitors=named, use_best=False)  # fmt: skip
    w = linear_model[1].weight.detach()
    d = w[y] - w[[2, 3]].mean(0)  # the gradient of z_y − mean(z_2, z_3)
    assert torch.allclose(out, x + 0.1 * (d / d.norm(dim=1, keepdim=True)).view_as(x), atol=1e-6)


@pytest.mark.parametrize("constraint, start", [("2", l2_random_start), ("inf", linf_random_start)])
@pytest.mark.parametrize("restarts", [1, 2])
def test_random_start_and_restarts_draw_from_the_generator_in_turn(linear_model, constraint, start,
                                                                   restarts):  # fmt: skip
    x, y = _mid(8, 3, 4, 4), torch.arange(8) % 5
    # No steps: every run returns its start, so the result shows where the runs started.
    kwargs = {"eps": 0.3, "step_size": 0.1, "steps": 0, "constraint": constraint,
              "objective": "logit"}  # fmt: skip
    first = pgd(linear_model, x, y, random_start=True, generator=torch.Generator().manual_seed(0),
                **kwargs)  # fmt: skip
    assert torch.equal(first, start(x, 0.3, torch.Generator().manual_seed(0)))
    unseeded = pgd(linear_model, x, y, random_start=True, **kwargs)  # the global generator
    delta = (unseeded - x).flatten(1)
    if constraint == "2":  # on the sphere
        assert torch.allclose(delta.norm(dim=1), torch.full((8,), 0.3), atol=1e-5)
    else:  # in the box
        assert 0.2 < delta.abs().max() <= 0.3 + 1e-7
    # Run 0 starts at x, each restart at the generator's next draw; per sample the lowest
    # (enhancement) loss wins.
    gen = torch.Generator().manual_seed(1)
    candidates = [x] + [start(x, 0.3, gen) for _ in range(restarts)]
    with torch.no_grad():
        losses = torch.stack([objective_loss(linear_model(c), y, "logit") for c in candidates])
    best = losses.argmin(0)
    assert (best == 0).any() and (best == restarts).any() and (best < restarts).any()
    expected = torch.stack([candidates[b][i] for i, b in enumerate(best.tolist())])
    for use_best in (True, False):
        got = pgd(linear_model, x, y, restarts=restarts, use_best=use_best,
                  generator=torch.Generator().manual_seed(1), **kwargs)  # fmt: skip
        assert torch.equal(got, expected)


def test_zero_radius_or_zero_steps_return_the_images_themselves(linear_model):
    x, y = _mid(2, 3, 4, 4), torch.tensor([0, 1])
    for kwargs in ({"eps": 0.0, "steps": 3}, {"eps": 1.0, "steps": 0}):
        assert torch.equal(pgd(linear_model, x, y, step_size=0.5, **kwargs), x)


def test_the_best_iterate_is_the_default():
    x0 = torch.zeros(1, 3, 2, 2)
    out = pgd(MeanTarget(0.3).eval(), x0, torch.tensor([0]), eps=100.0,
              step_size=0.25 * math.sqrt(12), steps=2, objective="logit")  # fmt: skip
    assert torch.allclose(out, torch.full_like(x0, 0.25))  # x1, not the overshooting x2


def test_pgd_refuses_unknown_choices_naming_the_valid_ones(linear_model):
    x, y = _mid(2, 3, 4, 4), torch.tensor([0, 1])
    kwargs = {"eps": 1, "step_size": 0.5, "steps": 1}
    # A plain function has no training flag: it is taken as ready.
    assert pgd(lambda t: linear_model(t), x, y, **kwargs).shape == x.shape
    cases = [
        ({"constraint": "1"}, "unknown constraint '1'; valid: 2, inf"),
        ({"direction": "up"}, "unknown direction 'up'; valid: enhance, attack"),
        ({"mode": "turbo"}, "unknown mode 'turbo'; valid: reference, fast"),
        ({"fast_dtype": "float8"}, "unknown fast_dtype 'float8'; valid: float16, bfloat16"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            pgd(linear_model, x, y, **kwargs, **extra)
    with pytest.raises(ValueError, match=r"^2 images but 3 labels$"):
        pgd(linear_model, x, torch.tensor([0, 1, 2]), **kwargs)
    with pytest.raises(ValueError, match=r"^put the model in eval mode before pgd \(BatchNorm"):
        pgd(linear_model.train(), x, y, **kwargs)


def test_half_precision_images_are_perturbed_in_float32_and_returned_as_given(linear_model):
    x, y = _mid(2, 3, 4, 4).half(), torch.tensor([0, 1])
    kwargs = {"eps": 1.0, "step_size": 0.5, "steps": 2, "objective": "logit"}
    out = pgd(linear_model, x, y, **kwargs)
    assert out.dtype == torch.float16
    assert torch.equal(out, pgd(linear_model, x.float(), y, **kwargs).half())
