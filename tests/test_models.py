"""Model registry, normalisation, head replacement, BatchNorm folding and checkpoints."""

import argparse
import copy
import logging

import dill
import pytest
import timm
import torch
import torchvision
from torch import fx, nn
from torch.nn import functional as F

from lwise.guide.checkpoints import CheckpointError, load_model, save_checkpoint
from lwise.guide.fast import (
    ConvReLU,
    LiveFolded,
    fold_batchnorm,
    fuse_conv_relu,
    prepare_fast,
    space_to_depth_stem,
)
from lwise.guide.models import (
    ImageClassifier,
    Normalize,
    SmallCNN,
    build_model,
    head_name,
    replace_head,
)
from lwise.guide.pooling import GatherMaxPool2d

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_normalize_clamps_then_standardises():
    norm = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 2.0])
    assert norm.mean.shape == norm.std.shape == (1, 3, 1, 1)
    assert {name for name, _ in norm.named_buffers()} == {"mean", "std"}
    x = torch.tensor([1.5, 0.5, -1.0]).view(1, 3, 1, 1)
    # Clamped to (1, 0.5, 0) first.
    assert torch.allclose(norm(x).flatten(), torch.tensor([1.0, 1.0, 0.0]))


@pytest.mark.parametrize(
    ("arch", "cls"),
    [
        ("resnet18", torchvision.models.ResNet),
        ("tv:resnet18", torchvision.models.ResNet),
        ("timm:resnet18", timm.models.ResNet),
        ("vit_tiny_patch16_224", timm.models.VisionTransformer),
        ("small_cnn", SmallCNN),
    ],
)
def test_build_model_resolves_names(arch, cls):
    model = build_model(arch, 7, MEAN, STD)
    assert isinstance(model.net, cls)
    assert model.arch == arch and model.num_classes == 7
    assert model.net.get_submodule(head_name(model.net)).out_features == 7


def test_build_model_errors():
    with pytest.raises(ValueError, match="checkpoint"):
        build_model("resnet18", 10, MEAN, STD, pretrained=True)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("no_such_net", 10, MEAN, STD)
    with pytest.raises(ValueError, match="prefix"):
        build_model("hub:resnet18", 10, MEAN, STD)


def test_small_cnn_is_small_and_takes_32px_digits():
    model = build_model("small_cnn", 10, [0.5] * 3, [0.5] * 3).eval()
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("arch", "size"),
    [
        ("small_cnn", 32),
        ("resnet18", 32),
        ("densenet121", 32),
        ("convnext_tiny", 32),
        ("timm:vit_tiny_patch16_224", 224),
        ("timm:resnet18", 32),
    ],
)
def test_replace_head(arch, size):
    model = build_model(arch, 1000, MEAN, STD, class_names=[str(i) for i in range(1000)]).eval()
    body_before = {k: v.clone() for k, v in model.state_dict().items() if "normalize" in k}
    replace_head(model, 4)
    assert model.num_classes == 4 and model.class_names is None
    with torch.no_grad():
        assert model(torch.rand(1, 3, size, size)).shape == (1, 4)
    for key, value in body_before.items():  # the normaliser is kept
        assert torch.equal(model.state_dict()[key], value)


def _random_bn_stats(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            module.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=gen))
    return model.eval()


@pytest.mark.parametrize(("arch", "size"), [("resnet18", 64), ("small_cnn", 32)])
def test_fold_batchnorm_keeps_logits(arch, size):
    torch.manual_seed(0)
    model = _random_bn_stats(build_model(arch, 10, MEAN, STD), seed=1)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is intact
    x = torch.rand(4, 3, size, size)
    with torch.no_grad():
        reference, fused = model(x), folded(x)
    assert reference.abs().max() > 0.1  # logits of a meaningful size
    assert torch.allclose(fused, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(7, 2, 3, 37), (7, 2, 3, 40), (4, 4, 0, 35), (3, 2, 1, 33), (5, 3, 2, 31), (2, 2, 0, 16)],
)
def test_space_to_depth_stem_is_the_same_convolution(kernel, stride, padding, size):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, kernel, stride, padding), nn.ReLU(), nn.Conv2d(5, 2, 1))
    model = ImageClassifier(fx.symbolic_trace(net), Normalize(MEAN, STD), arch="t", num_classes=2)
    model = model.double().eval()
    s2d = space_to_depth_stem(copy.deepcopy(model))
    stem = s2d.net.get_submodule("0")
    assert stem.stride == (1, 1) and stem.in_channels % 8 == 0
    assert stem.in_channels >= 3 * stride * stride
    x = torch.rand(2, 3, size, size + 3, dtype=torch.double, requires_grad=True)
    out, ref = s2d(x), model(x)
    assert out.shape == ref.shape
    (g, g_ref) = (torch.autograd.grad(o.square().sum(), [x])[0] for o in (out, ref))
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(g, g_ref, atol=1e-12)


def test_space_to_depth_leaves_other_stems_alone():
    for conv in (nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(16, 4, 3, 2, 1), nn.Conv2d(3, 4, 3, 2, 2, 2)):
        net = fx.symbolic_trace(nn.Sequential(conv))
        model = space_to_depth_stem(
            ImageClassifier(net, Normalize(MEAN, STD), arch="t", num_classes=4)
        )
        assert model.net.get_submodule("0") is conv and not hasattr(model.net, "space_to_depth")


class _Residual(nn.Module):
    """relu(conv(x) + branch(x)) three ways, and a ReLU whose convolution has two users."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(4, 4, 3, 1, 1) for _ in range(4))

    def forward(self, x):
        h = F.relu(self.a(x) + x)  # conv + residual
        h = torch.relu(h + self.b(h))  # residual + conv
        shared = self.c(h)
        return (shared.relu() + shared) * nn.functional.relu(self.d(h))


def test_fuse_conv_relu_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    model = ImageClassifier(
        fx.symbolic_trace(_Residual()), Normalize([0.5] * 4, [0.5] * 4), arch="t", num_classes=4
    ).double()
    fused = fuse_conv_relu(copy.deepcopy(model)).requires_grad_(False)
    kinds = {name: type(m) for name, m in fused.net.named_children()}
    assert kinds == {"a": ConvReLU, "b": ConvReLU, "c": nn.Conv2d, "d": ConvReLU}
    model.requires_grad_(False)
    x = torch.randn(2, 4, 9, 9, dtype=torch.double, requires_grad=True)
    out, ref = fused(x), model(x)
    (g, g_ref) = (torch.autograd.grad(o.sin().sum(), [x])[0] for o in (out, ref))
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(g, g_ref, atol=1e-12)
    with pytest.raises(RuntimeError, match="frozen"):
        fused.requires_grad_(True)(x)


@pytest.mark.parametrize(("arch", "fused_layers"), [("resnet18", 17), ("timm:resnet18", 9)])
def test_fast_resnet_keeps_logits_and_input_gradients(arch, fused_layers):
    model = _random_bn_stats(build_model(arch, 10, MEAN, STD), seed=3).double()
    fast = prepare_fast(model, compile=False)
    assert sum(isinstance(m, ConvReLU) for m in fast.modules()) == fused_layers
    assert sum(isinstance(m, GatherMaxPool2d) for m in fast.modules()) == 1
    assert hasattr(fast.net, "space_to_depth")
    model.requires_grad_(False)
    x = torch.rand(2, 3, 64, 64, dtype=torch.double, requires_grad=True)
    out, ref = fast(x), model(x)
    (g, g_ref) = (torch.autograd.grad(o[:, 1].sum(), [x])[0] for o in (out, ref))
    assert ref.abs().max() > 0.1
    assert torch.allclose(out, ref, atol=1e-10) and torch.allclose(g, g_ref, atol=1e-10)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "size"),
    [(3, 2, 1, (17, 16)), (2, 2, 0, (8, 9)), (3, 1, 1, (7, 6)), ((3, 2), (2, 3), (1, 0), (11, 13))],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_compiled_gather_max_pool_matches_max_pool_with_ties_and_nan(
    kernel, stride, padding, size, dtype
):
    """Compiled, GatherMaxPool2d runs its own pooling (no max_pool2d in the graph) and gives
    ATen's outputs and gradients: ties go to the first maximum in row-major order and NaN wins,
    or gradients would land on other pixels. aot_eager runs the traced operations as they are."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 3, *size, generator=gen) * 2).round().relu()  # many ties and zeros
    x[0, 0, 1, 1] = float("nan")
    x = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm.print_readable(print_output=False))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    pool = GatherMaxPool2d(kernel, stride, padding)
    got = torch.compile(pool, backend=backend, dynamic=False)(x)
    want = F.max_pool2d(x, kernel, stride, padding)
    assert graphs and not any("max_pool2d" in code for code in graphs)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
    assert torch.equal(pool(x).nan_to_num(), want.nan_to_num())  # eager: ATen's own
    grad = torch.randn(want.shape, generator=gen).to(dtype)
    (g_want,) = torch.autograd.grad(want, x, grad)
    (g_got,) = torch.autograd.grad(got, x, grad)
    assert torch.equal(g_got != 0, g_want != 0)
    # The same terms summed, in float32 here: only ATen's bfloat16 rounding differs.
    tol = 0.05 if dtype == torch.bfloat16 else 1e-12
    assert torch.allclose(g_got.float(), g_want.float(), atol=tol)
    assert g_got.dtype == dtype and g_got.is_contiguous(memory_format=torch.channels_last)


def test_prepare_fast_freezes_and_keeps_outputs():
    torch.manual_seed(0)
    model = _random_bn_stats(build_model("small_cnn", 10, [0.5] * 3, [0.5] * 3), seed=2)
    fast = prepare_fast(model)
    assert not fast.training
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the caller's model is untouched
    conv_weight = next(m.weight for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-4)


def test_live_folded_copy_follows_a_model_in_training():
    """The training attack's folded copy computes the live model's eval-mode logits and input
    gradients once refreshed, after the weights and BatchNorm statistics moved."""
    torch.manual_seed(0)
    model = _random_bn_stats(build_model("resnet18", 10, MEAN, STD), seed=4)
    live = LiveFolded(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(2):  # moves weights and running statistics
        x = torch.rand(8, 3, 64, 64)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), torch.arange(8) % 10).backward()
        opt.step()
    model.eval()
    x = torch.rand(4, 3, 64, 64)

    def logits_and_grad(net, dtype=torch.float32):
        xg = x.to(dtype).requires_grad_(True)
        out = net(xg)
        (grad,) = torch.autograd.grad(out.square().sum(), [xg])
        return out.detach().float(), grad.float()

    # Against float64: on one CPU thread the float32 model's own input gradient strays 0.2 %.
    want, want_grad = logits_and_grad(copy.deepcopy(model).double(), torch.float64)
    stale, _ = logits_and_grad(live.model)
    assert not torch.allclose(stale, want, atol=1e-3)  # the copy does not follow by itself
    got, got_grad = logits_and_grad(live.refresh(model))
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert torch.allclose(got_grad, want_grad, atol=1e-4 * want_grad.abs().max(), rtol=1e-3)
    assert not any(p.requires_grad for p in live.model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_compiled_live_folded_copy_sees_refreshed_weights_without_recompiling():
    """The compiled copy (full training batches) reads the weights that refresh writes in place:
    after a training step it computes the live model's logits and input gradients, with no new
    compilation; other batch sizes get the eager copy."""
    torch.manual_seed(0)
    model = _random_bn_stats(build_model("small_cnn", 10, MEAN, STD), seed=4)
    live = LiveFolded(model, compile_batch=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def logits_and_grad(net, x):
        xg = x.clone().requires_grad_(True)
        out = net(xg)
        (grad,) = torch.autograd.grad(out.square().sum(), [xg])
        return out.detach(), grad

    x = torch.rand(8, 3, 32, 32)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for step in range(2):
        model.eval()
        compiled = live.refresh(model, 8)
        assert compiled is not live.model and live.refresh(model, 5) is live.model
        assert live.compiled_for(8) and not live.compiled_for(5)
        got, got_grad = logits_and_grad(compiled, x)
        want, want_grad = logits_and_grad(model, x)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), step
        assert torch.allclose(got_grad, want_grad, atol=1e-4 * want_grad.abs().max(), rtol=1e-3)
        model.train()  # a step moves the weights and the BatchNorm statistics
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.rand(8, 3, 32, 32)), torch.arange(8)).backward()
        opt.step()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# --- checkpoints -------------------------------------------------------------------------------


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return _random_bn_stats(build_model("small_cnn", 10, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]), 3)


def _logits(model, seed=0):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def _robustness_state(model: ImageClassifier) -> dict[str, torch.Tensor]:
    """`DataParallel(AttackerModel).state_dict()` of `model`, as robustness saves it."""
    net_state = model.net.state_dict()
    mean = model.normalize.mean.view(3, 1, 1)
    std = model.normalize.std.view(3, 1, 1)
    state = {"module.normalizer.new_mean": mean, "module.normalizer.new_std": std}
    state |= {f"module.model.{k}": v for k, v in net_state.items()}
    state |= {"module.attacker.normalize.new_mean": mean, "module.attacker.normalize.new_std": std}
    return state | {f"module.attacker.model.{k}": v for k, v in net_state.items()}


def test_robustness_checkpoint_loads_with_its_normalisation(tmp_path, small_model, caplog):
    state = _robustness_state(small_model)
    optimizer = torch.optim.SGD(small_model.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "checkpoint.pt.best"
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "epoch": 5}, path)

    with caplog.at_level(logging.INFO, logger="lwise"):
        loaded = load_model(path, arch="small_cnn", num_classes=10, mean=MEAN, std=STD)
    assert "checkpoint's normalisation" in caplog.text  # ImageNet values were overridden
    assert not loaded.training
    assert torch.equal(_logits(loaded), _logits(small_model))
    # The class count comes from the head when not given, as lwise.guide.train loads it.
    assert load_model(path, arch="small_cnn").num_classes == 10
    with pytest.raises(CheckpointError, match="give arch"):
        load_model(path)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_state_dict(tmp_path, small_model, prefix):
    path = tmp_path / "net.pt"
    torch.save({f"{prefix}{k}": v for k, v in small_model.net.state_dict().items()}, path)
    loaded = load_model(
        path, arch="small_cnn", num_classes=10, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3]
    )
    assert torch.allclose(_logits(loaded), _logits(small_model))
    with pytest.raises(CheckpointError, match="give mean and std"):
        load_model(path, arch="small_cnn", num_classes=10)


def test_own_format_round_trip(tmp_path, small_model):
    small_model.class_names = [f"digit {i}" for i in range(10)]
    path = tmp_path / "ckpt.pt"
    save_checkpoint(
        path, small_model, {"epoch": 3, "optimizer": {"lr": 0.1}}, training_args={"eps": 1.0}
    )
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind
    loaded = load_model(path)
    assert loaded.arch == "small_cnn" and loaded.class_names == small_model.class_names
    assert torch.equal(_logits(loaded), _logits(small_model))
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 3 and raw["training_args"] == {"eps": 1.0}
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(path, small_model, {"arch": "other"})


def test_num_classes_mismatch_is_explained(tmp_path, small_model):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, small_model)
    with pytest.raises(CheckpointError, match="has 10 classes but num_classes=4.*replace_head"):
        load_model(path, num_classes=4)
    plain = tmp_path / "net.pt"
    torch.save(small_model.net.state_dict(), plain)
    with pytest.raises(CheckpointError, match="has 10 classes but num_classes=4"):
        load_model(plain, arch="small_cnn", num_classes=4, mean=MEAN, std=STD)


def test_full_pickle_needs_trust(tmp_path, small_model):
    path = tmp_path / "pickled.pt"
    # An argparse.Namespace, as training scripts often save, needs full unpickling.
    torch.save({"model": small_model.net.state_dict(), "args": argparse.Namespace(eps=3)}, path)
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_model(path, arch="small_cnn", num_classes=10, mean=MEAN, std=STD)
    loaded = load_model(
        path,
        arch="small_cnn",
        num_classes=10,
        mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.25, 0.3],
        trusted=True,
    )
    assert torch.allclose(_logits(loaded), _logits(small_model))


def test_dill_pickled_robustness_checkpoint_loads_when_trusted(tmp_path, small_model):
    """robustness saves with pickle_module=dill; a lambda (e.g. a LambdaLR schedule's) needs it."""
    path = tmp_path / "checkpoint.pt.latest"
    payload = {
        "model": _robustness_state(small_model),
        "schedule": {"lr_lambda": lambda epoch: 0.1**epoch},
        "epoch": 2,
    }
    torch.save(payload, path, pickle_module=dill)
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_model(path, arch="small_cnn", num_classes=10, mean=MEAN, std=STD)
    loaded = load_model(path, arch="small_cnn", num_classes=10, mean=MEAN, std=STD, trusted=True)
    assert torch.equal(_logits(loaded), _logits(small_model))
