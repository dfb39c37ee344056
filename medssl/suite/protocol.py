"""The leaf of the engine: the protocol's constants, the configuration error and the hash that keys every job.

Everything else imports from here and this imports nothing of the project, so the suite, schema, plan and method
modules can share these names without importing each other.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Bump when a code change alters what a pretraining or evaluation with the same settings produces.
PROTOCOL_VERSION = 2
PROTOCOLS = ("linear", "finetune", "knn")  # knn: weighted cosine kNN on the frozen features (classification only)
# classification: multi-label linear head, macro AUC; segmentation: U-Net decoder on the trunk, per-image Dice
# (medssl/evaluate/segment2d.py). Under "linear" a segmentation task freezes the encoder and trains only the decoder.
TASK_TYPES = ("classification", "segmentation")
# CT suites (``track: ct``, medssl/run/ct.py): probe = frozen pretrained FPN with the linear and non-linear heads,
# finetune = pretrained FPN + linear head, scratch = the same FPN from random initialisation + linear head,
# random_probe = both heads on a frozen random-init FPN (the control the probes must beat)
CT_PROTOCOLS = ("probe", "finetune", "scratch", "random_probe")


class ConfigError(ValueError):
    """The suite or the command line asks for something impossible; the message says what to change."""


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# Defaults of the learning-signal monitor (medssl/pretrain/monitor.py), the settings a suite may give under pretrain.monitor.
MONITOR_DEFAULTS = {"every_epochs": 1, "fraction": 10, "seed": 0, "l2": [1e-3, 1e-2, 1e-1, 1.0]}

# Paired comparisons in the reports (medssl/report/compare.py), the settings a suite may give under ``statistics``.
# reference: the method every other row is tested against (the suite's proposed method); variants: rows that are
# ablations of the reference, not baselines (default: every suite method named "<reference>-..."); adjust: holm or
# bh, across each table. The test behind the marks is not a setting: it takes the pretraining run as its unit.
STATISTICS_DEFAULTS = {
    "reference": "coboom",
    "variants": None,
    "adjust": "holm",
    "alpha": 0.05,
    "resamples": 2000,
    "confidence": 0.95,
    "seed": 0,
}
