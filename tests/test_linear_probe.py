"""The linear probe: exact L2-regularised logistic regression, regularisation chosen on validation only."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from medssl.evaluate.classify import linear_probe

CLASSES = ["a", "b"]


def make_features(n=300, d=20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    logits = np.stack([2 * x[:, 0] - x[:, 1], x[:, 2] + x[:, 3]], 1)
    y = (logits + 0.5 * rng.standard_normal(logits.shape) > 0).astype(np.uint8)
    return x, y


def test_lbfgs_probe_matches_sklearn_logistic_regression():
    x, y = make_features()
    idx = np.arange(len(x))
    train, val, test = idx[:150], idx[150:220], idx[220:]
    l2 = 0.05
    result = linear_probe(x, y, train, val, test, CLASSES, {"solver": "lbfgs", "l2": [l2]}, seed=0)
    assert result["selected_l2"] == l2
    mu, sd = x[train].mean(0), x[train].std(0, ddof=1)
    z = lambda rows: (x[rows] - mu) / sd
    for k in range(2):
        # sklearn minimises C * sum(log-loss) + ||w||^2 / 2, i.e. mean log-loss + ||w||^2 / (2 C n)
        reference = LogisticRegression(C=1.0 / (l2 * len(train)), tol=1e-10, max_iter=10000).fit(z(train), y[train, k])
        np.testing.assert_allclose(result["test_scores"][:, k], reference.predict_proba(z(test))[:, 1], atol=2e-3)


def test_regularisation_is_chosen_on_validation_not_test():
    x, y = make_features(seed=1)
    idx = np.arange(len(x))
    train, val, test = idx[:40], idx[40:140], idx[140:]
    settings = {"solver": "lbfgs", "l2": [1e-4, 1e-2, 1.0, 100.0]}
    result = linear_probe(x, y, train, val, test, CLASSES, settings, seed=0)
    swapped = linear_probe(x, y, train, test, val, CLASSES, settings, seed=0)  # same fit, other selection split
    assert result["selected_l2"] in settings["l2"] and result["val_value"] > 0.8
    for chosen, selection_split in ((result, val), (swapped, test)):
        per_l2 = {
            l2: linear_probe(
                x, y, train, selection_split, selection_split, CLASSES, {"solver": "lbfgs", "l2": [l2]}, seed=0
            )["val_value"]
            for l2 in settings["l2"]
        }
        assert chosen["val_value"] == pytest.approx(max(per_l2.values()), abs=1e-3)


def test_unknown_solver_is_a_clear_error():
    x, y = make_features(n=40)
    idx = np.arange(40)
    with pytest.raises(ValueError, match="unknown linear-probe solver 'sgd'"):
        linear_probe(x, y, idx[:20], idx[20:30], idx[30:], CLASSES, {"solver": "sgd"}, seed=0)


@pytest.mark.parametrize("protocol", ["lbfgs", "adamw", "knn"])
def test_non_finite_features_are_a_diverged_evaluation(protocol):
    """An encoder whose weights diverged to huge finite values gives inf features: L-BFGS raised "value cannot be
    converted to type float without overflow" (a pretraining's monitor crashed with it), kNN scored NaN."""
    from medssl.evaluate.classify import EvaluationDiverged, knn_classify

    x, y = make_features(n=60)
    x[7, 3] = np.inf
    idx = np.arange(len(x))
    split = (idx[:30], idx[30:45], idx[45:])
    with pytest.raises(EvaluationDiverged, match="features are not finite for 1 of 60 images"):
        if protocol == "knn":
            knn_classify(x, y, *split, CLASSES, {"k": 5, "temperature": 0.1})
        else:
            linear_probe(x, y, *split, CLASSES, {"solver": protocol, "lr": 1e-3, "epochs": 2}, seed=0)


def test_probe_monitor_reports_non_finite_features_without_stopping_the_run(synthetic_root):
    import torch

    from datasets import load_dataset
    from medssl.nn.backbone import ResNetTrunk
    from medssl.pretrain.monitor import ProbeMonitor

    dataset = load_dataset("synthetic_cxr", synthetic_root, n_images=64, size=32, seed=0)
    monitor = ProbeMonitor(dataset, 32, [0.5], [0.25], {"every_epochs": 1, "fraction": 100, "l2": [0.1]})
    trunk = ResNetTrunk("resnet18", 1)
    with torch.no_grad():
        trunk.layer4[1].conv2.weight.fill_(1e38)
    trunk.train()
    assert monitor.probe(trunk, "cpu") == {
        "probe_auc": None,
        "feature_rank": None,
        "probe_error": "non-finite features",
    }
    assert trunk.training


def test_knn_scores_are_weighted_neighbour_votes():
    from medssl.evaluate.classify import knn_classify

    features = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.9, 0.0], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([[1, 0], [0, 1], [1, 1], [1, 0], [0, 1]], dtype=np.uint8)
    result = knn_classify(
        features,
        labels,
        np.array([0, 1, 2]),
        np.array([3, 4]),
        np.array([3, 4]),
        ["a", "b"],
        {"k": 2, "temperature": 0.5},
    )
    cos = lambda u, v: float(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))
    query = features[3]
    nearest = [0, 2]  # the two most similar training images
    weights = np.array([np.exp(cos(query, features[j]) / 0.5) for j in nearest])
    expected = (weights[:, None] * labels[nearest]).sum(0) / weights.sum()
    assert np.allclose(result["test_scores"][0], expected, atol=1e-6)


def test_knn_scores_stay_finite_at_a_small_temperature():
    """exp(cosine / T) overflows float32 for T below about 0.011 (issue 31): the weights are shift-invariant
    shares, so the scores equal the float64 computation at T = 0.005."""
    from medssl.evaluate.classify import knn_classify

    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 8)).astype(np.float32)
    features[:20] += 3.0  # near-identical neighbours: cosines close to 1
    labels = (rng.random((40, 2)) < 0.5).astype(np.uint8)
    labels[0], labels[1] = [1, 0], [0, 1]
    train, test = np.arange(30), np.arange(30, 40)
    result = knn_classify(features, labels, train, test, test, ["a", "b"], {"k": 5, "temperature": 0.005})
    assert np.isfinite(result["test_scores"]).all()
    unit = features.astype(np.float64) / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit[test] @ unit[train].T
    nearest = np.argsort(-similarity, axis=1)[:, :5]
    top = np.take_along_axis(similarity, nearest, axis=1)
    weights = np.exp((top - top[:, :1]) / 0.005)
    expected = (weights[:, :, None] * labels[train][nearest]).sum(1) / weights.sum(1, keepdims=True)
    assert np.allclose(result["test_scores"], expected, atol=1e-4)
