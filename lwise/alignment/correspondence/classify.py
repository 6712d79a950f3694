"""The per-dataset evaluation: the guide model's softmax, kNN, EMD-Corr and CHM-Corr on the test
split (the validation split when a dataset has none), with per-image predictions, confidences,
the 20 voting exemplars, and explanation figures.

The exemplars are the training split, through the feature cache (`features.FeatureBank`) that
`build_features` writes once per dataset and model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lwise.alignment.correspondence import chm, emd, knn
from lwise.alignment.correspondence.explain import (
    Explanation,
    chm_pairs,
    emd_pairs,
    plot_explanations,
)
from lwise.alignment.correspondence.features import (
    ExemplarMaps,
    FeatureBank,
    FeatureCacheError,
    build_bank,
    file_sha256,
    image_loader,
    spatial_features,
)
from lwise.alignment.correspondence.teams import proportion_interval
from lwise.core.atomic import write_csv
from lwise.data import dirmap
from lwise.guide.load import load_guide

log = logging.getLogger(__name__)

METHODS = ("guide", "knn", "emd_corr", "chm_corr")


@dataclass
class Settings:
    """The `correspondence` config section (defaults: the reference's, see knn/emd/chm)."""

    shortlist: int = knn.SHORTLIST
    voters: int = knn.VOTERS
    emd_solver: str = "reference"
    uniform_weights: bool = False
    epsilon: float = emd.EPSILON
    top_cells: int = emd.TOP_CELLS
    chm_threshold: float = chm.THRESHOLD
    chm_top: int = chm.TOP
    matcher: str = "mnn"
    matcher_file: str | None = None
    matcher_options: dict = field(default_factory=dict)
    batch_size: int = 32
    feature_batch_size: int = 256
    max_map_cache_mb: float = 4096
    explain_queries: int = 4
    explain_exemplars: int = 5
    max_queries: int | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, cfg: dict) -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown correspondence setting(s) {unknown}; known: {sorted(known)}")
        settings = cls(**cfg)
        if settings.emd_solver not in emd.SOLVERS:
            raise ValueError(f"emd_solver {settings.emd_solver!r}: expected one of {emd.SOLVERS}")
        if not 1 <= settings.voters <= settings.shortlist:
            raise ValueError(
                f"voters {settings.voters} must be in 1..shortlist {settings.shortlist}"
            )
        return settings


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_guide_model(model_path, df: pd.DataFrame, *, trusted: bool, dev: torch.device):
    """(model in eval mode on `dev`, label column, input size) through the guide entry point.

    The float32 model, not the fast copy: patch cosines and the reference Sinkhorn are compared
    with the reference's float32 numbers."""
    guide = load_guide(model_path, trusted=trusted, device=dev, fast=False, dirmap=df)
    return guide.model, guide.label_column, guide.input_size


def build_features(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    trusted: bool = False,
    batch_size: int = 256,
    max_map_cache_mb: float = 4096,
    workers: int = 0,
) -> FeatureBank:
    """Write the exemplar feature cache (training split) of a dataset under a model."""
    df = dirmap.read(dirmap_csv)
    dev = device()
    model, label, size = load_guide_model(model_path, df, trusted=trusted, dev=dev)
    bank = build_bank(
        model,
        df,
        Path(dirmap_csv).parent,
        split="train",
        label_column=label,
        image_size=size,
        model_sha256=file_sha256(model_path),
        device=dev,
        batch_size=batch_size,
        workers=workers,
        max_map_cache_mb=max_map_cache_mb,
    )
    bank.save(out_path)
    return bank


def query_split(df: pd.DataFrame, csv) -> tuple[str, str]:
    """("test", "") or ("val", why): the split evaluated and a note when it is not the test."""
    present = set(df["split"])
    if "test" in present:
        return "test", ""
    if "val" in present:
        note = f"{csv} has no test split: the validation split is evaluated instead"
        log.warning(note)
        return "val", note
    raise ValueError(f"{csv} has neither a test nor a val split to evaluate")


def _class_name(names: dict[int, str], i: int) -> str:
    return names.get(int(i), str(int(i)))


def evaluate(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    features_path: str | os.PathLike,
    out_accuracy: str | os.PathLike,
    out_predictions: str | os.PathLike,
    out_explanations: str | os.PathLike,
    *,
    trusted: bool = False,
    workers: int = 0,
    settings: Settings | dict | None = None,
) -> pd.DataFrame:
    """Classify the test (else val) images four ways; write accuracy, per-image predictions and
    the explanation figure. Returns the accuracy table."""
    s = settings if isinstance(settings, Settings) else Settings.from_dict(settings or {})
    df = dirmap.read(dirmap_csv)
    dev = device()
    model, label, size = load_guide_model(model_path, df, trusted=trusted, dev=dev)
    bank = FeatureBank.load(features_path, model_path)
    if (bank.label_column, bank.image_size) != (label, size):
        raise FeatureCacheError(
            f"{features_path} holds {bank.label_column!r} labels at {bank.image_size} px; the "
            f"model needs {label!r} at {size} px: rebuild the cache"
        )
    if len(bank.im_paths) < s.shortlist:
        raise ValueError(
            f"{dirmap_csv}: {len(bank.im_paths)} training images, fewer than the shortlist of "
            f"{s.shortlist}; lower correspondence.shortlist"
        )
    split, note = query_split(df, dirmap_csv)
    queries = df[df["split"] == split].reset_index(drop=True)
    if s.max_queries is not None and len(queries) > s.max_queries:
        queries = queries.sample(s.max_queries, random_state=s.seed).reset_index(drop=True)
    names = dict(zip(df[label].astype(int), df["class"].astype(str), strict=False))
    num_classes = max(int(model.num_classes), int(bank.labels.max()) + 1)
    matcher = chm.get_matcher(s.matcher, s.matcher_file, s.matcher_options)
    matcher_note = (
        f"matcher from {s.matcher_file}"
        if s.matcher_file
        else "matcher: mutual nearest neighbours of backbone patches (CHMNet weights unavailable)"
    )
    exemplars = ExemplarMaps(bank, model, dev)
    bank_pooled = bank.pooled.to(dev)
    bank_labels = bank.labels.to(dev)
    rng = np.random.default_rng(s.seed)
    sample = set(
        rng.choice(len(queries), min(s.explain_queries, len(queries)), replace=False).tolist()
    )
    loader = image_loader(queries, Path(dirmap_csv).parent, size, label, s.batch_size, workers)
    out: dict[str, list] = {"pred": [], "conf": [], "voters": []}
    records: dict[str, dict[str, list]] = {m: {k: [] for k in out} for m in METHODS}
    iterations: list[torch.Tensor] = []
    explanations: list[Explanation] = []
    offset = 0
    with torch.no_grad():
        for x, y, _ in loader:
            x = x.to(dev)
            maps = spatial_features(model, x).float()
            probs = model(x).float().softmax(1)
            conf, pred = probs.max(1)
            records["guide"]["pred"].append(pred.cpu())
            records["guide"]["conf"].append(conf.cpu())
            pooled = torch.nn.functional.normalize(maps.mean(dim=(2, 3)), dim=1)
            _, idx = knn.shortlist(pooled, bank_pooled, s.shortlist)
            labels = bank_labels[idx]

            def vote(order, method, idx=idx, labels=labels):
                top = order[:, : s.voters]
                p, v = knn.majority_vote(labels.gather(1, top), num_classes)
                records[method]["pred"].append(p.cpu())
                records[method]["conf"].append(v.cpu().float() / s.voters)
                records[method]["voters"].append(idx.gather(1, top).cpu())

            knn_order = torch.arange(s.shortlist, device=dev).expand_as(idx)
            vote(knn_order, "knn")
            ex_maps = exemplars(idx)
            res = emd.emd_corr_scores(
                maps,
                ex_maps,
                solver=s.emd_solver,
                uniform=s.uniform_weights,
                epsilon=s.epsilon,
                top_cells=s.top_cells,
            )
            iterations.append(res.iterations.cpu())
            emd_order = knn.rerank(res.scores)
            vote(emd_order, "emd_corr")
            images = (x, exemplars.images(idx)) if matcher.needs_images else (None, None)
            points = matcher.match(maps, ex_maps, *images)
            cscores, cells, mask, cos = chm.chm_corr_scores(
                maps, ex_maps, points, threshold=s.chm_threshold, top=s.chm_top
            )
            chm_order = knn.rerank(cscores)
            vote(chm_order, "chm_corr")
            grid = tuple(maps.shape[-2:])
            for b in range(x.shape[0]):
                if offset + b not in sample:
                    continue
                for method, order, scores in (
                    ("EMD-Corr", emd_order, res.scores),
                    ("CHM-Corr", chm_order, cscores),
                ):
                    top = order[b, : s.explain_exemplars]
                    rows = idx[b, top]
                    if method == "EMD-Corr":
                        pairs = [emd_pairs(res.cells[b, j], grid[0] * grid[1]) for j in top]
                    else:
                        pairs = [
                            chm_pairs(cos[b, j], cells[b, j], mask[b, j], s.chm_top) for j in top
                        ]
                    key = "emd_corr" if method == "EMD-Corr" else "chm_corr"
                    explanations.append(
                        Explanation(
                            method=method,
                            query=x[b].cpu(),
                            query_label=_class_name(names, y[b]),
                            prediction=_class_name(names, records[key]["pred"][-1][b]),
                            exemplars=list(exemplars.images(rows).cpu()),
                            exemplar_labels=[_class_name(names, bank.labels[r]) for r in rows],
                            pairs=pairs,
                            grid=grid,
                            scores=[float(scores[b, j]) for j in top],
                        )
                    )
            offset += x.shape[0]
    truth = queries[label].astype(int).to_numpy()
    table = queries[["im_path", "class", label]].rename(columns={label: "label"})
    table.insert(0, "split", split)
    summary = []
    solver_note = f"solver {s.emd_solver}, {'uniform' if s.uniform_weights else 'CC'} weights"
    its = torch.cat(iterations)
    if s.emd_solver != "exact":
        solver_note += f", iterations median {int(its.median())} max {int(its.max())}"
    if s.emd_solver == "reference":
        solver_note += f", {int((its >= emd.REFERENCE_MAX_ITER).sum())} queries at the cap"
    details = {"guide": "softmax of the guide model", "knn": f"top {s.voters} of pooled features"}
    details |= {"emd_corr": solver_note, "chm_corr": matcher_note}
    for method in METHODS:
        pred = torch.cat(records[method]["pred"]).numpy()
        table[f"{method}_pred"] = pred
        table[f"{method}_confidence"] = torch.cat(records[method]["conf"]).numpy()
        table[f"{method}_correct"] = pred == truth
        if records[method]["voters"]:
            voters = torch.cat(records[method]["voters"]).tolist()
            table[f"{method}_exemplars"] = [";".join(bank.im_paths[i] for i in v) for v in voters]
        correct = int((pred == truth).sum())
        low, high = proportion_interval(correct, len(pred))
        summary.append(
            {
                "method": method,
                "split": split,
                "n": len(pred),
                "correct": correct,
                "accuracy": correct / len(pred),
                "ci_low": low,
                "ci_high": high,
                "detail": "; ".join(filter(None, [details[method], note])),
            }
        )
    if s.emd_solver != "exact":
        table["emd_corr_iterations"] = its.numpy()
    table["im_path"] = dirmap.relative_to(
        table["im_path"].map(lambda p: str(Path(dirmap_csv).parent / p)),
        Path(out_predictions).parent,
    )
    accuracy = pd.DataFrame(summary)
    write_csv(table, out_predictions)
    write_csv(accuracy, out_accuracy)
    plot_explanations(explanations, out_explanations)
    for row in summary:
        log.info("%s accuracy on %s: %.4f (n=%d)", row["method"], split, row["accuracy"], row["n"])
    return accuracy
