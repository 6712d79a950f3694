"""VisAlign's abstention methods run with the model: one model, every configured method.

`model_outputs` loads a model (`lwise.guide.load.load_guide`), fits the distance methods on the
penultimate features of the training split and gives, per image, the plain softmax and each
method's raw scores (`lwise.alignment.abstention.ModelOutputs`); the alignment evaluation's
`visalign` analysis uses it for `evaluation.abstention`. `score_model` (the visalign rules)
writes, per test image, the softmax and each method's collapsed score under the aligned and the
reference rule (`lwise.alignment.abstention`). What each method computes follows VisAlign's
`g_functions/postprocessors/` and `config/ood_postprocessors/` (jiyounglee-0523/VisAlign):

- ODIN (`odin_postprocessor.py`): one step x − ε·sign(∇x CE(logits/T, argmax)) with the sign
  divided per channel by (63.0, 62.1, 66.7)/255, on the normalised input, then softmax of
  logits/T; T = 1000, ε = 0.0014 (`odin.yaml`).
- Mahalanobis (`mds_postprocessor.py`): class means and one shared covariance
  (sklearn EmpiricalCovariance) of the training features; the input step ε = 0.0014 with the
  gradient sign divided by 0.5 per channel towards the closest class; score max over classes
  of −½ (f − μ_c)ᵀ Σ⁻¹ (f − μ_c).
- KNN (`knn_postprocessor.py`): L2-normalised features, −(squared distance to the K-th
  nearest training feature), K = 50; exact, batched (faiss IndexFlatL2 in the reference).
- TAPUDD (`tapudd_postprocessor.py`): GaussianMixture with k = 1…10 components
  (random_state 42) on the training features, per k the Mahalanobis score with the input step,
  averaged over k. As coded, the reference takes the i-th coordinate of component 0's mean as a
  scalar with component 0's precision; `reference_exact` reproduces that, the default scores
  every component with its own mean and precision.
- MC-Dropout (`mcdropout_postprocessor.py`): 5 passes with the dropout layers on. Dropout,
  DropPath and StochasticDepth layers with p > 0 are switched on; a model without any gets
  dropout p (0.5, `mcdropout.yaml`'s otherwise unused `dropout_p`) on the head's input, except
  under `reference_exact`, which calls `net.train()` (BatchNorm on batch statistics) and adds
  nothing, as the reference does.
Features are the head's input (the penultimate layer), except under `reference_exact` for the
ConvNeXt, DenseNet and MLP-Mixer baselines, whose features the reference took from the logits.
The Deep Ensemble needs no pass of its own: its members' softmaxes are the other models'
outputs (`lwise.alignment.visalign.report`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from lwise.alignment import abstention
from lwise.alignment.visalign import baselines
from lwise.core.atomic import write_csv
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide.load import load_guide
from lwise.guide.models import ImageClassifier, head_name

__all__ = ["FEATURE_METHODS", "MODEL_METHODS", "model_outputs", "score_model"]

log = logging.getLogger(__name__)

# Methods computed here; `deepensemble` combines models and `msp` needs only the softmax.
MODEL_METHODS = ("odin", "mds", "knn", "tapudd", "mcdropout")
FEATURE_METHODS = ("mds", "knn", "tapudd")  # fitted on the training split's features
ODIN_DIVISOR = (63.0 / 255.0, 62.1 / 255.0, 66.7 / 255.0)  # odin_postprocessor.py
MDS_DIVISOR = 0.5  # mds_postprocessor.py, tapudd_postprocessor.py
DROPOUT_LIKE = ("Dropout", "DropPath", "StochasticDepth")


class _Net:
    """The model on normalised inputs, returning logits and the features methods use."""

    def __init__(self, model: ImageClassifier, use_logits: bool):
        self.model, self.use_logits = model, use_logits
        self.head = model.net.get_submodule(head_name(model.net))
        self._seen: list[torch.Tensor] = []
        self.head.register_forward_pre_hook(lambda _m, args: self._seen.append(args[0]))

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._seen.clear()
        logits = self.model.net(z)
        feats = logits if self.use_logits else self._seen[-1].flatten(1)
        return logits, feats


def _dataset(df: pd.DataFrame, root: Path, size: int, label: str | None) -> DirmapImages:
    return DirmapImages(df.reset_index(drop=True), root, eval_transform(size), label or "class_num")


def _loader(ds: DirmapImages, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)


def _train_features(net: _Net, loader: DataLoader, device) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    with torch.no_grad():
        for x, y, _ in progress(loader, desc="training features"):
            feats.append(net(net.model.normalize(x.to(device)))[1].double().cpu())
            labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def _step(z: torch.Tensor, loss: torch.Tensor, eps: float, divisor) -> torch.Tensor:
    """One input-preprocessing step: z − ε · sign(∇z loss) / divisor (per channel)."""
    (grad,) = torch.autograd.grad(loss, z)
    sign = (torch.ge(grad, 0).float() - 0.5) * 2
    div = torch.as_tensor(divisor, dtype=z.dtype, device=z.device).reshape(1, -1, 1, 1)
    return (z - eps * sign / div).detach()


def _gauss(f: torch.Tensor, means: torch.Tensor, precisions: torch.Tensor) -> torch.Tensor:
    """−½ (f − μ_j)ᵀ P_j (f − μ_j) for every row of f and every (μ_j, P_j): (n, J).
    `precisions` is (J, d, d), or (d, d) shared by all."""
    diff = f[:, None, :] - means[None]  # (n, J, d)
    if precisions.dim() == 2:
        return -0.5 * torch.einsum("njd,de,nje->nj", diff, precisions, diff)
    return -0.5 * torch.einsum("njd,jde,nje->nj", diff, precisions, diff)


def _gaussian_score(net: _Net, x, eps: float, means, precisions) -> torch.Tensor:
    """Max over Gaussians of the score after the input step towards the closest one."""
    z = net.model.normalize(x).detach().requires_grad_(True)
    f = net(z)[1].double()
    scores = _gauss(f, means, precisions)
    closest = scores.argmax(1)
    pure = scores.gather(1, closest[:, None]).squeeze(1)
    z2 = _step(z, (-pure).mean(), eps, MDS_DIVISOR)
    with torch.no_grad():
        return _gauss(net(z2)[1].double(), means, precisions).max(1).values


class _Fitted:
    """The distance methods' statistics of the training features (float64, on `device`)."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, cfg: Mapping, exact: bool, dev):
        from sklearn.covariance import EmpiricalCovariance
        from sklearn.mixture import GaussianMixture

        self.device, self.cfg, self.exact = dev, cfg, exact
        x, y = feats.numpy(), labels.numpy()
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
        prec = EmpiricalCovariance(assume_centered=False).fit(centred).precision_
        self.mds = (torch.as_tensor(means, device=dev), torch.as_tensor(prec, device=dev))
        normed = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.train_normed = normed.to(dev)
        self.gmms = []
        for k in range(1, int(cfg["tapudd"]["components"]) + 1):
            gmm = GaussianMixture(n_components=k, random_state=42).fit(x)
            mu = torch.as_tensor(gmm.means_, device=dev)
            p = torch.as_tensor(gmm.precisions_, device=dev)
            if exact:  # the i-th coordinate of component 0's mean, with component 0's precision
                if k > x.shape[1]:
                    raise ValueError(f"tapudd reference_exact: {k} components > {x.shape[1]} dims")
                mu = mu[0, :k, None].expand(k, x.shape[1]).contiguous()
                p = p[0]
            self.gmms.append((mu, p))


def _knn(fitted: _Fitted, f: torch.Tensor, k: int) -> torch.Tensor:
    bank = fitted.train_normed
    if k > len(bank):
        raise ValueError(f"knn: K={k} but only {len(bank)} training images")
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    d2 = (f * f).sum(1, keepdim=True) + (bank * bank).sum(1)[None] - 2 * f @ bank.T
    return -d2.clamp_min(0).topk(k, dim=1, largest=False).values[:, -1]


@contextlib.contextmanager
def _dropout_on(net: _Net, p: float, exact: bool):
    """Dropout-like layers on for MC passes (see the module docstring); restores eval mode."""
    model = net.model
    if exact:
        model.train()
    layers = [
        m for m in model.modules()
        if m.__class__.__name__.startswith(DROPOUT_LIKE)
        and float(getattr(m, "p", getattr(m, "drop_prob", 0.0)) or 0.0) > 0
    ]  # fmt: skip
    for m in layers:
        m.train()
    handle = None
    if not layers and not exact:
        log.info("mcdropout: no dropout layer with p > 0; dropout p=%g on the head's input", p)
        handle = net.head.register_forward_pre_hook(
            lambda _m, args: (nn.functional.dropout(args[0], p, training=True),)
        )
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
        model.eval()


def _batch_raw(net: _Net, fitted: _Fitted | None, x, methods, cfg, exact: bool) -> dict:
    out: dict[str, Any] = {}
    if "odin" in methods:
        t, eps = float(cfg["odin"]["temperature"]), float(cfg["odin"]["noise"])
        z = net.model.normalize(x).detach().requires_grad_(True)
        logits = net(z)[0].float()
        loss = nn.functional.cross_entropy(logits / t, logits.detach().argmax(1))
        with torch.no_grad():
            out["odin"] = torch.softmax(net(_step(z, loss, eps, ODIN_DIVISOR))[0].float() / t, 1)
    if "mds" in methods:
        out["mds"] = _gaussian_score(net, x, float(cfg["mds"]["noise"]), *fitted.mds)
    if "tapudd" in methods:
        eps = float(cfg["tapudd"]["noise"])
        scores = [_gaussian_score(net, x, eps, mu, p) for mu, p in fitted.gmms]
        out["tapudd"] = torch.stack(scores, 1).mean(1)
    with torch.no_grad():
        if "knn" in methods:
            feats = net(net.model.normalize(x))[1].double()
            out["knn"] = _knn(fitted, feats, int(cfg["knn"]["k"]))
        if "mcdropout" in methods:
            m = cfg["mcdropout"]
            with _dropout_on(net, float(m["p"]), exact):
                passes = [torch.softmax(net(net.model.normalize(x))[0].float(), 1)
                          for _ in range(int(m["passes"]))]  # fmt: skip
            out["mcdropout"] = torch.stack(passes, 1)
    return {k: v.detach().double().cpu().numpy() for k, v in out.items()}


def model_outputs(
    model_path: str | os.PathLike,
    train_dirmap_csv: str | os.PathLike,
    images: pd.DataFrame,
    root: str | os.PathLike,
    *,
    methods: Sequence[str],
    settings: Mapping[str, Any],
    rule: str,
    trusted: bool,
    workers: int = 0,
    device: str | None = None,
) -> tuple[abstention.ModelOutputs, list[str]]:
    """Run the model at `model_path` over `images` (dirmap rows, `im_path` relative to `root`):
    the plain softmax and the raw scores of every method in `methods` that needs the model
    (`msp` needs only the softmax; `deepensemble` combines models, see the module docstring),
    in row order, and the model's class names.

    The distance methods fit on the features of the `train` rows of `train_dirmap_csv`.
    `settings`: the `visalign` section's method settings (odin, mds, knn, tapudd, mcdropout,
    batch_size; `lwise.alignment.visalign.settings.VisAlignConfig.method_settings`).
    `rule == "reference_exact"` switches on the reference's model-side quirks. Raises
    ValueError naming the file when a method cannot run (no training rows, K above their
    number).
    """
    methods = [m for m in methods if not abstention.ABSTENTION[m].ensemble]
    exact = rule == "reference_exact"
    train_df = dirmap.read(train_dirmap_csv)
    train_df = train_df[train_df["split"] == "train"]
    fit = sorted(set(methods) & set(FEATURE_METHODS))
    if fit and train_df.empty:
        raise ValueError(
            f"{train_dirmap_csv}: no 'train' rows; {', '.join(fit)} fit on the penultimate "
            "features of the training split"
        )
    guide = load_guide(
        model_path, trusted=trusted, device=device, fast=False,
        dirmap=train_df if not train_df.empty else None,
    )  # fmt: skip
    model = guide.model.float().eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    use_logits = exact and baselines.family(model.arch) in baselines.LOGIT_FEATURE_FAMILIES
    net = _Net(model, use_logits)
    size, bs = guide.input_size, int(settings["batch_size"])
    fitted = None
    if fit:
        train_ds = _dataset(train_df, Path(train_dirmap_csv).parent, size, guide.label_column)
        feats, labels = _train_features(net, _loader(train_ds, bs, workers), guide.device)
        log.info("fitting on %d training features of dimension %d", *feats.shape)
        fitted = _Fitted(feats, labels, settings, exact, guide.device)
    test_ds = _dataset(images, Path(root), size, None)
    torch.manual_seed(0)  # MC-Dropout's masks: the same scores on every run
    probs, raw = [], {m: [] for m in methods if abstention.ABSTENTION[m].needs_model}
    for x, _, _ in progress(_loader(test_ds, bs, workers), desc=f"scoring {', '.join(methods)}"):
        x = x.to(guide.device)
        with torch.no_grad():
            probs.append(torch.softmax(net(model.normalize(x))[0].double(), 1).cpu().numpy())
        for name, value in _batch_raw(net, fitted, x, raw, settings, exact).items():
            raw[name].append(value)
    outputs = abstention.ModelOutputs(
        np.concatenate(probs), raw={k: np.concatenate(v) for k, v in raw.items()}
    )
    return outputs, guide.class_names or [str(i) for i in range(guide.num_classes)]


def score_model(
    model_path: str | os.PathLike,
    train_dirmap_csv: str | os.PathLike,
    test_dirmap_csv: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    methods: Sequence[str],
    settings: Mapping[str, Any],
    rule: str,
    trusted: bool,
    workers: int = 0,
    device: str | None = None,
) -> pd.DataFrame:
    """Score every test image with every method in `methods` (`deepensemble` is left to the
    report, which combines models); write `out_csv`: `image` (the test dirmap's im_path),
    `p_<k>` (the plain softmax, class order of the model) and per method `<method>_aligned`
    and `<method>_reference` (the collapsed scores, `lwise.alignment.abstention.collapse`).

    `settings` and `rule` as in `model_outputs`.
    """
    methods = [m for m in methods if not abstention.ABSTENTION[m].ensemble]
    test = dirmap.read(test_dirmap_csv)
    outputs, names = model_outputs(
        model_path, train_dirmap_csv, test, Path(test_dirmap_csv).parent, methods=methods,
        settings=settings, rule=rule, trusted=trusted, workers=workers, device=device,
    )  # fmt: skip
    table = pd.DataFrame({"image": test["im_path"].to_numpy()})
    for i, name in enumerate(names):
        table[f"p_{name}"] = outputs.probs[:, i]
    for m in methods:
        table[f"{m}_aligned"] = abstention.collapse(m, outputs, "aligned")
        table[f"{m}_reference"] = abstention.collapse(m, outputs, "reference")
    write_csv(table, out_csv)
    log.info("%s: %d test images scored with %s", out_csv, len(table), ", ".join(methods))
    return table
