"""VisAlign results: visual alignment and reliability per model × method × seed × category.

From the test set (`lwise.alignment.visalign.testset`) and each model's scores
(`lwise.alignment.visalign.scoring`), per image: the abstention probability a of each method
under the configured rule (`lwise.alignment.abstention`), the 11-way output
q = [softmax · (1 − a), a] (the 10-class part is always the plain softmax, as in VisAlign's
`evaluate_visual_alignment.py`; for the Deep Ensemble the members' mean under the aligned rule
and the first member's under the reference rules), and the Hellinger distance
H(g, q) = ‖√g − √q‖₂ / √2 to the gold distribution g.

Reliability (VisAlign's README names the score but its repository has no implementation; the
paper follows Effective Reliability, Whitehead et al., ECCV 2022, `facebookresearch/reliable_vqa`):
the decision is the argmax of q (a class wins a tie with abstention); per image +1 when it
equals the gold majority (abstain for Must-Abstain images, the crowd's majority for Uncertain
ones), 0 for abstaining on an image whose majority is a class, −c for any other decision; the
score is the mean over images, for each cost c (`lwise.alignment.metrics.reliability_score`).

`evaluate` writes into one folder (replaced atomically):
- `visalign.csv`: one row per model, method, seed and subset (all images, each group, each
  category): n_images, mean_hellinger, abstain_rate, reliability_c<c>;
- `visalign_seeds.csv`: mean and standard deviation over seeds of the same;
- `visalign_images.csv`: per image and model × method × seed: a, decision, Hellinger;
- `visalign_heatmap.png` (mean Hellinger, model × method, one panel per group) and
  `visalign_reliability.png` (reliability against the cost c);
- `submissions/<model>_<method>_<seed>.json`: the leaderboard file, each test file name mapped
  to its 11 numbers renormalised to sum 1, or null where the model abstains fully
  (`make_leaderboard_submission.py`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lwise.alignment import abstention, metrics
from lwise.alignment.plots import SYNTHETIC_NOTE, _pyplot, save
from lwise.core.atomic import atomic_path, write_csv
from lwise.data import dirmap

__all__ = ["evaluate", "hellinger", "submission"]

log = logging.getLogger(__name__)

ENSEMBLE_SEED = "ensemble"


def hellinger(g: np.ndarray, q: np.ndarray) -> np.ndarray:
    """‖√g − √q‖₂ / √2 per row, as VisAlign computes it, also for the reference's rows with
    a > 1 that are no distributions (`metrics.hellinger` otherwise)."""
    if np.allclose(q.sum(axis=1), 1.0, atol=1e-9):
        return metrics.hellinger(g, q)
    return np.linalg.norm(np.sqrt(g) - np.sqrt(q), axis=1) / np.sqrt(2)


def submission(file_names: Sequence[str], q: np.ndarray) -> dict[str, list[float] | None]:
    """The leaderboard JSON's mapping: q renormalised, or None where the class part is 0."""
    out: dict[str, list[float] | None] = {}
    for name, row in zip(file_names, q, strict=True):
        row = np.clip(row, 0, None)
        out[str(name)] = None if row[:-1].sum() <= 0 else (row / row.sum()).tolist()
    return out


def _read_scores(path: Path, test: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    table = pd.read_csv(path, dtype={"image": str}).set_index("image")
    missing = [f"p_{c}" for c in classes if f"p_{c}" not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: no softmax column(s) {missing} for the test set's classes {classes}; "
            "the model's classes must be the test set's"
        )
    absent = ~test["im_path"].isin(table.index)
    if absent.any():
        raise ValueError(
            f"{path}: no scores for {int(absent.sum())} test image(s), e.g. "
            f"{test.loc[absent, 'im_path'].iloc[0]!r}"
        )
    return table.loc[test["im_path"]]


def _subsets(test: pd.DataFrame):
    yield "all", "all", np.ones(len(test), dtype=bool)
    for group in sorted(test["group"].unique()):
        yield "group", group, (test["group"] == group).to_numpy()
    for cat in sorted(test["category"].unique()):
        yield "category", str(cat), (test["category"] == cat).to_numpy()


class _Scorer:
    def __init__(self, test: pd.DataFrame, classes: list[str], costs, rule: str):
        self.test, self.classes, self.costs, self.rule = test, classes, list(costs), rule
        self.gold = test[[f"gold_{c}" for c in (*classes, "abstain")]].to_numpy(dtype=float)
        self.target = self.gold.argmax(axis=1)  # first maximum: a class beats abstain
        self.rows, self.images, self.outputs = [], [], {}

    def add(self, model: str, method: str, seed, p: np.ndarray, s: np.ndarray) -> None:
        a = abstention.from_collapsed(method, s, self.rule)
        q = abstention.raw_output(p, a)
        h = hellinger(self.gold, q)
        decision = q.argmax(axis=1)
        k = len(self.classes)
        self.outputs[(model, method, str(seed))] = q
        self.images.append(
            pd.DataFrame({
                "image": self.test["im_path"].to_numpy(), "category": self.test["category"],
                "group": self.test["group"], "model": model, "method": method, "seed": str(seed),
                "abstain_probability": a, "decision": decision, "gold_majority": self.target,
                "hellinger": h,
            })
        )  # fmt: skip
        for level, subset, mask in _subsets(self.test):
            rel = metrics.reliability_score(
                decision[mask], self.target[mask], self.costs, abstain=k
            )
            self.rows.append({
                "model": model, "method": method, "seed": str(seed), "level": level,
                "subset": subset, "n_images": int(mask.sum()),
                "mean_hellinger": float(h[mask].mean()),
                "abstain_rate": float((decision[mask] == k).mean()),
                **{f"reliability_c{c:g}": v for c, v in rel.items()},
            })  # fmt: skip


def _column(method: str, rule: str) -> str:
    return f"{method}_{'aligned' if rule == 'aligned' else 'reference'}"


def _ensemble(scorer: _Scorer, model: str, members: dict[str, pd.DataFrame]) -> None:
    seeds = sorted(members, key=lambda s: (len(s), s))
    stack = np.stack([members[s][[f"p_{c}" for c in scorer.classes]].to_numpy() for s in seeds], 1)
    rule = "aligned" if scorer.rule == "aligned" else "reference"
    p = stack.mean(axis=1) if rule == "aligned" else stack[:, 0]
    outputs = abstention.ModelOutputs(p, raw={"deepensemble": stack})
    scorer.add(
        model, "deepensemble", ENSEMBLE_SEED, p, abstention.collapse("deepensemble", outputs, rule)
    )


def _seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    keys = ["model", "method", "level", "subset"]
    values = [c for c in table.columns if c == "mean_hellinger" or c.startswith("reliability_")]
    grouped = table.groupby(keys, sort=False)[values]
    out = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_sd"))
    out.insert(0, "n_seeds", table.groupby(keys, sort=False).size())
    return out.reset_index()


def _figures(summary: pd.DataFrame, costs, synthetic: bool):
    plt = _pyplot()
    note = f" {SYNTHETIC_NOTE}" if synthetic else ""
    groups = summary[summary["level"] == "group"]
    names = sorted(groups["subset"].unique())
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        grid = groups[groups["subset"] == name].pivot(
            index="model", columns="method", values="mean_hellinger_mean"
        )
        im = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis_r")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=45, ha="right")
        ax.set_yticks(range(grid.shape[0]), grid.index)
        for (i, j), v in np.ndenumerate(grid.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_title(name)
    fig.subplots_adjust(wspace=0.45, bottom=0.3)
    fig.colorbar(im, ax=axes[0].tolist(), label="mean Hellinger distance (lower: aligned)")
    fig.suptitle(f"VisAlign: visual alignment{note}")
    heat = fig
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.5), squeeze=False)
    cols = [f"reliability_c{c:g}_mean" for c in costs]
    for ax, name in zip(axes[0], ["all", *names], strict=True):
        part = summary[(summary["subset"] == name) & summary["level"].isin(["all", "group"])]
        for _, r in part.iterrows():
            ax.plot(list(costs), r[cols].to_numpy(dtype=float), marker="o", ms=3,
                    label=f"{r['model']} {r['method']}")  # fmt: skip
        ax.set_xlabel("cost c of a wrong answer")
        ax.set_title(name)
    axes[0][0].set_ylabel("reliability (mean per image)")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(f"VisAlign: reliability{note}")
    fig.tight_layout()
    return heat, fig


def evaluate(
    test_dirmap_csv: str | os.PathLike,
    scores: Mapping[str, Mapping[str, str | os.PathLike]],
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str],
    rule: str,
    costs: Sequence[float],
) -> pd.DataFrame:
    """`scores`: model name -> seed -> that model's scores CSV. Writes the outputs listed in
    the module docstring; returns the per-seed table. The Deep Ensemble of a model combines its
    seeds (a model with one seed has none)."""
    test = dirmap.read(test_dirmap_csv)
    gold = [c for c in test.columns if c.startswith("gold_")]
    classes = [c.removeprefix("gold_") for c in gold if c != "gold_abstain"]
    synthetic = bool(test["synthetic"].astype(str).str.lower().eq("true").any())
    scorer = _Scorer(test, classes, costs, rule)
    for model, seeds in scores.items():
        tables = {str(s): _read_scores(Path(p), test, classes) for s, p in seeds.items()}
        for seed, table in tables.items():
            p = table[[f"p_{c}" for c in classes]].to_numpy(dtype=float)
            for method in methods:
                if method == "deepensemble":
                    continue
                column = _column(method, rule)
                if column not in table.columns:
                    raise ValueError(f"{seeds[seed]}: no column {column!r} (method {method!r})")
                scorer.add(model, method, seed, p, table[column].to_numpy(dtype=float))
        if "deepensemble" in methods:
            if len(tables) < 2:
                log.info("%s: one seed, so no Deep Ensemble", model)
            else:
                _ensemble(scorer, model, tables)
    table = pd.DataFrame(scorer.rows)
    table["rule"], table["synthetic"] = rule, synthetic
    summary = _seed_summary(table.drop(columns=["rule", "synthetic"]))
    summary["rule"], summary["synthetic"] = rule, synthetic
    images = pd.concat(scorer.images, ignore_index=True)
    labels = np.asarray([*classes, "abstain"], dtype=object)
    images["decision"] = labels[images["decision"]]
    images["gold_majority"] = labels[images["gold_majority"]]
    images["synthetic"] = synthetic
    heat, curves = _figures(summary, costs, synthetic)
    with atomic_path(out_dir, directory=True) as tmp:
        (tmp / "submissions").mkdir(parents=True)
        write_csv(table, tmp / "visalign.csv")
        write_csv(summary, tmp / "visalign_seeds.csv")
        write_csv(images, tmp / "visalign_images.csv")
        save(heat, tmp / "visalign_heatmap.png")
        save(curves, tmp / "visalign_reliability.png")
        for (model, method, seed), q in scorer.outputs.items():
            path = tmp / "submissions" / f"{model}_{method}_{seed}.json"
            path.write_text(json.dumps(submission(test["file_name"].astype(str), q)))
    log.info("VisAlign%s: %d rows written to %s", " " + SYNTHETIC_NOTE if synthetic else "",
             len(table), out_dir)  # fmt: skip
    return table
