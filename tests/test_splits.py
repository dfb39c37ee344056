import numpy as np
import pytest

from medssl.data.splits import label_fraction_indices
from medssl.suite.protocol import ConfigError

FRACTIONS = [1, 5, 10, 30, 100]


def make_data(n_patients=400, seed=0):
    rng = np.random.default_rng(seed)
    per_patient = rng.integers(1, 5, size=n_patients)
    patient_ids = np.repeat(np.arange(n_patients), per_patient)
    labels = (rng.random((len(patient_ids), 4)) < [0.3, 0.1, 0.05, 0.02]).astype(np.uint8)
    split = rng.choice(["train", "val", "test"], p=[0.7, 0.1, 0.2], size=n_patients)[patient_ids]
    return labels, patient_ids, split


def test_fractions_nested_sized_and_patient_disjoint():
    labels, patients, split = make_data()
    train = np.flatnonzero(split == "train")
    subsets = label_fraction_indices(train, labels, patients, FRACTIONS, seed=0)
    max_per_patient = np.bincount(patients).max()
    previous = np.array([], dtype=int)
    for f in FRACTIONS:
        subset = subsets[float(f)]
        target = round(f / 100 * len(train))
        assert target <= len(subset) < target + max_per_patient, f
        assert set(previous) <= set(subset), f"{f}% does not contain the smaller fraction"
        assert set(subset) <= set(train)
        chosen = set(patients[subset])
        assert not chosen & set(patients[split != "train"])
        # whole patients: every image of a chosen patient is in the subset
        assert set(np.flatnonzero(np.isin(patients, list(chosen)) & (split == "train"))) == set(subset)
        previous = subset
    np.testing.assert_array_equal(subsets[100.0], np.sort(train))


def test_fractions_are_seeded_and_stratified():
    labels, patients, split = make_data(n_patients=2000)
    train = np.flatnonzero(split == "train")
    a = label_fraction_indices(train, labels, patients, [10], seed=0)[10.0]
    b = label_fraction_indices(train, labels, patients, [10], seed=0)[10.0]
    c = label_fraction_indices(train, labels, patients, [10], seed=1)[10.0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    prevalence = labels[train].mean(0)
    for seed in range(5):
        subset = label_fraction_indices(train, labels, patients, [10], seed=seed)[10.0]
        assert np.all(np.abs(labels[subset].mean(0) - prevalence) < 0.5 * prevalence + 0.01)
        assert labels[subset].sum(0).min() > 0, "the rarest class is present in the 10% subset"


@pytest.mark.parametrize("fraction", [0, -5, 101, "ten"])
def test_impossible_fractions_are_rejected(fraction):
    from medssl.suite.config import validate_fractions

    with pytest.raises(ConfigError):
        validate_fractions([fraction])


def test_fraction_below_one_image_is_rejected():
    labels, patients, split = make_data(n_patients=20)
    train = np.flatnonzero(split == "train")
    with pytest.raises(ConfigError, match="less than one image"):
        label_fraction_indices(train, labels, patients, [0.1], seed=0)
