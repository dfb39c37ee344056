"""``run_benchmark.py export``: a method's pretrained trunks as files other code loads without this suite.

For each pretraining of the method in the suite (corpus x pretraining seed; pretrained first if it is not yet) three
files go to the export folder, named by the pretraining's key:

* ``KEY.safetensors``: the trunk as trained, in torchvision's key names (``conv1.weight``, ``bn1.*``,
  ``layer1.0.conv1.weight`` ...; BatchNorm running statistics and counters included, no ``fc``), with the suite's
  image channels (1 for X-rays).
* ``KEY-3ch.safetensors``: the same with ``conv1`` repeated over three input channels and divided by 3
  (``backbone.adapt_stem``): an RGB image whose three channels are equal gives the trained 1-channel output, so
  ``torchvision.models.resnet18().load_state_dict(sd, strict=False)`` loads it with only ``fc.weight``/``fc.bias``
  missing. Written only when the suite's images have one channel.
* ``KEY.json`` / ``KEY-3ch.json``: method, suite, pretraining key and hash, backbone, image size, channels and the
  normalisation the encoder was trained with (per channel), plus each file's SHA-256. ``--encoder NAME=KEY.safetensors``
  reads the normalisation from it (medssl/evaluate/external.py).

safetensors holds tensors only (no pickled code); its header carries the same description, normalisation included,
as one JSON string (entry ``medssl``), so the file is byte-identical each time the same trunk is exported and
``--encoder`` finds its normalisation without the sidecar.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from datasets.storage import write_atomic
from medssl.data.loaded import DatasetCache
from medssl.nn.backbone import adapt_stem
from medssl.plan.jobs import Plan
from medssl.pretrain.encoder import ENCODER_SIDECAR, load_encoder
from medssl.pretrain.train import run_pretraining
from medssl.record import provenance
from medssl.runtime.options import RunOptions
from medssl.suite.protocol import ConfigError

HEADER_KEY = "medssl"  # the safetensors metadata entry holding the sidecar's description as JSON


def _write_atomic(path: Path, write) -> None:
    def shared(tmp: Path) -> None:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates its file private; exports are for sharing

    write_atomic(path, shared)


def write_trunk(
    state: Dict[str, torch.Tensor], mean: List[float], std: List[float], path: Path, description: Dict[str, Any]
) -> List[Path]:
    """``path`` (.safetensors) and its JSON sidecar for one trunk state dict."""
    from safetensors.torch import save_file

    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}
    described = {
        **description,
        "channels": int(tensors["conv1.weight"].shape[1]),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
    }
    # one header entry: safetensors keeps its metadata in a hash map, so several entries come out in a different
    # order each time and the same trunk got another SHA-256; the normalisation travels with the weights, so a
    # lost sidecar does not mean ImageNet's
    header = {HEADER_KEY: json.dumps(described, sort_keys=True)}
    _write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    sidecar = path.with_suffix(".json")
    payload = {
        **described,
        "file": path.name,
        "sha256": provenance.file_sha256(path),
        "git_commit": provenance.git_commit(),
    }
    _write_atomic(sidecar, lambda tmp: tmp.write_text(json.dumps(payload, indent=1) + "\n"))
    return [path, sidecar]


def export_method(
    plan: Plan,
    method: str,
    data_root: Path,
    checkpoints: Path,
    export_dir: Path,
    options: Optional[RunOptions] = None,
) -> List[Path]:
    """Export every pretraining of ``method`` in ``plan`` (pretraining what is missing, with ``options``); returns the
    files written."""

    if method not in plan.suite["methods"]:
        raise ConfigError(
            f"method {method!r} is not in suite {plan.suite['name']!r}; its methods: {', '.join(plan.suite['methods'])} (or add it with --set 'methods=[...]')"
        )
    jobs = [job for job in plan.pretrain_jobs if job.method == method]
    if any(job.external is not None for job in jobs):
        raise ConfigError(
            f"{method!r} is an external encoder: its weights are a file already ({jobs[0].external['path']})"
        )
    export_dir.mkdir(parents=True, exist_ok=True)
    datasets = DatasetCache(data_root)
    written: List[Path] = []
    for job in jobs:
        encoder_path = run_pretraining(
            job,
            datasets.get(job.config["corpus"]),
            checkpoints,
            options,
        )
        trunk, meta = load_encoder(encoder_path)
        description = {
            "method": method,
            "suite": plan.suite["name"],
            "pretraining_key": job.key,
            "pretraining_hash": job.hash,
            "pretraining_seed": job.seed,
            "corpus": job.corpus,
            "backbone": meta["backbone"],
            "image_size": int(plan.suite["pretrain"]["image_size"]),
            "key_names": "torchvision",
            "encoder_sha256": json.loads(encoder_path.with_name(ENCODER_SIDECAR).read_text())["sha256"],
        }
        state = trunk.state_dict()
        written += write_trunk(state, meta["mean"], meta["std"], export_dir / f"{job.key}.safetensors", description)
        if meta["in_channels"] == 1:
            three = {**state, "conv1.weight": adapt_stem(state["conv1.weight"], 3)}
            written += write_trunk(
                three,
                meta["mean"] * 3,
                meta["std"] * 3,
                export_dir / f"{job.key}-3ch.safetensors",
                {**description, "conversion": "conv1 repeated over 3 input channels and divided by 3"},
            )
    return written
