"""A pretraining's product, encoder.pt: its weights and metadata, written under a temporary name and renamed after
its SHA-256 sidecar (encoder.json), and read back only when it passes that check, with
torch.load(weights_only=True)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import torch

from datasets.storage import write_atomic
from medssl.nn.backbone import ResNetTrunk
from medssl.plan.jobs import PretrainJob
from medssl.record.provenance import file_sha256
from methods.vox2vec3d import FPN3d

ENCODER_FILE = "encoder.pt"


ENCODER_SIDECAR = "encoder.json"  # the encoder's metadata and the SHA-256 of encoder.pt


class CorruptCheckpoint(RuntimeError):
    """A stored checkpoint that fails its checksum or does not load."""


def encoder_status(path: Path) -> str:
    """'done', 'missing' or 'corrupt' for an ``encoder.pt`` path. An encoder written before checksums existed (no
    ``encoder.json``) counts as done if it loads, and gets its sidecar then."""
    path = Path(path)
    if not path.exists():
        return "missing"
    sidecar = path.with_name(ENCODER_SIDECAR)
    if not sidecar.exists():
        try:
            _read_encoder(path)
        except Exception:  # noqa: BLE001 - unreadable: corrupt
            return "corrupt"
        write_json(sidecar, {"sha256": file_sha256(path)})
        return "done"
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "corrupt"
    return "done" if file_sha256(path) == expected else "corrupt"


def _read_encoder(path: Path) -> tuple:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    meta = payload["meta"]
    if meta["backbone"] == "fpn3d":  # a CT method's encoder (medssl/run/ct.py)
        encoder = FPN3d(**meta["architecture"])
    else:
        encoder = ResNetTrunk(meta["backbone"], meta["in_channels"])
    encoder.load_state_dict(payload["state_dict"])
    return encoder, meta


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1)))


def load_encoder(path: Path) -> tuple:
    """(ResNetTrunk with weights, checkpoint metadata); :class:`CorruptCheckpoint` naming the file when it fails its
    checksum or does not load. Loaded with ``weights_only=True``: tensors and plain types only, never code."""
    path = Path(path)
    if encoder_status(path) != "done":
        raise CorruptCheckpoint(
            f"{path} is damaged (it fails its SHA-256 check or does not load); delete the folder {path.parent} and run again to redo that pretraining"
        )
    try:
        return _read_encoder(path)
    except Exception as err:  # noqa: BLE001 - any failure to read our own file is reported with its name
        raise CorruptCheckpoint(
            f"{path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]}); delete the folder {path.parent} and run again"
        ) from None


def save_encoder(job: PretrainJob, run_dir: Path, state: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Path:
    encoder_path = run_dir / ENCODER_FILE

    def save(tmp: Path) -> None:  # a per-process temporary name: two runs sharing a checkpoints folder never mix files
        torch.save({"state_dict": state, "meta": meta}, tmp)
        write_json(
            run_dir / ENCODER_SIDECAR,
            {"sha256": file_sha256(tmp), "key": job.key, "method": job.method, "hash": job.hash},
        )

    write_atomic(encoder_path, save)  # renamed last: an encoder.pt is never visible before its checksum
    return encoder_path
