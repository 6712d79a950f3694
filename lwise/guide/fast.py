"""Fast inference: the guide model rewritten for speed, with the same function.

`prepare_fast` folds BatchNorm into the convolutions, runs the stem as a space-to-depth
convolution, fuses convolutions with their ReLU (one cuDNN kernel each), gives max pooling a
backward that compiles to one gather kernel (`lwise.guide.pooling`), freezes the weights,
switches to channels_last and compiles. Enhancement (`pgd(..., mode="fast")`), scoring and
every later method that runs the frozen model many times use it, under autocast to one of
`FAST_DTYPES`.
"""

from __future__ import annotations

import copy
import logging
import operator

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from lwise.guide.compiling import compile_fast
from lwise.guide.models import ImageClassifier
from lwise.guide.pooling import gather_max_pool

__all__ = [
    "FAST_DTYPES",
    "ConvReLU",
    "LiveFolded",
    "SpaceToDepth",
    "fold_batchnorm",
    "fuse_conv_relu",
    "prepare_fast",
    "space_to_depth_stem",
]

log = logging.getLogger(__name__)

# Set on each convolution that folding or fusion rewrites: the names (under `model.net`) of the
# convolution and BatchNorm it came from, so that `LiveFolded` can recompute its weights.
_SOURCE = "_lwise_source"
_STEM_CHANNELS = "_lwise_space_to_depth"

# Half-precision types of fast mode, by config name. float16 is the default: its 3 extra
# mantissa bits matter for input gradients. On the H100 bench (random-weight ResNet-50, eps 20)
# float16 came within 1.8 % of the reference's logit gain, bfloat16 5.8-7.3 % below it.
FAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _module_uses(graph: fx.Graph) -> dict[str, int]:
    """How many call sites each submodule has (a shared module must not be rewritten)."""
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    return uses


def _foldable(conv_node: object, modules: dict[str, nn.Module], uses: dict[str, int]) -> bool:
    if not (isinstance(conv_node, fx.Node) and conv_node.op == "call_module"):
        return False
    # Exact types: timm's BatchNormAct2d (a BatchNorm2d subclass) also applies an activation,
    # and Conv2d subclasses may pad in forward.
    return (
        type(modules[conv_node.target]) is nn.Conv2d
        and len(conv_node.users) == 1
        and uses[conv_node.target] == 1
    )


def fold_batchnorm(model: ImageClassifier) -> ImageClassifier:
    """An eval-mode copy in which every Conv2d whose only consumer is a BatchNorm2d absorbs it.

    The network is traced with torch.fx; one that cannot be traced is returned unfolded (and
    the reason logged), which changes speed, not results.
    """
    model = copy.deepcopy(model).eval()
    try:
        graph_module = fx.symbolic_trace(model.net)
    except Exception as err:  # fx raises many types for untraceable control flow
        log.warning("BatchNorm not folded: cannot trace %s (%s)", model.arch, err)
        return model
    modules = dict(graph_module.named_modules())
    uses = _module_uses(graph_module.graph)
    for node in list(graph_module.graph.nodes):
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        bn, conv_node = modules[node.target], node.args[0]
        if bn.running_mean is None or not _foldable(conv_node, modules, uses):
            continue
        fused = fuse_conv_bn_eval(modules[conv_node.target], bn)
        setattr(fused, _SOURCE, (conv_node.target, node.target))
        graph_module.set_submodule(conv_node.target, fused)
        node.replace_all_uses_with(conv_node)
        graph_module.graph.erase_node(node)
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    model.net = graph_module
    return model


class SpaceToDepth(nn.Module):
    """Rearrange s×s pixel blocks into channels, after zero padding, for `space_to_depth_stem`.

    The padding puts the original convolution's taps on the block grid; extra zero channels
    bring the channel count to a multiple of 8, which tensor-core kernels need.
    """

    def __init__(self, block: int, padding: tuple[int, int], kernel: tuple[int, int], extra: int):
        super().__init__()
        self.block, self.padding, self.kernel, self.extra = block, padding, kernel, extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        s, (ph, pw), (kh, kw) = self.block, self.padding, self.kernel
        # Output size of the original convolution, then the input that stride-1 taps need.
        oh, ow = (h + 2 * ph - kh) // s + 1, (w + 2 * pw - kw) // s + 1
        rows, cols = s * (oh + -(-kh // s) - 1), s * (ow + -(-kw // s) - 1)
        x = F.pad(x, (pw, cols - w - pw, ph, rows - h - ph))  # negative pads crop
        x = x.reshape(n, c, rows // s, s, cols // s, s).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(n, c * s * s, rows // s, cols // s)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


def _space_to_depth_weight(weight: torch.Tensor, s: int, channels: int) -> torch.Tensor:
    """Weights of the stride-1 convolution over `SpaceToDepth` output equal to the stride-`s`
    convolution with `weight`."""
    out_ch, in_ch, kh, kw = weight.shape
    taps_h, taps_w = -(-kh // s), -(-kw // s)
    w = F.pad(weight.detach(), (0, taps_w * s - kw, 0, taps_h * s - kh))
    # Tap (s·a + p, s·b + q) of channel c moves to channel (c, p, q), tap (a, b).
    w = w.reshape(out_ch, in_ch, taps_h, s, taps_w, s).permute(0, 1, 3, 5, 2, 4)
    w = w.reshape(out_ch, in_ch * s * s, taps_h, taps_w)
    return F.pad(w, (0, 0, 0, 0, 0, channels - in_ch * s * s))


def space_to_depth_stem(model: ImageClassifier) -> ImageClassifier:
    """Run a traced network's strided few-channel stem convolution as a stride-1 convolution
    over the image rearranged into blocks (space-to-depth, as in TResNet's stem).

    The function is the same (tested to float64 precision); the kernels are not. cuDNN's
    kernels for 3-channel inputs are slow: on an H100 the 7×7/2 ResNet stem took about a tenth
    of a PGD step. Zero-padding it to 4 channels made the step 7 % faster; space-to-depth
    (4×4 taps over 16 channels) made it 8 % faster than that (bench runs, 2026-11-23).
    Untraced networks and other stems are left alone.
    """
    net = model.net
    if not isinstance(net, fx.GraphModule):
        return model
    image = next(n for n in net.graph.nodes if n.op == "placeholder")
    (first, *others) = list(image.users)
    if others or first.op != "call_module":
        return model
    conv = net.get_submodule(first.target)
    if (
        type(conv) is not nn.Conv2d
        or _module_uses(net.graph)[first.target] > 1
        or conv.in_channels >= 8  # already tensor-core friendly
        or conv.groups != 1
        or conv.padding_mode != "zeros"
        or isinstance(conv.padding, str)
        or conv.dilation != (1, 1)
        or conv.stride[0] != conv.stride[1]
        or conv.stride[0] < 2
    ):
        return model
    s = conv.stride[0]
    blocked = conv.in_channels * s * s
    channels = -(-blocked // 8) * 8
    weight = _space_to_depth_weight(conv.weight, s, channels)
    stem = nn.Conv2d(
        channels, conv.out_channels, tuple(weight.shape[2:]), bias=conv.bias is not None
    )
    stem = stem.to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        stem.weight.copy_(weight)
        if conv.bias is not None:
            stem.bias.copy_(conv.bias)
    setattr(stem, _SOURCE, getattr(conv, _SOURCE, (first.target, None)))
    setattr(stem, _STEM_CHANNELS, (s, channels))
    net.set_submodule(first.target, stem)
    net.add_submodule(
        "space_to_depth",
        SpaceToDepth(s, tuple(conv.padding), tuple(conv.kernel_size), channels - blocked),
    )
    with net.graph.inserting_after(image):
        blocks = net.graph.call_module("space_to_depth", (image,))
    first.replace_input_with(image, blocks)
    net.graph.lint()
    net.recompile()
    return model


class _ConvReLUFunction(torch.autograd.Function):
    """relu(conv(x) + bias [+ residual]) with a backward for the input (and residual) only.

    On CUDA the forward is one cuDNN kernel with the bias, residual and ReLU in its epilogue;
    elsewhere it runs the same arithmetic as separate operations. The backward masks the
    gradient by the saved output and takes one data-gradient convolution: weights get none.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, residual, stride, padding, dilation, groups, cudnn):
        if cudnn:
            if residual is None:
                y = torch.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, groups)
            else:
                y = torch.cudnn_convolution_add_relu(
                    x, weight, residual, 1.0, bias, stride, padding, dilation, groups
                )
        else:
            y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
            y = (y if residual is None else y + residual).relu()
        ctx.save_for_backward(x, weight, y)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.has_residual = residual is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, y = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        grad = torch.ops.aten.threshold_backward(grad, y, 0)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                [True, False, False],
            )[0]  # fmt: skip
        return grad_x, None, None, grad if ctx.has_residual else None, None, None, None, None, None


class ConvReLU(nn.Module):
    """A frozen Conv2d followed by ReLU, optionally after adding a residual, fused.

    Made by `fuse_conv_relu`; runs in the autocast dtype when autocast is on. For frozen
    models only: the weights get no gradient.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        # Read here: torch.compile cannot trace the availability check inside forward.
        self.cudnn = torch.backends.cudnn.is_available()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        conv = self.conv
        if conv.weight.requires_grad:
            raise RuntimeError("ConvReLU is for frozen models: call requires_grad_(False) first")
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        return _ConvReLUFunction.apply(
            x.to(dtype),
            conv.weight.to(dtype),
            None if conv.bias is None else conv.bias.to(dtype),
            None if residual is None else residual.to(dtype),
            conv.stride, conv.padding, conv.dilation, conv.groups, x.is_cuda and self.cudnn,
        )  # fmt: skip


_RELU_FUNCTIONS = (F.relu, torch.relu)
_ADD_FUNCTIONS = (operator.add, torch.add)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _fusable_conv(node: object, modules: dict[str, nn.Module], uses: dict[str, int]) -> bool:
    if not _foldable(node, modules, uses):
        return False
    conv = modules[node.target]
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def fuse_conv_relu(model: ImageClassifier) -> ImageClassifier:
    """Fuse `relu(conv(x))` and `relu(conv(x) + r)` of a traced frozen network into `ConvReLU`.

    On an H100 this took the ResNet-50 PGD step from 26.0 to 23.2 ms (bench, 2026-11-23): the
    forward's bias, residual and ReLU move into the convolution kernels, and the backward's
    masking joins the residual additions that torch.compile fuses anyway. Outputs and input
    gradients stay the same. Untraced networks are left alone.
    """
    net = model.net
    if not isinstance(net, fx.GraphModule):
        return model
    modules = dict(net.named_modules())
    uses = _module_uses(net.graph)
    for relu in list(net.graph.nodes):
        if not (_is_relu(relu, modules) and len(relu.args) == 1):
            continue
        source, residual, add = relu.args[0], None, None
        if (
            isinstance(source, fx.Node)
            and source.op == "call_function"
            and source.target in _ADD_FUNCTIONS
            and len(source.args) == 2
            and not source.kwargs
            and len(source.users) == 1
        ):
            add = source
            a, b = add.args
            source, residual = (a, b) if _fusable_conv(a, modules, uses) else (b, a)
            if not isinstance(residual, fx.Node):
                continue
        if not _fusable_conv(source, modules, uses):
            continue
        conv = modules[source.target]
        setattr(conv, _SOURCE, getattr(conv, _SOURCE, (source.target, None)))
        net.set_submodule(source.target, ConvReLU(conv))
        with net.graph.inserting_before(relu):
            args = (source.args[0],) if residual is None else (source.args[0], residual)
            fused = net.graph.call_module(source.target, args)
        relu.replace_all_uses_with(fused)
        for dead in (relu, add, source):
            if dead is not None:
                net.graph.erase_node(dead)
    net.graph.lint()
    net.delete_all_unused_submodules()
    net.recompile()
    return model


def prepare_fast(
    model: ImageClassifier, compile: bool | None = None, compile_mode: str | None = None
) -> nn.Module:
    """The model set up for `pgd(..., mode="fast")` and fast scoring: an eval copy with
    BatchNorm folded, a space-to-depth stem, convolutions fused with their ReLU, max pooling
    with a gather backward when compiled (`lwise.guide.pooling`), frozen
    parameters (input-only gradients), channels_last weights, and torch.compile when `compile`
    is True (default: only on CUDA, as compiling on the CPU costs more than it saves). Shapes
    are compiled statically: each new batch size compiles again, and so does each call
    (folding makes a new module class), so prepare once per process. Compiled code is cached
    on disk (`lwise.guide.compiling.compile_cache_dir`): a later job with the same model and
    shapes loads it.
    """
    device = next(model.parameters()).device
    # Fixed shapes for the whole job: let cuDNN pick its fastest convolution algorithms.
    torch.backends.cudnn.benchmark = device.type == "cuda"
    fast = gather_max_pool(fuse_conv_relu(space_to_depth_stem(fold_batchnorm(model))))
    fast.requires_grad_(False)
    fast = fast.to(memory_format=torch.channels_last)
    if not (compile if compile is not None else device.type == "cuda"):
        return fast
    return compile_fast(fast, compile_mode)


class LiveFolded:
    """A `prepare_fast` copy of a model that is still training, for the attacks of its training
    steps: `refresh(model, batch)` recomputes the copy's folded weights from the live weights
    and BatchNorm statistics, in place, and returns it: compiled for batches of
    `compile_batch` images when that is given, eager for any other size (validation, the last
    batch of an epoch), so that only one shape is ever compiled.

    The attack runs in eval mode (robustness's `make_adv`), where BatchNorm is an affine map, so
    the copy computes the same function as the live model. On an H200 (ResNet-50, batch 128,
    eps 3, 7 steps, bfloat16) the attack alone ran 1,061-1,094 images/s on the eager copy,
    1,279-1,446 compiled, against 500 on the live model (bench/enhance.py --parts train_step);
    refreshing costs one small kernel per tensor.
    """

    def __init__(self, model: ImageClassifier, compile_batch: int | None = None):
        self.model = prepare_fast(model, compile=False)
        self._folded: list[tuple[nn.Module, str, str | None, tuple[int, int] | None]] = []
        covered: set[str] = set()
        for name, module in self.model.named_modules():
            if hasattr(module, _SOURCE):
                conv, bn = getattr(module, _SOURCE)
                self._folded.append((module, conv, bn, getattr(module, _STEM_CHANNELS, None)))
                covered |= {f"{name}.weight", f"{name}.bias"}
        live = model.state_dict(keep_vars=True)
        self._copies = []
        for key, tensor in self.model.state_dict(keep_vars=True).items():
            if key in covered:
                continue
            if key not in live:  # a rewrite this class does not know about
                raise RuntimeError(f"LiveFolded: {key} of the prepared copy has no live source")
            self._copies.append((tensor, key))
        self.compile_batch = compile_batch
        self._compiled = None if compile_batch is None else compile_fast(self.model)

    @torch.no_grad()
    def refresh(self, model: ImageClassifier, batch: int | None = None) -> nn.Module:
        live = model.state_dict(keep_vars=True)
        for tensor, key in self._copies:
            tensor.copy_(live[key])
        for module, conv_name, bn_name, stem in self._folded:
            conv = model.net.get_submodule(conv_name)
            weight, bias = conv.weight, conv.bias
            if bn_name is not None:
                bn = model.net.get_submodule(bn_name)
                weight, bias = fuse_conv_bn_weights(
                    weight, bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
                )
            if stem is not None:
                weight = _space_to_depth_weight(weight, *stem)
            module.weight.copy_(weight)
            if bias is not None:
                module.bias.copy_(bias)
        return self._compiled if self.compiled_for(batch) else self.model

    def compiled_for(self, batch: int | None) -> bool:
        """Whether `refresh(model, batch)` returns the compiled copy."""
        return self._compiled is not None and batch == self.compile_batch
