"""Correspondence classifiers: transport solvers against POT and the reference iteration,
shortlist, votes and re-ranking, CHM matchers, and the end-to-end evaluation on a tiny dataset
with a tiny model built here."""

from __future__ import annotations

import numpy as np
import ot
import pandas as pd
import pytest
import torch

from lwise.alignment.correspondence import chm, emd, knn
from lwise.alignment.correspondence.classify import Settings, build_features, evaluate
from lwise.alignment.correspondence.features import FeatureBank, FeatureCacheError
from lwise.guide.checkpoints import save_checkpoint
from lwise.guide.models import build_model


def reference_spatial_similarity(conv1: np.ndarray, conv2: np.ndarray):
    """`EMDFunctions.compute_spatial_similarity` of emd_utils.py, its row loop kept."""
    conv1 = conv1.reshape(-1, conv1.shape[1] * conv1.shape[2]).T
    conv2 = conv2.reshape(-1, conv2.shape[1] * conv2.shape[2]).T
    pool1, pool2 = conv1.mean(0), conv2.mean(0)
    conv1n = conv1 / np.linalg.norm(pool1) / conv1.shape[0]
    conv2n = conv2 / np.linalg.norm(pool2) / conv2.shape[0]
    sim = np.zeros((conv1n.shape[0], conv1n.shape[0]))
    for zz in range(conv1n.shape[0]):
        rep = np.tile(conv1n[zz, :], (conv1n.shape[0], 1))
        sim[zz, :] = (rep * conv2n).sum(axis=1)
    return sim.sum(axis=1), sim.sum(axis=0)


def reference_sinkhorn(kernel, u, v):
    """`EMDFunctions.Sinkhorn` of emd_utils.py, for the pairs of one query."""
    r, c = torch.ones_like(u), torch.ones_like(v)
    for i in range(100):
        iterations = i + 1
        r0 = r
        r = u / torch.matmul(kernel, c.unsqueeze(-1)).squeeze(-1)
        c = v / torch.matmul(kernel.permute(0, 2, 1).contiguous(), r.unsqueeze(-1)).squeeze(-1)
        err = (r - r0).abs().mean()
        if err.item() < 1e-1:
            break
    return torch.matmul(r.unsqueeze(-1), c.unsqueeze(-2)) * kernel, iterations


def reference_emd_scores(fb: torch.Tensor) -> tuple[torch.Tensor, int]:
    """`compute_emd_sim` (CC weights, num_patch 5) for one query: fb = query + exemplars."""
    n, _, h, w = fb.shape
    r = h * w
    maps = [reference_spatial_similarity(fb[0].numpy(), fb[i].numpy()) for i in range(n)]
    g2q = torch.from_numpy(np.stack([m[0] for m in maps]))
    q2g = torch.from_numpy(np.stack([m[1] for m in maps]))
    flat = torch.nn.functional.normalize(fb.flatten(2), p=2, dim=1)
    sim = torch.einsum("cm,ncs->nsm", flat[0], flat).contiguous().view(n, r, r)
    kernel = torch.exp(-(1.0 - sim) / 0.05)
    u = (q2g / (q2g.sum(1, keepdim=True) + 1e-5)).to(sim.dtype)
    v = (g2q / (g2q.sum(1, keepdim=True) + 1e-5)).to(sim.dtype)
    plan, iterations = reference_sinkhorn(kernel, u, v)
    scores = []
    for i in range(n):
        t, s = plan[i].flatten(), sim[i].flatten()
        top = torch.argsort(t)[-5:]
        scores.append(float((t[top] * s[top]).sum()))
    return torch.tensor(scores[1:]), iterations


def relu_maps(*shape, seed=0, sparsity=0.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).relu()
    if sparsity:
        x = x * (torch.rand(*shape, generator=g) > sparsity)
    return x


def sparse_maps(*shape, seed, sparsity):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * (torch.rand(*shape, generator=g) > sparsity)


def test_cc_weights_match_the_reference_loop():
    q, g = relu_maps(3, 8, 4, 4, seed=1), relu_maps(3, 5, 8, 4, 4, seed=2)
    query_w, exemplar_w = emd.cc_weights(emd.flat(q), emd.flat(g))
    for b in range(3):
        for p in range(5):
            rows, cols = reference_spatial_similarity(q[b].numpy(), g[b, p].numpy())
            assert np.allclose(query_w[b, p].numpy(), rows, atol=1e-6)
            assert np.allclose(exemplar_w[b, p].numpy(), cols, atol=1e-6)


def test_reference_mode_reproduces_the_hand_run_iteration():
    # Three queries with different statistics: the iteration counts differ between them.
    queries = [sparse_maps(1, 64, 3, 3, seed=s, sparsity=sp) for s, sp in ((3, 0.5), (4, 0.8))]
    exemplars = [sparse_maps(1, 6, 64, 3, 3, seed=10 + s, sparsity=0.8) for s in range(2)]
    q, g = torch.cat(queries), torch.cat(exemplars)
    res = emd.emd_corr_scores(q, g, solver="reference")
    counts = []
    for b in range(2):
        scores, iterations = reference_emd_scores(torch.cat([q[b : b + 1], g[b]]))
        assert int(res.iterations[b]) == iterations
        assert torch.allclose(res.scores[b], scores, rtol=1e-4, atol=1e-6)
        counts.append(iterations)
    assert len(set(counts)) > 1, counts


def test_reference_stopping_test_is_shared_by_all_pairs_of_a_query():
    u = torch.full((1, 2, 3), 1 / 3)
    kernel = torch.stack([torch.eye(3) + 0.01, torch.ones(3, 3)]).unsqueeze(0).double()
    plans, iterations = emd.sinkhorn_reference(kernel, u.double(), u.double())
    _, alone = emd.sinkhorn_reference(kernel[:, 1:], u[:, 1:].double(), u[:, 1:].double())
    _, together = reference_sinkhorn(kernel[0], u[0].double(), u[0].double())
    assert int(iterations[0]) == together
    assert int(alone[0]) <= int(iterations[0])


def test_iterations_swing_with_feature_statistics_up_to_the_cap(caplog):
    counts = []
    for sparsity in (0.5, 0.95):
        q = sparse_maps(1, 64, 3, 3, seed=0, sparsity=sparsity)
        g = sparse_maps(1, 5, 64, 3, 3, seed=1, sparsity=sparsity)
        with caplog.at_level("WARNING"):
            res = emd.emd_corr_scores(q, g, solver="reference")
        _, hand = reference_emd_scores(torch.cat([q, g[0]]))
        assert int(res.iterations[0]) == hand
        counts.append(hand)
    assert counts[0] < 20 and counts[1] == emd.REFERENCE_MAX_ITER
    assert "reached the cap of 100 iterations" in caplog.text
    assert torch.isfinite(res.scores).all()  # the plan at the cap is used


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_converged_sinkhorn_matches_pot(seed):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0, 1, size=(2, 3, 6, 6))
    a = rng.uniform(0.1, 1, size=(2, 3, 6))
    b = rng.uniform(0.1, 1, size=(2, 3, 6))
    a, b = a / a.sum(-1, keepdims=True), b / b.sum(-1, keepdims=True)
    kernel = torch.exp(-torch.from_numpy(cost) / 0.05)
    plans, _ = emd.sinkhorn(kernel, torch.from_numpy(a), torch.from_numpy(b), tol=1e-12)
    for i in range(2):
        for j in range(3):
            expected = ot.sinkhorn(
                a[i, j], b[i, j], cost[i, j], 0.05, stopThr=1e-13, numItermax=10**6
            )
            assert np.allclose(plans[i, j].numpy(), expected, atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_plans_match_pot_emd(seed):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0, 2, size=(2, 2, 5, 5))
    a = rng.dirichlet(np.ones(5), size=(2, 2))
    b = rng.dirichlet(np.ones(5), size=(2, 2))
    plans = emd.exact_plans(torch.from_numpy(cost), torch.from_numpy(a), torch.from_numpy(b))
    for i in range(2):
        for j in range(2):
            plan = plans[i, j].numpy()
            assert np.allclose(plan.sum(1), a[i, j]) and np.allclose(plan.sum(0), b[i, j])
            assert (plan * cost[i, j]).sum() == pytest.approx(ot.emd2(a[i, j], b[i, j], cost[i, j]))


def test_all_solvers_rank_an_exact_copy_first():
    q = relu_maps(2, 8, 3, 3, seed=0)
    g = relu_maps(2, 6, 8, 3, 3, seed=1)
    g[:, 4] = q  # exemplar 4 is the query itself
    for solver in emd.SOLVERS:
        for uniform in (False, True):
            res = emd.emd_corr_scores(q, g, solver=solver, uniform=uniform)
            assert (res.scores.argmax(1) == 4).all(), (solver, uniform)
            assert res.cells.shape == (2, 6, emd.TOP_CELLS)


def test_shortlist_orders_by_similarity_then_index():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 1]]), dim=1)
    sims, idx = knn.shortlist(torch.tensor([[1.0, 0.0]]), bank, 3)
    assert idx.tolist() == [[0, 2, 3]]
    assert sims[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shortlist of 5"):
        knn.shortlist(torch.tensor([[1.0, 0.0]]), bank, 5)


def test_majority_vote_breaks_ties_to_the_smallest_class():
    labels = torch.tensor([[3, 1, 3, 1, 2], [4, 4, 0, 0, 0], [2, 2, 2, 2, 2]])
    pred, votes = knn.majority_vote(labels, 5)
    assert pred.tolist() == [1, 0, 2] and votes.tolist() == [2, 3, 5]


def test_rerank_then_vote_among_the_top():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9, 0.2]])
    order = knn.rerank(scores)
    assert order.tolist() == [[1, 3, 2, 4, 0]]  # equal scores keep the kNN order
    labels = torch.tensor([[0, 2, 1, 2, 0]])
    pred, votes = knn.majority_vote(labels.gather(1, order[:, :3]), 3)
    assert pred.tolist() == [2] and votes.tolist() == [2]


def test_mutual_nearest_neighbours_and_chm_scores():
    q = relu_maps(1, 8, 3, 3, seed=0)
    g = relu_maps(1, 2, 8, 3, 3, seed=1)
    g[0, 0] = q[0].flip(-1)  # the query mirrored: every cell matches its mirror
    points = chm.MutualNearestNeighbours().match(q, g)
    assert points.shape == (1, 2, 9, 2)
    cells, valid = chm.quantise(points[0, 0], 3, 3)
    assert valid.all()
    mirrored = torch.arange(9).view(3, 3).flip(-1).flatten()
    assert cells.tolist() == mirrored.tolist()
    scores, _, mask, cos = chm.chm_corr_scores(q, g, points)
    assert scores[0, 0] > scores[0, 1]
    assert torch.allclose(cos[0, 0], torch.ones(9), atol=1e-5)
    assert mask[0, 0].any()
    with pytest.raises(ValueError, match="expected"):
        chm.chm_corr_scores(q, g, points[:, :, :4])


def test_grid_points_quantise_to_their_own_cells():
    cells, valid = chm.quantise(chm.grid_points(7, 7), 7, 7)
    assert cells.tolist() == list(range(49)) and valid.all()


def test_user_matcher_from_a_file(tmp_path):
    path = tmp_path / "matcher.py"
    path.write_text(
        "import torch\n"
        "from lwise.alignment.correspondence.chm import grid_points\n"
        "class Identity:\n"
        "    needs_images = True\n"
        "    def __init__(self, scale=1.0):\n"
        "        self.scale = scale\n"
        "    def match(self, qm, em, qi, ei):\n"
        "        assert qi is not None and ei is not None\n"
        "        b, n = em.shape[:2]\n"
        "        return grid_points(*qm.shape[-2:]).expand(b, n, -1, -1) * self.scale\n"
        "def build_matcher(**options):\n"
        "    return Identity(**options)\n"
    )
    matcher = chm.get_matcher("mnn", str(path), {"scale": 1.0})
    assert matcher.needs_images
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="build_matcher"):
        chm.load_matcher(tmp_path / "bad.py")
    with pytest.raises(FileNotFoundError):
        chm.load_matcher(tmp_path / "missing.py")


@pytest.fixture
def tiny_dataset(tmp_path):
    """12 train and 4 test images of 3 coloured classes, a dirmap, and a tiny untrained model."""
    from PIL import Image

    from lwise.data import dirmap

    rng = np.random.default_rng(0)
    rows = []
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    for k, (name, colour) in enumerate(sorted(colours.items())):
        for split, n in (("train", 12), ("test", 4)):
            for i in range(n):
                arr = np.clip(rng.normal(colour, 25, size=(16, 16, 3)), 0, 255).astype(np.uint8)
                path = tmp_path / "images" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(path)
                rows.append([split, name, k, str(path.relative_to(tmp_path))])
    csv = tmp_path / "dirmap.csv"
    dirmap.write(pd.DataFrame(rows, columns=["split", "class", "class_num", "im_path"]), csv)
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model.training_args = {"image_size": 16}
    save_checkpoint(tmp_path / "model.pt", model.eval(), training_args={"image_size": 16})
    return csv, tmp_path / "model.pt"


@pytest.mark.parametrize("solver", emd.SOLVERS)
def test_evaluate_on_a_tiny_dataset(tiny_dataset, tmp_path, solver):
    csv, model = tiny_dataset
    bank = build_features(csv, model, tmp_path / "features.pt")
    assert bank.pooled.shape == (36, 64) and bank.maps.shape == (36, 64, 2, 2)
    assert torch.allclose(bank.pooled.norm(dim=1), torch.ones(36), atol=1e-5)
    out = tmp_path / "out"
    settings = {"shortlist": 10, "voters": 5, "emd_solver": solver, "explain_queries": 2}
    acc = evaluate(
        csv, model, tmp_path / "features.pt", out / "accuracy.csv", out / "predictions.csv",
        out / "explanations.png", settings=settings,
    )  # fmt: skip
    assert list(acc["method"]) == ["guide", "knn", "emd_corr", "chm_corr"]
    assert (acc["split"] == "test").all() and (acc["n"] == 12).all()
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 12
    for method in ("knn", "emd_corr", "chm_corr"):
        voters = pred[f"{method}_exemplars"].str.split(";")
        assert (voters.map(len) == 5).all()
        # The confidence is the winner's share of the votes among its 5 voting exemplars.
        for row, names in zip(pred.itertuples(), voters, strict=True):
            labels = [["blue", "green", "red"].index(n.split("/")[2]) for n in names]
            assert getattr(row, f"{method}_pred") == min(
                set(labels), key=lambda c: (-labels.count(c), c)
            )
            assert getattr(row, f"{method}_confidence") == pytest.approx(
                labels.count(getattr(row, f"{method}_pred")) / 5
            )
    # Colour classes are separable even by untrained conv features.
    assert acc.set_index("method").loc["knn", "accuracy"] >= 0.75
    assert (out / "explanations.png").stat().st_size > 1000


def test_feature_cache_belongs_to_its_model(tiny_dataset, tmp_path):
    csv, model = tiny_dataset
    build_features(csv, model, tmp_path / "features.pt")
    assert FeatureBank.load(tmp_path / "features.pt", model).split == "train"
    other = build_model("small_cnn", 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    save_checkpoint(model, other, training_args={"image_size": 16})
    with pytest.raises(FeatureCacheError, match="rebuild the cache"):
        FeatureBank.load(tmp_path / "features.pt", model)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(FeatureCacheError, match="not a readable feature cache"):
        FeatureBank.load(tmp_path / "junk.pt")


def test_val_split_is_used_without_a_test_split(tiny_dataset, tmp_path):
    from lwise.data import dirmap

    csv, model = tiny_dataset
    df = dirmap.read(csv)
    df["split"] = df["split"].replace("test", "val")
    dirmap.write(df, csv)
    build_features(csv, model, tmp_path / "f.pt")
    acc = evaluate(
        csv, model, tmp_path / "f.pt", tmp_path / "a.csv", tmp_path / "p.csv", tmp_path / "e.png",
        settings=Settings(shortlist=10, voters=5, explain_queries=1),
    )  # fmt: skip
    assert (acc["split"] == "val").all()
    assert acc["detail"].str.contains("no test split").all()


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown correspondence setting"):
        Settings.from_dict({"shortlst": 5})
    with pytest.raises(ValueError, match="emd_solver"):
        Settings.from_dict({"emd_solver": "cv2"})


def test_evaluate_with_a_matcher_from_a_file_that_needs_images(tiny_dataset, tmp_path):
    csv, model = tiny_dataset
    matcher = tmp_path / "matcher.py"
    matcher.write_text(
        "from lwise.alignment.correspondence.chm import grid_points\n"
        "class Identity:\n"
        "    needs_images = True\n"
        "    def match(self, qm, em, qi, ei):\n"
        "        assert qi.shape[0] == em.shape[0] and ei.shape[:2] == em.shape[:2]\n"
        "        return grid_points(*qm.shape[-2:]).expand(*em.shape[:2], -1, -1)\n"
        "def build_matcher():\n"
        "    return Identity()\n"
    )
    build_features(csv, model, tmp_path / "f.pt")
    settings = {"shortlist": 10, "voters": 5, "matcher_file": str(matcher), "explain_queries": 1}
    acc = evaluate(
        csv, model, tmp_path / "f.pt", tmp_path / "a.csv", tmp_path / "p.csv", tmp_path / "e.png",
        settings=settings,
    )  # fmt: skip
    assert acc.set_index("method").loc["chm_corr", "detail"].startswith("matcher from")
