"""VisAlign with models: the baselines, the seven methods on a model trained here, the DAG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_workflow, tiny_config
from test_workflow_dag import planned_jobs

from lwise.alignment.visalign import baselines, scoring
from lwise.alignment.visalign.settings import VisAlignConfig
from lwise.alignment.visalign.testset import build_testset
from lwise.data import dirmap
from lwise.guide.models import build_model, head_name

SMALL = {"synthetic": {"per_category": 10}, "knn": {"k": 10}, "tapudd": {"components": 2}}


@pytest.mark.parametrize("arch", [a for a in baselines.BASELINES if a.endswith("_tiny")])
def test_tiny_baselines_build_and_run_at_32_px(arch):
    model = build_model(arch, 10, [0.5] * 3, [0.25] * 3).eval()
    head = model.net.get_submodule(head_name(model.net))
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and head.out_features == 10
    assert baselines.family(arch) in ("vit", "swin", "convnext", "densenet", "mixer")


def test_paper_sizes_are_registered_as_named_in_the_paper():
    for name in ("vit_30_16", "swin_extra", "convnext_extra", "densenet_extra", "mlp"):
        assert name in baselines.BASELINES
    assert set(baselines.LOGIT_FEATURE_FAMILIES) == {"convnext", "densenet", "mixer"}


@pytest.fixture(scope="module")
def scored(digits_folder, digits_model, tmp_path_factory):
    """The synthetic test set of the digits and every method's scores, both rules."""
    out = tmp_path_factory.mktemp("visalign")
    cfg = VisAlignConfig.from_config(SMALL)
    test = build_testset("synthetic", digits_folder, out / "testset", synthetic=cfg.synthetic)
    tables = {}
    # reference_exact changes the model-side computation of these methods only (and MC passes).
    for rule, methods in (("aligned", cfg.methods), ("reference_exact", ("msp", "knn", "tapudd"))):
        tables[rule] = scoring.score_model(
            digits_model, digits_folder / "dirmap.csv", out / "testset" / "dirmap.csv",
            out / f"{rule}.csv", methods=methods, settings=cfg.method_settings(), rule=rule,
            trusted=False, device="cpu",
        )  # fmt: skip
    return test, tables


def test_synthetic_test_set_is_marked_and_has_three_groups(scored):
    test, _ = scored
    assert test["synthetic"].all()
    assert test.groupby("group").size().to_dict() == {
        "Must-Abstain": 10, "Must-Act": 10, "Uncertain": 10,
    }  # fmt: skip
    gold = test[[c for c in test.columns if c.startswith("gold_")]].to_numpy()
    assert np.allclose(gold.sum(1), 1)
    assert (test.loc[test["category"] == 4, "class"] == "abstain").all()


@pytest.mark.parametrize("method", ["mds", "knn", "tapudd"])
def test_distance_methods_score_far_images_as_far(scored, method):
    test, tables = scored
    u = tables["aligned"].set_index("image")[f"{method}_aligned"]
    cat = test.set_index("im_path").loc[u.index, "category"]
    # Generated images of no digit lie farther from the training features than real digits.
    assert u[cat == 4].median() > u[cat == 1].median()
    assert (u[cat == 4].to_numpy()[:, None] > u[cat == 1].to_numpy()[None]).mean() > 0.8


@pytest.mark.parametrize("method", ["msp", "odin", "mcdropout"])
def test_probability_methods_are_less_sure_of_corrupted_digits(scored, method):
    test, tables = scored
    u = tables["aligned"].set_index("image")[f"{method}_aligned"]
    cat = test.set_index("im_path").loc[u.index, "category"]
    assert u[cat == 8].mean() > u[cat == 1].mean()


def test_reference_exact_changes_tapudd_only_where_the_reference_is_odd(scored):
    _, tables = scored
    aligned, exact = tables["aligned"], tables["reference_exact"]
    for method in ("msp", "knn"):  # the same computation under both rules
        assert np.allclose(aligned[f"{method}_aligned"], exact[f"{method}_aligned"])
    assert not np.allclose(aligned["tapudd_aligned"], exact["tapudd_aligned"])


def test_tapudd_reference_exact_uses_component_zero_coordinates():
    feats = torch.tensor(np.random.default_rng(0).normal(size=(40, 3)))
    labels = torch.zeros(40, dtype=torch.long)
    cfg = VisAlignConfig.from_config({"tapudd": {"components": 2}}).method_settings()
    fitted = scoring._Fitted(feats, labels, cfg, True, torch.device("cpu"))
    mu, prec = fitted.gmms[1]  # k = 2: the "means" are coordinates 0 and 1 of component 0's mean
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, random_state=42).fit(feats.numpy())
    assert np.allclose(mu.numpy(), gmm.means_[0][:2, None].repeat(3, 1))
    assert np.allclose(prec.numpy(), gmm.precisions_[0])


def test_mcdropout_without_dropout_layers_adds_head_dropout(digits_model):
    from lwise.guide.checkpoints import load_model

    model = load_model(digits_model).eval()
    net = scoring._Net(model, use_logits=False)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad(), scoring._dropout_on(net, 0.5, exact=False):
        a, b = net(model.normalize(x))[0], net(model.normalize(x))[0]
    assert not torch.allclose(a, b)  # stochastic passes
    assert not model.training
    with torch.no_grad():
        assert torch.allclose(net(model.normalize(x))[0], net(model.normalize(x))[0])


def test_scores_cover_every_test_image(scored):
    test, tables = scored
    t = tables["aligned"]
    assert t["image"].tolist() == test["im_path"].tolist()
    probs = t[[c for c in t.columns if c.startswith("p_")]].to_numpy()
    assert np.allclose(probs.sum(1), 1)


def _dag_config() -> dict:
    config = tiny_config()
    config["visalign"] = {
        "methods": ["msp", "knn"],
        "knn": {"k": 5},
        "synthetic": {"per_category": 4},
        "models": {
            "convnext": {"arch": "visalign_convnext_tiny", "seeds": [1, 2], "train": {"epochs": 1}},
            "mixer": {"arch": "visalign_mixer_tiny", "seeds": [1, 2], "train": {"epochs": 1}},
        },
    }
    return config


def test_dag_plans_architectures_times_seeds(tmp_path):
    target = "results/digits/visalign/alignment_synthetic"
    jobs = planned_jobs(run_workflow(tmp_path, _dag_config(), "--dry-run", target))
    assert {k: v for k, v in jobs.items() if k.startswith("visalign")} == {
        "visalign_testset": 1, "visalign_train": 4, "visalign_score": 4, "visalign_evaluate": 1,
    }  # fmt: skip


@pytest.mark.slow
def test_dag_runs_two_architectures_two_methods_two_seeds(tmp_path):
    target = "results/digits/visalign/alignment_synthetic"
    run_workflow(tmp_path, _dag_config(), target)
    out = tmp_path / target
    table = pd.read_csv(out / "visalign.csv")
    assert set(table["model"]) == {"convnext", "mixer"}
    assert set(table["method"]) == {"msp", "knn"} and set(table["seed"].astype(str)) == {"1", "2"}
    assert table["synthetic"].all()
    assert len(list((out / "submissions").glob("*.json"))) == 8
    test = dirmap.read(tmp_path / "results/digits/visalign/testset/dirmap.csv")
    assert len(test) == 12
