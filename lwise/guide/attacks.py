"""Projected gradient descent on the input of a classifier: enhancement and attacks.

Model convention: `model(x)` takes images in [0, 1], shaped (B, 3, H, W), and returns logits;
normalisation lives inside the model (`lwise.guide.models.ImageClassifier`). The caller puts the
model in eval mode (BatchNorm running statistics, no dropout), as robustness `AttackerModel` does.

Enhancement descends the objective's loss (raises the ground-truth evidence), an attack ascends
it (L-WISE `enhance.py`: `targeted = not --attack`). The L2 attacker follows robustness
`attack_steps.py` `L2Step` and `attacker.py` `Attacker.forward` step for step (the objectives
are L-WISE `custom_losses.py`'s; the step count is its `scripts/batch_enhance/*.sh` rule).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lwise.core.keys import OBJECTIVES
from lwise.guide.fast import FAST_DTYPES

CONSTRAINTS = ("2", "inf")
# Sign applied to the loss before gradient ascent: enhancement descends, an attack ascends.
DIRECTIONS = {"enhance": -1.0, "attack": 1.0}
MODES = ("reference", "fast")

log = logging.getLogger(__name__)

# robustness attack_steps.py L2Step: 1e-10 added to the gradient norm.
GRAD_NORM_EPS = 1e-10
# torch.renorm (used by robustness L2Step.project) divides by (norm + 1e-7).
RENORM_EPS = 1e-7


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector [B] to broadcast against a batch shaped like `like`."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _sample_norm(t: torch.Tensor) -> torch.Tensor:
    # vector_norm over the non-batch dims works in any memory format without a copy.
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.dim())))


def l2_step(x: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
    """x + α·g/(‖g‖₂ + 1e-10), the norm taken per sample."""
    return x + step_size * grad / _per_sample(_sample_norm(grad) + GRAD_NORM_EPS, grad)


def l2_project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Pull x back into the L2 ball of radius eps around x0, then clamp to [0, 1].

    Only samples whose perturbation is longer than eps are rescaled, by eps/(norm + 1e-7), which
    is `torch.renorm(p=2, dim=0, maxnorm=eps)` written so that it keeps the memory format.
    """
    delta = x - x0
    norm = _sample_norm(delta)
    scale = torch.where(norm > eps, eps / (norm + RENORM_EPS), torch.ones_like(norm))
    return torch.clamp(x0 + delta * _per_sample(scale, delta), 0, 1)


def l2_random_start(
    x: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A random point on the L2 sphere of radius eps around x, clamped to [0, 1]."""
    noise = _noise(torch.randn, x, generator)
    return torch.clamp(x + eps * noise / _per_sample(_sample_norm(noise) + GRAD_NORM_EPS, x), 0, 1)


def linf_step(x: torch.Tensor, grad: torch.Tensor, step_size: float) -> torch.Tensor:
    """x + α·sign(g)."""
    return x + step_size * torch.sign(grad)


def linf_project(x: torch.Tensor, x0: torch.Tensor, eps: float) -> torch.Tensor:
    """Clamp x − x0 to [−eps, eps], then the image to [0, 1]."""
    return torch.clamp(x0 + torch.clamp(x - x0, -eps, eps), 0, 1)


def linf_random_start(
    x: torch.Tensor, eps: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """x plus uniform noise in [−eps, eps], clamped to [0, 1]."""
    noise = _noise(torch.rand, x, generator)
    return torch.clamp(x + eps * (2 * noise - 1), 0, 1)


def _noise(sample: Callable, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Draw on the generator's device so that a CPU generator also seeds CUDA runs.
    device = generator.device if generator is not None else x.device
    noise = sample(x.shape, generator=generator, device=device, dtype=x.dtype)
    return noise.to(x.device).contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


_CONSTRAINT_OPS = {
    "2": (l2_step, l2_project, l2_random_start),
    "inf": (linf_step, linf_project, linf_random_start),
}


def steps_for_eps(eps: float) -> int:
    """Number of PGD steps the L-WISE batch scripts use for radius eps with step size 0.5.

    The scripts (L-WISE `scripts/batch_enhance/*.sh`) compute `printf "%.0f"` of 2·eps and
    turn 0 into 1.
    printf rounds halves to even, as Python's round does, so eps=0.25 gives 0 and then 1.
    """
    return max(1, round(2 * eps))


class _Objective:
    """Per-sample loss of one batch's labels; built once per batch so that validating the
    competitor mask (a host sync) happens outside the PGD loop."""

    def __init__(self, objective: str, y: torch.Tensor, competitors: torch.Tensor | None):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        self.objective = objective
        self.y = y
        self.mask = None
        if objective == "logit_diverge" and competitors is not None:
            mask = competitors.to(device=y.device, dtype=torch.bool)
            mask = mask.expand(len(y), -1).clone() if mask.dim() == 1 else mask.clone()
            if mask.shape[0] != len(y):
                raise ValueError(f"competitors has {mask.shape[0]} rows for {len(y)} labels")
            mask[torch.arange(len(y), device=y.device), y] = False
            if not bool(mask.any(dim=1).all()):
                raise ValueError("logit_diverge: some sample has no competing class but its own")
            self.mask = mask

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # Multi-view batches hold K views of each image, view-major (see lwise.guide.augment).
        repeats = logits.shape[0] // len(self.y)
        y = self.y.repeat(repeats)
        logits = logits.float()  # fp32 loss even when the model ran in bf16
        if self.objective == "cross_entropy":
            return F.cross_entropy(logits, y, reduction="none")
        gt = logits.gather(1, y[:, None]).squeeze(1)
        if self.objective == "logit":
            return -gt
        if self.mask is None:
            num_classes = logits.shape[1]
            if num_classes < 2:
                raise ValueError("logit_diverge needs at least two classes")
            competing = (logits.sum(dim=1) - gt) / (num_classes - 1)
        else:
            mask = self.mask.repeat(repeats, 1)
            competing = (logits * mask).sum(dim=1) / mask.sum(dim=1)
        return -(gt - competing)


def objective_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    objective: str,
    competitors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample loss [B] that enhancement lowers (L-WISE `custom_losses.py`).

    - `logit`: −z_y.
    - `cross_entropy`: −log softmax(z)_y.
    - `logit_diverge`: −(z_y − mean_{k∈D_y} z_k). `competitors` is a bool mask [C] or [B, C] of
      D_y (y itself is always left out); None means every other class. L-WISE's default D_y is
      the labels present in the dirmap: pass that mask to reproduce it.
    """
    return _Objective(objective, y, competitors)(logits)


def _forward(model: Callable, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Logits of x, under autocast to `dtype` unless it is None (full precision)."""
    autocast = (
        torch.autocast(x.device.type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        return model(x)


def _keep_better(
    sign: float,
    loss: torch.Tensor,
    x: torch.Tensor,
    best_loss: torch.Tensor | None,
    best_x: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, keep (loss, x) where it strictly beats the best so far in direction `sign`.

    Ties keep the earlier candidate, as robustness `replace_best` does. torch.where keeps the
    bookkeeping on the device, with no host sync.
    """
    if best_loss is None:
        return loss, x
    better = sign * loss > sign * best_loss
    return torch.where(better, loss, best_loss), torch.where(_per_sample(better, x), x, best_x)


def _update(
    x: torch.Tensor,
    grad: torch.Tensor,
    x0: torch.Tensor,
    losses: torch.Tensor,
    best_loss: torch.Tensor | None,
    best_x: torch.Tensor | None,
    *,
    sign: float,
    constraint: str,
    eps: float,
    step_size: float,
    use_best: bool,
    check_finite: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One PGD step after the gradient: (new iterate, best loss, best iterate, per-sample 1
    where the gradient was not finite and the step was skipped, or None unchecked)."""
    step, project, _ = _CONSTRAINT_OPS[constraint]
    unfinite = None
    if check_finite:
        finite = torch.isfinite(grad).flatten(1).all(1)
        unfinite = (~finite).long()
        grad = torch.where(_per_sample(finite, grad), grad, 0.0)  # a zero step
    if use_best:
        best_loss, best_x = _keep_better(sign, losses, x, best_loss, best_x)
    return project(step(x, grad, step_size), x0, eps), best_loss, best_x, unfinite


# The fast mode's step arithmetic on float32 iterates, eager, is about 25 passes over the batch
# per step (1.0-1.3 ms of an 18 ms ResNet-50 step at batch 256 on an H200); compiled, a few
# fused kernels. Float32 throughout, but not bit-identical to eager, so the reference mode (step
# for step robustness's attacker) never uses it.
@functools.cache
def _compiled_update() -> Callable:
    return torch.compile(_update, dynamic=False)


def _descend(
    model: Callable,
    x0: torch.Tensor,
    start: torch.Tensor,
    objective: _Objective,
    *,
    sign: float,
    constraint: str,
    eps: float,
    step_size: float,
    steps: int,
    use_best: bool,
    views: Callable[[torch.Tensor], torch.Tensor] | None,
    need_loss: bool,
    dtype: torch.dtype | None,
    skipped: torch.Tensor,
    compile_update: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One PGD run from `start`; returns the chosen iterate and its loss (None if not needed).

    With a half-precision `dtype`, a sample whose gradient is not finite keeps its iterate for
    that step, and `skipped` (per sample) counts such steps. `compile_update` runs each step's
    update through `_compiled_update`.
    """
    update = _compiled_update() if compile_update else _update
    x = start
    best_loss = best_x = None
    for _ in range(steps):
        # detach() gives a fresh leaf, so x0 (which `start` may be) never joins a graph.
        x = x.detach().requires_grad_(True)
        losses = objective(_forward(model, views(x) if views is not None else x, dtype))
        # robustness takes the batch mean; the per-sample step (normalised or signed) removes
        # that 1/B, which in half precision would push small gradients towards underflow.
        total = losses.mean() if dtype is None else losses.sum()
        (grad,) = torch.autograd.grad(sign * total, [x])
        x, best_loss, best_x, unfinite = update(
            x.detach(), grad, x0, losses.detach(), best_loss, best_x, sign=sign,
            constraint=constraint, eps=eps, step_size=step_size, use_best=use_best,
            check_finite=dtype is not None,
        )  # fmt: skip
        if unfinite is not None:
            skipped += unfinite
    if not (use_best or need_loss):
        return x, None
    with torch.no_grad():
        losses = objective(_forward(model, x, dtype))
    if not use_best:
        return x, losses
    best_loss, best_x = _keep_better(sign, losses, x, best_loss, best_x)
    return best_x, best_loss


def pgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    constraint: str = "2",
    objective: str = "cross_entropy",
    direction: str = "enhance",
    competitors: torch.Tensor | None = None,
    random_start: bool = False,
    restarts: int = 0,
    use_best: bool = True,
    views: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    mode: str = "reference",
    fast_dtype: str = "float16",
    compile_update: bool = False,
) -> torch.Tensor:
    """Perturb images x (B, C, H, W in [0, 1]) with labels y; returns them detached.

    - `eps`: radius of the `constraint` ball ("2": L2 over C×H×W of [0,1] values; "inf": max
      per value); `step_size` α and `steps` T as in robustness (L-WISE: α=0.5, T=steps_for_eps).
    - `direction`: "enhance" descends the objective's loss, "attack" ascends it.
    - `use_best`: per sample, return the best-loss iterate among x_0…x_T (robustness default);
      x_0 itself when nothing improves.
    - `random_start`: start at a random point of the ball (L2: on the sphere).
    - `restarts`: extra runs, each from a random start; per sample the run with the best final
      loss is kept. robustness instead keeps the latest restart that is misclassified, which
      does not apply to enhancement; the best loss does.
    - `views`: callable turning x into K augmented views, view-major (e.g.
      `lwise.guide.augment.MultiView`); the loss is then averaged over the views at each step and
      `use_best` is ignored: L-WISE `enhance_vit_aug.py` returns x_T.
    - `mode`: "reference" runs the model in fp32 like the robustness attacker; "fast" runs it
      under autocast to `fast_dtype` ("float16" or "bfloat16") on channels_last input, the
      loss and the iterate staying in fp32. Prepare the model once with
      `lwise.guide.fast.prepare_fast` for the full speed-up. A half-precision gradient that is not
      finite skips that sample's step, with a warning.
    - `compile_update`: in fast mode, run each step's arithmetic after the gradient (finite
      check, best iterate, step, projection) as compiled kernels: worth it when the model is
      compiled too (its compilation is paid anyway); results equal eager's up to float32
      rounding. Ignored in reference mode.

    The model must be in eval mode. Gradients are taken with respect to the input only, so
    parameter `.grad` fields are never touched, whether or not the parameters require grad.
    """
    if constraint not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {constraint!r}; valid: {', '.join(CONSTRAINTS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if fast_dtype not in FAST_DTYPES:
        raise ValueError(f"unknown fast_dtype {fast_dtype!r}; valid: {', '.join(FAST_DTYPES)}")
    bad = [
        f"{name} {value!r} (must be {rule})"
        for name, value, ok, rule in (
            ("eps", eps, eps >= 0, ">= 0"),
            ("step_size", step_size, step_size > 0, "> 0"),
            ("steps", steps, steps >= 0, ">= 0"),
            ("restarts", restarts, restarts >= 0, ">= 0"),
        )
        if not ok
    ]
    if bad:
        raise ValueError("pgd: " + ", ".join(bad))
    if getattr(model, "training", False):
        raise ValueError("put the model in eval mode before pgd (BatchNorm must not update)")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} images but {y.shape[0]} labels")
    fast = mode == "fast"
    dtype = FAST_DTYPES[fast_dtype] if fast else None
    sign = DIRECTIONS[direction]
    objective_fn = _Objective(objective, y, competitors)
    track_best = use_best and views is None
    random_perturb = _CONSTRAINT_OPS[constraint][2]
    # inference_mode(False) lets callers that score under inference_mode call us too.
    with torch.inference_mode(False), torch.enable_grad():
        # The iterate stays in (at least) fp32 whatever the input and model precision.
        x0 = x.detach().to(torch.promote_types(x.dtype, torch.float32), copy=True)
        if fast and x0.dim() == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        best_x = best_loss = None
        skipped = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        for run in range(restarts + 1):
            start = random_perturb(x0, eps, generator) if random_start or run > 0 else x0
            result, loss = _descend(
                model,
                x0,
                start,
                objective_fn,
                sign=sign,
                constraint=constraint,
                eps=eps,
                step_size=step_size,
                steps=steps,
                use_best=track_best,
                views=views,
                need_loss=restarts > 0,
                dtype=dtype,
                skipped=skipped,
                compile_update=fast and compile_update,
            )
            best_loss, best_x = _keep_better(sign, loss, result, best_loss, best_x)
    if fast and skipped.any():  # one host sync per batch
        log.warning(
            "%d of %d images had non-finite %s gradients in %d steps in all (skipped);"
            " fast_dtype bfloat16 has the range of float32",
            int((skipped > 0).sum()), len(skipped), fast_dtype, int(skipped.sum()),
        )  # fmt: skip
    return best_x.detach().to(x.dtype).contiguous()
