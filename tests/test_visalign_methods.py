"""VisAlign with models: the baselines, the seven methods on a model trained here (in the
visalign rules and in the alignment evaluation), the DAG."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import core_config, run_workflow, tiny_config
from test_workflow_dag import planned_jobs

from lwise.alignment import abstention
from lwise.alignment.analysis import EvaluationConfig
from lwise.alignment.evaluate import evaluate_alignment
from lwise.alignment.inputs import AlignmentDataError
from lwise.alignment.visalign import baselines, scoring
from lwise.alignment.visalign.settings import VisAlignConfig
from lwise.alignment.visalign.testset import build_testset
from lwise.data import dirmap
from lwise.guide.models import build_model, head_name
from lwise.guide.score import ScoringConfig, score

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
def visalign_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("visalign")


@pytest.fixture(scope="module")
def scored(digits_folder, digits_model, visalign_dir):
    """The synthetic test set of the digits and every method's scores, both rules."""
    out = visalign_dir
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


# --- every single-model method inside the alignment evaluation --------------------------------

# What one guide model can run: all but the Deep Ensemble.
SINGLE_MODEL = [m for m, spec in abstention.ABSTENTION.items() if not spec.ensemble]


def _evaluation_inputs(out, test, digits_folder, digits_model):
    """An ImageFolder of the digits' training split and the synthetic test images (as its val
    split), scored by the guide model like score_difficulty does; the test images are the
    natural set, with one trial each and the test set's gold distributions as human labels."""
    folder = out / "imagefolder"
    folder.mkdir(parents=True)
    (folder / "train").symlink_to(digits_folder / "train")
    (folder / "test").symlink_to(out.parent / "testset")
    rows = test.assign(im_path="test/" + test["im_path"], split="val")
    far = rows["class"] == "abstain"  # no class of the task: spread over the digits
    rows.loc[far, "class_num"] = np.arange(far.sum()) % 10
    rows.loc[far, "class"] = rows.loc[far, "class_num"].astype(str)
    train = dirmap.read(digits_folder / "dirmap.csv").query("split == 'train'")
    rows = rows[train.columns.intersection(rows.columns)]
    dirmap.write(pd.concat([train, rows], ignore_index=True), folder / "dirmap.csv")
    d = out / "difficulty"
    scored = score(
        folder / "dirmap.csv", digits_model, d / "dirmap.csv", d / "accuracy.csv",
        d / "confusion.png", d / "probabilities.csv", cfg=ScoringConfig.from_config({}),
        workers=0, trusted=False,
    )  # fmt: skip
    natural = scored[scored["split"] == "val"].copy()
    natural["im_path"] = natural["im_path"].str.removeprefix("../imagefolder/")
    dirmap.write(natural, out / "natural" / "dirmap.csv", check_files=False)
    pd.DataFrame(
        {"participant": "p1", "image": natural["im_path"], "condition": "natural",
         "response": natural["class"], "correct": 1}
    ).to_csv(out / "trials.csv", index=False)  # fmt: skip
    gold = test[[c for c in test.columns if c.startswith("gold_")]]
    gold.columns = [c.removeprefix("gold_") for c in gold.columns]
    gold.insert(0, "image", "test/" + test["im_path"])
    gold.to_csv(out / "labels.csv", index=False)
    return folder, pd.Series(test["category"].to_numpy(), index=gold["image"])


def _evaluate(out, folder, method: str, train_csv="dirmap.csv", **kwargs):
    return evaluate_alignment(
        out / "natural" / "dirmap.csv", {}, out / "trials.csv", out / f"alignment_{method}",
        EvaluationConfig.from_config({"analyses": ["visalign"], "abstention": method}),
        logit_column="robust_gt_logit", key_root=folder,
        probabilities_csv=out / "difficulty" / "probabilities.csv",
        label_distributions_csv=out / "labels.csv", synthetic=True,
        train_dirmap_csv=folder / train_csv, abstention_settings=SMALL, **kwargs,
    )  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(scored, visalign_dir, digits_folder, digits_model):
    """Per single-model method, the evaluation's per-image VisAlign table with its category."""
    out = visalign_dir / "evaluation"
    folder, category = _evaluation_inputs(out, scored[0], digits_folder, digits_model)
    tables = {}
    for method in SINGLE_MODEL:
        per_image = _evaluate(out, folder, method, guide_model=digits_model)["visalign_images"]
        tables[method] = per_image.assign(category=per_image["image"].map(category).to_numpy())
    return out, folder, tables


def test_every_single_model_method_runs_in_the_alignment_evaluation(evaluated):
    _, _, tables = evaluated
    for method, t in tables.items():
        assert len(t) == 30 and t["category"].notna().all(), method
        a = t["model_abstain_probability"]
        assert ((a >= 0) & (a <= 1)).all() and a.std() > 0, method
    for m1 in tables:  # each method decides differently
        for m2 in tables:
            a1, a2 = (tables[m]["model_abstain_probability"].to_numpy() for m in (m1, m2))
            assert m1 == m2 or not np.allclose(a1, a2), (m1, m2)


def test_evaluation_runs_the_same_methods_as_the_visalign_rules(evaluated, scored):
    """One implementation: the evaluation's abstention probabilities are those of the visalign
    rules' scores (the same model, training split, settings and images)."""
    _, _, tables = evaluated
    rules = scored[1]["aligned"].assign(image=lambda t: "test/" + t["image"]).set_index("image")
    for method, t in tables.items():
        s = rules.loc[t["image"], f"{method}_aligned"].to_numpy()
        expected = abstention.from_collapsed(method, s, "aligned")
        np.testing.assert_allclose(t["model_abstain_probability"], expected, atol=1e-5)


def test_methods_abstain_where_they_should(evaluated):
    _, _, tables = evaluated
    mean = {m: t.groupby("category")["model_abstain_probability"].mean() for m, t in tables.items()}
    hellinger = {m: t.groupby("category")["hellinger"].mean() for m, t in tables.items()}
    for method, spec in abstention.ABSTENTION.items():
        if method not in tables:
            continue
        if spec.kind == "distance":  # generated images of no digit are far from the training
            assert mean[method][4] > mean[method][1] + 0.2, method
            # ... where the softmax stays confident: closer to the gold answer (abstain)
            assert mean[method][4] > mean["msp"][4] and hellinger[method][4] < hellinger["msp"][4]
        else:  # corrupted digits are less certain than clean ones
            assert mean[method][8] > mean[method][1], method


def test_evaluation_errors_name_the_abstention_method(evaluated, digits_model):
    out, folder, _ = evaluated
    with pytest.raises(AlignmentDataError, match=r"evaluation.abstention 'knn' runs the guide"):
        _evaluate(out, folder, "knn")  # no guide model given
    dirmap.write(dirmap.read(folder / "dirmap.csv").query("split == 'val'"), folder / "val.csv")
    with pytest.raises(AlignmentDataError, match=r"'mds': .*val.csv: no 'train' rows; mds fit"):
        _evaluate(out, folder, "mds", train_csv="val.csv", guide_model=digits_model)


def test_dag_gives_the_evaluation_the_model_and_a_gpu_for_model_methods(tmp_path):
    config = core_config()
    config["evaluation"]["abstention"] = "knn"
    proc = run_workflow(tmp_path, config, "--dry-run", "results/digits/alignment_synthetic")
    job = proc.stdout.split("rule evaluate_alignment:")[1].split("\n\n")[0]
    assert "results/digits/guide/model.pt" in job and "gpu=1" in job
    config["evaluation"]["abstention"] = "deepensemble"
    proc = run_workflow(tmp_path, config, "--dry-run", check=False)
    assert proc.returncode != 0
    assert re.search(
        r"evaluation.abstention 'deepensemble': a Deep Ensemble averages the softmaxes of "
        r"several models, and the alignment evaluation has one",
        proc.stdout + proc.stderr,
    )


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
