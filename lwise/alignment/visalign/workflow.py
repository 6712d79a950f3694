"""What rules/visalign.smk asks of the config (standard library only): which datasets and
models run, the seeds, each job's settings and paths, and what `rule all` builds; and which of
the section's settings the alignment evaluation's abstention method reads (rules/evaluate.smk).

Paths under results/<ds>/visalign/: `testset/` (dirmap.csv and, when synthetic, images/),
`models/<model>/seed<seed>/` (trained baselines), `scores/<model>_seed<seed>.csv`, and
`alignment_<human|synthetic>/` (tables, figures, submissions/).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Keys of the section that the scoring jobs read: changing a cost reruns only the report.
SCORING_KEYS = ("rule", "methods", "odin", "mds", "knn", "tapudd", "mcdropout", "batch_size")
REPORT_KEYS = ("rule", "methods", "costs")


class VisAlignWorkflowError(ValueError):
    """The visalign section does not fit the datasets or itself; the message names the key."""


def section(config: Mapping) -> Mapping:
    return config["visalign"]


def datasets(config: Mapping, all_datasets: Sequence[str]) -> list[str]:
    """The datasets VisAlign runs on (`visalign.datasets`; null: all, []: none)."""
    chosen = section(config)["datasets"]
    if chosen is None:
        return list(all_datasets)
    unknown = [d for d in chosen if d not in all_datasets]
    if unknown:
        raise VisAlignWorkflowError(f"config visalign.datasets: unknown dataset(s) {unknown}")
    return list(chosen)


def models(config: Mapping) -> dict[str, Mapping]:
    """Model name -> entry: `{guide: true}` (the dataset's guide model) or `{arch, seeds,
    train}` (a baseline trained per seed)."""
    out = {}
    for name, entry in section(config)["models"].items():
        if bool(entry.get("guide")) == bool(entry.get("arch")):
            raise VisAlignWorkflowError(
                f"config visalign.models.{name}: give either 'guide: true' or 'arch'"
            )
        out[name] = entry
    return out


def seeds(config: Mapping, model: str, guide_train: Mapping) -> list[int]:
    """The seeds of `model`; the guide model has one, its training seed."""
    entry = models(config)[model]
    if entry.get("guide"):
        return [int(guide_train.get("seed", 0))]
    return [int(s) for s in entry["seeds"]]


def testset_kind(config: Mapping, dataset: str) -> str:
    """ "visalign" for a dataset in VisAlign's layout (open test set), else "synthetic"."""
    definer = config["datasets"][dataset]["definer"]
    return "visalign" if definer["type"] == "visalign" else "synthetic"


def source(config: Mapping, dataset: str) -> str:
    return "human" if testset_kind(config, dataset) == "visalign" else "synthetic"


def testset_input(config: Mapping, dataset: str) -> str:
    if testset_kind(config, dataset) == "visalign":
        return f"results/{dataset}/raw"
    return f"results/{dataset}/imagefolder"


def definer_options(config: Mapping, dataset: str) -> dict:
    return dict(config["datasets"][dataset]["definer"].get("options", {}))


def train_settings(config: Mapping, model: str, seed: int | str, guide_train: Mapping) -> dict:
    """TrainConfig fields of one baseline: the dataset's guide training settings (image size,
    normalisation, loader), made non-adversarial and from scratch, then the section's `train`
    (every baseline's, e.g. VisAlign's optimizer), the model's own `train` entries, its
    architecture and the seed."""
    entry = models(config)[model]
    if entry.get("guide"):
        raise VisAlignWorkflowError(f"visalign model {model!r} is the guide model: not trained")
    base = {k: v for k, v in guide_train.items() if k not in ("init_checkpoint", "freeze")}
    base["adversarial"] = False
    shared = dict(section(config).get("train", {}))
    own = dict(entry.get("train", {}))
    return {**base, **shared, **own, "arch": entry["arch"], "seed": int(seed)}


def model_file(config: Mapping, dataset: str, model: str, seed, guide_model: str) -> str:
    if models(config)[model].get("guide"):
        return guide_model
    return f"results/{dataset}/visalign/models/{model}/seed{seed}/model.pt"


def score_files(config: Mapping, dataset: str, guide_train: Mapping) -> dict[str, dict[str, str]]:
    """Model -> seed -> its scores CSV."""
    return {
        model: {
            str(s): f"results/{dataset}/visalign/scores/{model}_seed{s}.csv"
            for s in seeds(config, model, guide_train)
        }
        for model in models(config)
    }


def evaluation_settings(config: Mapping, method: str) -> dict:
    """The keys of the section that `evaluation.abstention` = `method` reads when it runs the
    guide model: its own settings (e.g. `knn`) and `batch_size`; other methods' settings
    leave the evaluation up to date."""
    return {k: section(config)[k] for k in (method, "batch_size") if k in section(config)}


def scoring_settings(config: Mapping) -> dict:
    return {k: section(config)[k] for k in SCORING_KEYS}


def report_settings(config: Mapping) -> dict:
    return {k: section(config)[k] for k in REPORT_KEYS}


def outputs(config: Mapping, all_datasets: Sequence[str], dataset: str) -> list[str]:
    """What `rule all` builds for `dataset`: the alignment folder."""
    if dataset not in datasets(config, all_datasets) or not models(config):
        return []
    return [f"results/{dataset}/visalign/alignment_{source(config, dataset)}"]


def score_list(config: Mapping, dataset: str, guide_train: Mapping) -> list[str]:
    return [
        p for seeds in score_files(config, dataset, guide_train).values() for p in seeds.values()
    ]


def model_trusted(config: Mapping, model: str, guide_trusted: bool) -> bool:
    """The guide model's `trusted` setting; trained baselines are in our own format."""
    return bool(guide_trusted) if models(config)[model].get("guide") else False
