"""Multi-view enhancement: cutout geometry (L-WISE vs DiffAugment), views drawn once and
replayed, chunked = unchunked gradients, and the `enhance.views` / `enhance.steps` settings."""

import functools

import pytest
import torch
from torch import nn

from lwise.core.config import ConfigError
from lwise.guide.attacks import pgd
from lwise.guide.augment import MultiView, ViewsConfig, cutout
from lwise.stimuli.enhance import EnhanceConfig
from lwise.stimuli.settings import check_steps, steps_for

# --- cutout geometry ----------------------------------------------------------------------------


@functools.cache
def _squares(mode: str, n: int = 500, size: int = 224) -> torch.Tensor:
    """The zeroed pixels of n cutouts of a white size×size image: bool [n, size, size]."""
    x = torch.ones(n, 1, size, size)
    return cutout(x, torch.Generator().manual_seed(0), mode=mode)[:, 0] == 0


def test_reference_cutout_is_a_112_square_always_inside_a_224_image():
    zero = _squares("inside")
    # Exactly 25 % of the image every time: the whole 112×112 square, never cut by the border.
    assert (zero.sum(dim=(1, 2)) == 112 * 112).all()
    rows, cols = zero.any(dim=2), zero.any(dim=1)
    top = rows.float().argmax(dim=1)
    left = cols.float().argmax(dim=1)
    assert (rows.sum(dim=1) == 112).all() and (cols.sum(dim=1) == 112).all()
    # The corner ranges over every position that fits: 0..112 on each axis.
    assert top.min() == 0 and top.max() == 112 and left.min() == 0 and left.max() == 112


def test_clipped_cutout_covers_about_19_percent_and_the_reference_25():
    inside = _squares("inside").float().mean().item()
    clipped = _squares("clipped").float().mean()
    assert inside == 0.25
    # Centre uniform over 0..223, square cut by the border: (98/224)^2 = 0.191 on average.
    assert clipped.item() == pytest.approx((98 / 224) ** 2, abs=0.005)
    per_image = _squares("clipped").sum(dim=(1, 2))
    assert (per_image < 112 * 112).any() and (per_image <= 112 * 112).all()


def test_views_default_to_the_reference_cutout_and_keep_the_clipped_one_as_an_option():
    assert ViewsConfig.from_config({"num_views": 2}).cutout == "inside"
    views = MultiView.from_config({"num_views": 3, "types": ["cutout"], "cutout": "clipped"})
    assert views.cutout == "clipped" and views.settings["seed"] == 0
    with pytest.raises(ValueError, match="unknown cutout"):
        MultiView(2, cutout="border")


# --- drawing and replaying views ----------------------------------------------------------------


def test_a_seed_gives_the_same_views_and_rows_can_be_rebuilt_from_the_draws():
    x = torch.rand(5, 3, 32, 32)
    a = MultiView.from_config({"num_views": 3, "seed": 7})(x)
    b = MultiView.from_config({"num_views": 3, "seed": 7})(x)
    c = MultiView.from_config({"num_views": 3, "seed": 8})(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Drawing first and applying any rows gives the same views as applying view by view.
    views = MultiView.from_config({"num_views": 3, "seed": 7})
    drawn = views.draw(x)
    assert torch.equal(MultiView.apply_rows(x, drawn, 0, 15), a)
    assert torch.equal(MultiView.apply_rows(x, drawn, 3, 12), a[3:12])


# --- chunked views through the model ------------------------------------------------------------


class _Recording(nn.Module):
    """A small conv net that records how many images each forward pass gets."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(128, 10),
        )  # fmt: skip
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.body(x)


def _logits_and_grad(net, x, chunk, seed=3):
    views = MultiView.from_config({"num_views": 4, "seed": seed})
    leaf = x.clone().requires_grad_(True)
    logits = views.through(net, chunk)(leaf)
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.arange(len(logits)) % 10)
    (grad,) = torch.autograd.grad(loss, leaf)
    return logits.detach(), grad


@pytest.mark.parametrize("chunk", [1, 5])
def test_chunked_views_give_the_unchunked_logits_and_gradient(chunk):
    net = _Recording().eval()
    x = torch.rand(6, 3, 24, 24, dtype=torch.float64)
    net.double()
    full_logits, full_grad = _logits_and_grad(net, x, chunk=1000)
    assert net.sizes == [24]  # 4 views x 6 images at once
    net.sizes.clear()
    logits, grad = _logits_and_grad(net, x, chunk=chunk)
    # Never more than `chunk` views at a time: forward, then the backward pass's recomputation.
    assert max(net.sizes) <= chunk and sum(net.sizes) == 2 * 24
    torch.testing.assert_close(logits, full_logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, full_grad, rtol=1e-10, atol=1e-12)
    assert grad.abs().sum() > 0


def test_chunked_views_under_autocast_match_and_pgd_runs_through_them():
    net = _Recording().eval()
    x = torch.rand(6, 3, 24, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = _logits_and_grad(net, x, chunk=1000)
        chunked = _logits_and_grad(net, x, chunk=5)
    assert full[0].dtype == chunked[0].dtype == torch.bfloat16
    torch.testing.assert_close(chunked[0], full[0], rtol=0, atol=0)
    # The backward pass recomputes under the forward pass's autocast, so bf16 gradients agree.
    torch.testing.assert_close(chunked[1], full[1], rtol=2e-2, atol=1e-4)
    y = torch.arange(6) % 10
    kwargs = {"eps": 1.0, "step_size": 0.5, "steps": 3, "objective": "logit", "use_best": False}
    outs = []
    for chunk, mode in ((1000, "reference"), (5, "reference"), (5, "fast")):
        views = MultiView.from_config({"num_views": 4, "seed": 1})
        outs.append(pgd(views.through(net, chunk), x, y, mode=mode, **kwargs))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5)
    assert (outs[2] - x).flatten(1).norm(dim=1).max() <= 1.0 + 1e-4


def test_a_model_in_training_mode_is_refused_through_the_views_too():
    views = MultiView.from_config({"num_views": 2})
    with pytest.raises(ValueError, match="eval mode"):
        pgd(views.through(_Recording().train(), 4), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]),
            eps=1, step_size=0.5, steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="view_chunk must be >= 1"):
        views.through(_Recording(), 0)


# --- settings: views and steps ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("views", "message"),
    [
        ({}, r"enhance\.views .*'num_views' is a required property"),
        ({"num_augs": 4}, r"enhance\.views\.num_augs 4: .*enhance\.views\.num_views here"),
        (
            {"num_views": 4, "aug_types": ["color"]},
            r"enhance\.views\.aug_types .*enhance\.views\.types here",
        ),
        ({"num_views": 0}, r"enhance\.views\.num_views 0"),
        ({"num_views": 2, "types": ["blur"]}, r"enhance\.views\.types\.0 'blur'"),
        ({"num_views": 2, "types": []}, r"enhance\.views\.types \[\]"),
        ({"num_views": 2, "seed": -1}, r"enhance\.views\.seed -1"),
        ({"num_views": 2, "cutout": "border"}, r"enhance\.views\.cutout 'border'"),
    ],
)
def test_bad_views_are_refused_naming_the_key(views, message):
    with pytest.raises(ConfigError, match=message):
        EnhanceConfig.from_config({"views": views})


def test_views_null_is_off_and_a_mapping_gets_the_schema_defaults():
    assert EnhanceConfig.from_config({}).views is None
    assert MultiView.from_config(None) is None
    cfg = ViewsConfig.from_config({"num_views": 10})
    assert (cfg.types, cfg.seed, cfg.cutout) == (
        ["color", "translation", "resize", "cutout"], 0, "inside",
    )  # fmt: skip
    assert EnhanceConfig.from_config({}).view_chunk >= 1


def test_steps_null_integer_or_per_epsilon():
    # L-WISE's scripts: max(1, round(2 eps)); its README's multi-view run: eps 20, 80 steps.
    assert [steps_for(None, e) for e in (0.25, 0.5, 2, 20)] == [1, 1, 4, 40]
    assert steps_for(7, 20) == 7
    assert steps_for({20: 80, "0.5": 3}, 20.0) == 80 and steps_for({20: 80, "0.5": 3}, 0.5) == 3
    assert steps_for({20: 80}, 4) == 8  # an epsilon left out keeps the rule
    assert EnhanceConfig.from_config({"steps": {20: 80}}).steps == {20: 80}
    for bad, message in [
        ({"steps": 0}, r"enhance\.steps 0"),
        ({"steps": {20: 0}}, r"enhance\.steps\.20 0"),
        ({"steps": {"twenty": 80}}, r"enhance\.steps .*twenty"),
        ({"steps": 2.5}, r"enhance\.steps 2\.5"),
    ]:
        with pytest.raises(ConfigError, match=message):
            EnhanceConfig.from_config(bad)


def test_a_steps_mapping_may_name_only_configured_epsilons():
    check_steps({20: 80, 8: 16}, [8, 20.0])
    check_steps(None, [1]) and check_steps(5, [1])  # noqa: B015 (returns None)
    with pytest.raises(ValueError, match=r"epsilon\(s\) \['2'\] that enhance\.epsilons \[8, 20\]"):
        check_steps({2.0: 80}, [8, 20])
    with pytest.raises(ValueError, match="epsilon 20 is given twice"):
        check_steps({20: 80, "20": 40}, [20])
    with pytest.raises(ValueError, match="steps must be an integer"):
        steps_for({20: 1.5}, 20)


# --- the workflow: what reruns ------------------------------------------------------------------


@pytest.mark.slow
def test_views_and_one_epsilons_steps_rerun_only_that_enhancement(finished):
    import copy

    from conftest import run_workflow

    work, config = finished
    target = "results/digits/stimuli/logit_eps1"

    def planned(changed):
        out = run_workflow(work, changed, "--dry-run", target)
        text = out.stdout + out.stderr
        return "Nothing to be done" not in text and "enhance" in text.split("Job stats:")[-1]

    assert not planned(config)
    with_views = copy.deepcopy(config)
    with_views["enhance"]["views"] = {"num_views": 2}
    assert planned(with_views)  # views on: the set is made again
    other_eps = copy.deepcopy(config)
    other_eps["enhance"]["steps"] = {2: 7}
    assert not planned(other_eps)  # another epsilon's steps leave eps 1 alone
    same = copy.deepcopy(config)
    same["enhance"]["steps"] = {1: 2}  # what null gives at eps 1
    assert not planned(same)
    this_eps = copy.deepcopy(config)
    this_eps["enhance"]["steps"] = {1: 5}
    assert planned(this_eps)
