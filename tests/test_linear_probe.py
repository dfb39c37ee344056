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
