"""EMD-Corr: re-rank a kNN shortlist by optimal transport between patch sets.

Reference: anguyen8/visual-correspondence-XAI, `EMD-Corr/src/emd_utils.py`
(`EMDFunctions.compute_emd_sim`, `Sinkhorn`, `compute_spatial_similarity`), with the defaults of
`EMD-Corr/src/params.py`, as described in Nguyen, Taesiri & Nguyen (NeurIPS 2022):

- patch weights from the cross-correlation ("similarity map") construction of Stylianou et al.
  (2019), or uniform;
- cost 1 − cosine between L2-normalised patch vectors, kernel exp(−cost/0.05);
- transport plan T; score = Σ T·cos over the 5 cells with the largest T (higher is closer).

Solvers (`SOLVERS`):

- ``reference``: the reference's Sinkhorn exactly. Start r = c = 1, iterate r = u/(K c),
  c = v/(Kᵀ r) at most 100 times and stop when mean |r − r_prev| < 0.1 (absolute). The test is
  taken once for all pairs of a query together (the 50 exemplars and the query versus itself),
  so one slow pair keeps every pair of that query iterating; the count swings from 2 to the cap
  with the feature statistics. At the cap the reference prints "Sinkhorn no solutions!" and uses
  the plan anyway; here a warning is logged and the plan used. The weights are normalised as
  the reference does, w/(Σw + 1e-5). This is a barely iterated entropic plan, not an EMD.
- ``sinkhorn``: the same entropic problem (ε = 0.05) iterated to convergence, pair by pair, in
  float64 (marginals exact to `tol`).
- ``exact``: the exact EMD plan per pair through POT (`ot.emd`), float64, on the CPU.

All solvers run every pair of a batch of queries at once (the exact one loops over pairs in
POT's C++ solver).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

SOLVERS = ("reference", "sinkhorn", "exact")
EPSILON = 0.05  # emd_utils.py: K = exp(-dis / 0.05)
REFERENCE_THRESHOLD = 0.1  # emd_utils.py Sinkhorn: thresh = 1e-1
REFERENCE_MAX_ITER = 100  # emd_utils.py Sinkhorn: for i in range(100)
TOP_CELLS = 5  # EMD.py: num_patch = 5 with CLOSEST_PATCH_COMPARISON


def flat(maps: torch.Tensor) -> torch.Tensor:
    """(…, C, h, w) -> (…, C, h·w)."""
    return maps.flatten(-2)


def cc_weights(query: torch.Tensor, exemplars: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stylianou et al. (2019) similarity-map weights, as `compute_spatial_similarity`.

    `query` (B, C, R) and `exemplars` (B, P, C, R) are raw (unnormalised) patch features. Each
    side is divided by the norm of its mean-pooled vector and by R; S = Q̂ᵀĜ (R×R) then sums to
    the cosine of the pooled vectors. Returns (query weights = row sums of S, (B, P, R);
    exemplar weights = column sums, (B, P, R)), in float64 as the reference's numpy.
    """
    q, g = query.double(), exemplars.double()
    r = q.shape[-1]
    q = q / (q.mean(-1).norm(dim=-1)[:, None, None] * r)
    g = g / (g.mean(-1).norm(dim=-1)[..., None, None] * r)
    s = torch.einsum("bcm,bpcs->bpms", q, g)
    return s.sum(-1), s.sum(-2)


def patch_cosines(query: torch.Tensor, exemplars: torch.Tensor) -> torch.Tensor:
    """cos[b, p, s, m] between exemplar p's patch s and the query's patch m, (B, P, R, R)."""
    q = F.normalize(query.float(), dim=1)
    g = F.normalize(exemplars.float(), dim=2)
    return torch.einsum("bcm,bpcs->bpsm", q, g)


def marginals(
    query_w: torch.Tensor, exemplar_w: torch.Tensor, *, uniform: bool, reference: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u over exemplar patches, v over query patches), each (B, P, R).

    Uniform: 1/R. Otherwise the cross-correlation weights, negative values clipped to 0 (they
    never occur for post-ReLU maps such as ResNet's layer4), then normalised: w/(Σw + 1e-5) in
    the reference mode (emd_utils.py), exactly to sum 1 otherwise, since a balanced transport
    problem needs equal masses on both sides (uniform where a side has no positive weight).
    """
    if uniform:
        full = torch.full_like(query_w, 1.0 / query_w.shape[-1])
        return full, full.clone()
    out = []
    for w in (exemplar_w, query_w):
        w = w.clamp(min=0)
        total = w.sum(-1, keepdim=True)
        if reference:
            w = w / (total + 1e-5)
        else:
            w = torch.where(total > 0, w / total.clamp(min=1e-300), 1.0 / w.shape[-1])
        out.append(w)
    return out[0], out[1]


def sinkhorn_reference(
    kernel: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    threshold: float = REFERENCE_THRESHOLD,
    max_iter: int = REFERENCE_MAX_ITER,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's loosely stopped Sinkhorn, for a batch of queries at once.

    `kernel` (B, P, S, M), `u` (B, P, S), `v` (B, P, M): the P pairs of each query share one
    stopping test, mean over all P·S entries of |r − r_prev| < `threshold`. Returns (plans
    (B, P, S, M), iterations per query (B,)); a query at `max_iter` iterations counts as not
    converged, as `if i == 99` in the reference (even if its last step met the threshold).
    """
    r, c = torch.ones_like(u), torch.ones_like(v)
    kt = kernel.transpose(-1, -2)
    iterations = torch.zeros(u.shape[0], dtype=torch.long, device=u.device)
    active = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
    for _ in range(max_iter):
        r_new = u / (kernel @ c.unsqueeze(-1)).squeeze(-1)
        c_new = v / (kt @ r_new.unsqueeze(-1)).squeeze(-1)
        err = (r_new - r).abs().mean(dim=(1, 2))
        keep = active[:, None, None]
        r, c = torch.where(keep, r_new, r), torch.where(keep, c_new, c)
        iterations += active.long()
        active = active & ~(err < threshold)
        if not bool(active.any()):
            break
    return r.unsqueeze(-1) * kernel * c.unsqueeze(-2), iterations


def sinkhorn(
    kernel: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    tol: float = 1e-9,
    max_iter: int = 20000,
    check_every: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sinkhorn iterated until every pair's row marginal is within `tol` (L1) of u, in float64.

    Returns (plans (B, P, S, M) in float64, iterations per query (B,), the most any of its
    pairs needed).
    """
    kernel, u, v = kernel.double(), u.double(), v.double()
    kt = kernel.transpose(-1, -2)
    r, c = torch.ones_like(u), torch.ones_like(v)
    iterations = torch.full((u.shape[0],), max_iter, dtype=torch.long, device=u.device)
    done = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
    for i in range(1, max_iter + 1):
        r = u / (kernel @ c.unsqueeze(-1)).squeeze(-1)
        c = v / (kt @ r.unsqueeze(-1)).squeeze(-1)
        if i % check_every and i != max_iter:
            continue
        rows = r * (kernel @ c.unsqueeze(-1)).squeeze(-1)
        ok = ((rows - u).abs().sum(-1) < tol).all(dim=1)
        newly = ok & ~done
        iterations[newly] = i
        done |= ok
        if bool(done.all()):
            break
    if not bool(done.all()):
        log.warning(
            "converged Sinkhorn: %d of %d queries still off by more than %g after %d iterations",
            int((~done).sum()),
            len(done),
            tol,
            max_iter,
        )
    return r.unsqueeze(-1) * kernel * c.unsqueeze(-2), iterations


def exact_plans(cost: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact EMD plans through POT's network simplex (`ot.emd`), pair by pair, float64."""
    import ot

    c = cost.detach().double().cpu().numpy()
    a, b = u.detach().double().cpu().numpy(), v.detach().double().cpu().numpy()
    plans = np.empty_like(c)
    for idx in np.ndindex(*c.shape[:-2]):
        ai, bi = a[idx], b[idx]
        plans[idx] = ot.emd(ai / ai.sum(), bi / bi.sum(), np.ascontiguousarray(c[idx]))
    return torch.from_numpy(plans).to(cost.device)


def top_cell_scores(
    plans: torch.Tensor, cosines: torch.Tensor, k: int = TOP_CELLS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ T·cos over the `k` cells with the largest T, and those cells' flat indices s·R + m.

    Shapes: plans, cosines (…, S, M) -> scores (…), cells (…, k).
    """
    t = plans.flatten(-2)
    cells = torch.topk(t, k, dim=-1).indices
    scores = (t.gather(-1, cells) * cosines.flatten(-2).to(t.dtype).gather(-1, cells)).sum(-1)
    return scores.float(), cells


@dataclass
class EMDResult:
    """Scores (B, N) of the N exemplars, the top transport cells (B, N, k) as flat indices
    s·R + m (exemplar patch s, query patch m), and solver iterations per query (B,)."""

    scores: torch.Tensor
    cells: torch.Tensor
    iterations: torch.Tensor


def emd_corr_scores(
    query_maps: torch.Tensor,
    exemplar_maps: torch.Tensor,
    *,
    solver: str = "reference",
    uniform: bool = False,
    epsilon: float = EPSILON,
    top_cells: int = TOP_CELLS,
) -> EMDResult:
    """EMD-Corr scores of N exemplars per query: `query_maps` (B, C, h, w), `exemplar_maps`
    (B, N, C, h, w), raw backbone maps. Higher scores are closer.

    In the reference mode the query is prepended to its exemplars (P = N + 1 pairs), because
    the reference's single stopping test includes the query-versus-itself pair.
    """
    if solver not in SOLVERS:
        raise ValueError(f"EMD solver {solver!r}: expected one of {SOLVERS}")
    q = flat(query_maps).float()
    g = flat(exemplar_maps).float()
    reference = solver == "reference"
    if reference:
        g = torch.cat([q.unsqueeze(1), g], dim=1)
    query_w, exemplar_w = cc_weights(q, g)
    cos = patch_cosines(q, g)
    u, v = marginals(query_w, exemplar_w, uniform=uniform, reference=reference)
    if reference:
        kernel = torch.exp(-(1.0 - cos) / epsilon)
        plans, iterations = sinkhorn_reference(kernel, u.to(cos.dtype), v.to(cos.dtype))
        capped = iterations >= REFERENCE_MAX_ITER
        if bool(capped.any()):
            log.warning(
                "reference Sinkhorn: %d of %d queries reached the cap of %d iterations "
                "('Sinkhorn no solutions!' in the reference); their plans are used as they are",
                int(capped.sum()),
                len(capped),
                REFERENCE_MAX_ITER,
            )
        plans, cos = plans[:, 1:], cos[:, 1:]
    elif solver == "sinkhorn":
        kernel = torch.exp(-(1.0 - cos.double()) / epsilon)
        plans, iterations = sinkhorn(kernel, u, v)
    else:
        plans = exact_plans(1.0 - cos, u, v)
        iterations = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    scores, cells = top_cell_scores(plans, cos, top_cells)
    return EMDResult(scores, cells, iterations)
