"""Nested, patient-grouped, stratified label fractions of a training split.

One seeded ordering of the training *patients* is drawn per seed; the subset for fraction f is the shortest
prefix of that ordering holding at least round(f/100 * N) images. Prefixes of one ordering are nested by
construction (1% within 5% within 10% within 30% within 100%), never split a patient, and never touch val/test.

Stratification: each patient is assigned to the stratum of its rarest positive label (or "no finding"); within a
stratum patients are shuffled, and the strata are interleaved by systematic allocation (a patient at rank r of a
stratum of size n gets the key (r + u) / n, u ~ U(0,1)), so every prefix holds each stratum in proportion to its
size. The official CoBooM fraction files were drawn unseeded and their "5%" file had the size of the 1% file; here
sizes are asserted.
"""

from __future__ import annotations

from typing import Dict, Iterable

import numpy as np

from medssl.suite.protocol import ConfigError


def patient_order(labels: np.ndarray, patient_ids: np.ndarray, seed: int) -> np.ndarray:
    """Training patients in the order in which label fractions take them."""
    patients, inverse = np.unique(patient_ids, return_inverse=True)
    labels = np.asarray(labels, dtype=np.int64)
    per_patient = np.zeros((len(patients), labels.shape[1]), dtype=np.int64)
    np.add.at(per_patient, inverse, labels)
    prevalence = labels.sum(0)
    rarity = np.where(per_patient > 0, prevalence[None, :], np.iinfo(np.int64).max)
    stratum = np.where(per_patient.any(1), rarity.argmin(1), -1)
    rng = np.random.default_rng([seed, 7])
    keys = np.empty(len(patients))
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        members = members[rng.permutation(len(members))]
        keys[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return patients[np.argsort(keys, kind="stable")]


def label_fraction_indices(
    train_indices: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray, fractions: Iterable[float], seed: int
) -> Dict[float, np.ndarray]:
    """Map each fraction (percent) to sorted dataset indices of its nested, patient-grouped training subset."""
    train_indices = np.asarray(train_indices)
    train_patients = np.asarray(patient_ids)[train_indices]
    order = patient_order(np.asarray(labels)[train_indices], train_patients, seed)
    rank_of = {p: r for r, p in enumerate(order)}
    image_rank = np.array([rank_of[p] for p in train_patients])
    by_rank = np.argsort(image_rank, kind="stable")
    # images of patients sorted by patient rank; cumulative count at the end of each patient
    patient_end = np.cumsum(np.bincount(image_rank, minlength=len(order)))
    largest_patient = int(np.bincount(image_rank).max())
    n = len(train_indices)
    subsets: Dict[float, np.ndarray] = {}
    for fraction in sorted(float(f) for f in fractions):
        target = int(round(fraction / 100 * n))
        if target < 1:
            raise ConfigError(
                f"label fraction {fraction:g}% of {n} training images is less than one image; use a larger fraction or dataset"
            )
        n_patients = int(np.searchsorted(patient_end, target)) + 1
        take = int(patient_end[n_patients - 1])
        assert take >= target and take - target < largest_patient, (fraction, take, target)
        subsets[fraction] = np.sort(train_indices[by_rank[:take]])
    return subsets
