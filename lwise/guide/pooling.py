"""Max pooling for the compiled fast model: `GatherMaxPool2d` computes what nn.MaxPool2d does,
eager through ATen, compiled as a strided-slice maximum with a gather backward
(`lwise.guide.fast.prepare_fast` swaps it in with `gather_max_pool`)."""

from __future__ import annotations

import itertools

import torch
from torch import fx, nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair

from lwise.guide.models import ImageClassifier

__all__ = ["GatherMaxPool2d", "gather_max_pool"]


class _GatherMaxPoolFunction(torch.autograd.Function):
    """max_pool2d (floor mode, dilation 1) written as elementwise operations on strided slices,
    with a backward that gathers, for each input pixel, the gradients of the windows whose
    maximum it is. Both compile to one pointwise kernel each. Windows pick their first maximum
    in row-major order, NaN winning, as ATen's kernels do, so outputs are equal; gradients sum
    the same terms, accumulated in float32."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding):
        (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
        h, w = x.shape[-2:]
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        padded = F.pad(x, (pw, pw, ph, ph), value=float("-inf"))
        best = which = None
        for tap, (dr, dc) in enumerate(itertools.product(range(kh), range(kw))):
            v = padded[..., dr : dr + sh * (ho - 1) + 1 : sh, dc : dc + sw * (wo - 1) + 1 : sw]
            if best is None:
                best, which = v, torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
                continue
            take = (v > best) | v.isnan()
            best, which = torch.where(take, v, best), torch.where(take, tap, which)
        ctx.save_for_backward(which)
        ctx.geometry = (kernel, stride, padding, (h, w))
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        return best

    @staticmethod
    def backward(ctx, grad):
        (which,) = ctx.saved_tensors
        kernel, stride, padding, size = ctx.geometry

        def windows(axis: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            """Along one axis, for each input position: the candidate windows holding it (one
            per `ceil(k/s)`), its offset in each, and whether that window exists."""
            k, s, n_out = kernel[axis], stride[axis], grad.shape[axis - 2]
            pos = torch.arange(size[axis], device=grad.device) + padding[axis]
            out = []
            for back in range(-(-k // s)):
                window = pos // s - back
                offset = pos - s * window
                valid = (offset < k) & (window >= 0) & (window < n_out)
                out.append((window.clamp(0, n_out - 1), offset, valid))
            return out

        acc = torch.promote_types(grad.dtype, torch.float32)
        total = None
        for rows, dr, row_ok in windows(0):
            for cols, dc, col_ok in windows(1):
                at = (..., rows[:, None], cols[None, :])
                hit = row_ok[:, None] & col_ok[None, :]
                hit = hit & (which[at] == dr[:, None] * kernel[1] + dc[None, :])
                term = torch.where(hit, grad[at].to(acc), 0)
                total = term if total is None else total + term
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return total.to(grad.dtype).contiguous(memory_format=layout), None, None, None


class GatherMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that, when compiled, runs as `_GatherMaxPoolFunction`, and eager as itself.

    Inductor's own max-pooling backward was the slowest memory-bound kernel of the compiled
    ResNet-50 attack pass: on an H200 (float16, batch 256, 224 px, profiled) 1.53 ms of a
    17.8 ms pass against 0.48 ms as this gather, the forward 0.36 against 0.17 ms; enhancement
    at eps 20 / 40 steps went 325.4 -> 345.0 images/s (bench/enhance.py --compare-pooling,
    2026-12-01). Made by `gather_max_pool`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return _GatherMaxPoolFunction.apply(
                x, _pair(self.kernel_size), _pair(self.stride), _pair(self.padding)
            )
        return super().forward(x)


def gather_max_pool(model: ImageClassifier) -> ImageClassifier:
    """Replace, in place, each plain `nn.MaxPool2d` of floor mode, dilation 1, no indices and
    at most 256 taps by a `GatherMaxPool2d` of the same geometry (same outputs)."""
    for name, module in list(model.net.named_modules()):
        if not (
            type(module) is nn.MaxPool2d
            and _pair(module.dilation) == (1, 1)
            and not module.ceil_mode
            and not module.return_indices
            and _pair(module.kernel_size)[0] * _pair(module.kernel_size)[1] <= 256
        ):
            continue
        pool = GatherMaxPool2d(module.kernel_size, module.stride, module.padding)
        model.net.set_submodule(name, pool)
    if isinstance(model.net, fx.GraphModule):
        model.net.recompile()
    return model
