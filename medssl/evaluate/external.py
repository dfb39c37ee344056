"""Encoders the user brings: ``--encoder NAME=PATH[,mean=M,std=S,prefix=P,stem=S]`` makes a ResNet trunk from a file a row
of every table of the run, evaluated by every protocol, fraction and seed of the suite like a pretrained method.

Formats (:func:`read_weights`): a torchvision/timm ResNet state dict (``.pth``/``.pt``), a ``.safetensors`` file (the
suite's own ``export``), a Lightning checkpoint of a lightly or solo-learn model (``.ckpt``; its ``state_dict``).
Files are read with ``torch.load(weights_only=True)``: a class a checkpoint names for its hyper-parameters (solo-learn
stores an omegaconf config, Lightning an ``argparse.Namespace``) is read as an inert stand-in, never imported, so a
crafted file cannot run code.

The trunk inside the file (:func:`find_trunk`): leading ``module.`` (DDP wrappers) is dropped, then the first prefix of
:data:`PREFIXES` under which the most torchvision ResNet keys are found is taken (``prefix=`` forces one). Keys of a
``nn.Sequential(*list(resnet.children())[:-1])`` trunk (lightly's examples: ``backbone.0.weight``, ``backbone.4.0
.conv1.weight``) are renamed to torchvision's. The depth is read from the keys (ResNet-18, -34 or -50). Loading is
strict for the trunk: a missing key (except BatchNorm's ``num_batches_tracked`` counters, which evaluation never
reads), a key under the trunk's module names that the trunk does not have, or a shape that differs is an error that
names the file and lists them. Keys outside the trunk (``fc``, projection heads, momentum copies) are ignored.

Channels: a 3-channel encoder on a 1-channel suite sees the grey image replicated to three channels, each
normalised with its own ``mean``/``std`` (``stem=replicate``, the default): what medical SSL code feeds ImageNet
weights (``convert('RGB')`` then per-channel normalisation), exact for ImageNet's statistics (tested equal to
torchvision's model on the replicated image). ``Normalize`` broadcasts the 1-channel batch against the three
channels' statistics, so nothing is copied before it. ``stem=sum`` instead sums ``conv1`` over its input channels
(``backbone.adapt_stem``) and normalises with the mean of the three means and of the three sds: exact only when they
are equal; for ImageNet's (0.485/0.456/0.406, 0.229/0.224/0.225) intensities in [0, 1] are normalised differently by
up to 0.20 sd (blue channel at intensity 1). A 1-channel file on a 3-channel suite has its ``conv1`` repeated and
divided by 3. Normalisation: ``mean``/``std`` given with the encoder (``mean=0.5`` or per channel
``mean=0.485:0.456:0.406``), else the ``mean``/``std`` of a JSON sidecar next to the file (what ``export`` writes),
else those of the safetensors header ``export`` writes, else ImageNet's (torchvision's weights).

Identity: the file's SHA-256 (with the resolved normalisation and prefix) keys the row's evaluations, so a changed
file is evaluated again and an unchanged one never; the record stores it with the path.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from medssl.nn.backbone import FEATURE_DIMS, ResNetTrunk, adapt_stem
from medssl.record.provenance import file_sha256
from medssl.suite.protocol import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Tried in this order; the one under which the most trunk keys are found wins (ties: the earlier).
PREFIXES = ("", "backbone.", "encoder.", "model.", "trunk.", "model.backbone.", "model.encoder.", "encoder_q.", "net.")
# Wrappers around a whole state dict inside a checkpoint file, in the order they are looked for.
WRAPPERS = ("state_dict", "model", "module", "network")
# torchvision's ResNet children in nn.Sequential order: conv1, bn1, relu, maxpool, layer1..4, avgpool, fc
SEQUENTIAL_NAMES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
TRUNK_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
SUFFIXES = (".pth", ".pt", ".ckpt", ".tar", ".bin", ".safetensors")
OPTION_NAMES = ("mean", "std", "prefix", "stem")
STEMS = ("replicate", "sum")  # how a 3-channel encoder reads 1-channel images (module docstring)
# Part of every external row's hash: bump when loading the same file would give a different encoder.
# 2: a 3-channel file on a 1-channel suite reads the replicated image by default (stem=replicate; 1: summed stem)
EXTERNAL_VERSION = 2


class OpaqueObject:
    """Stands in for any class a checkpoint names outside its tensors (hyper-parameter objects): built and filled
    with nothing, so no code of the file's classes runs."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _torch_load(data: bytes) -> Any:
    source = lambda: io.BytesIO(data)  # each reader gets its own stream over the same bytes
    try:
        return torch.load(source(), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - classes the weights-only reader does not know: inert stand-ins, once
        if "Weights only load failed" not in str(err):
            raise
        try:
            unknown = torch.serialization.get_unsafe_globals_in_checkpoint(source())
        except Exception:  # noqa: BLE001 - not a zip checkpoint: the weights-only reader's own message says more
            raise err from None
        with torch.serialization.safe_globals([(OpaqueObject, name) for name in unknown]):
            return torch.load(source(), map_location="cpu", weights_only=True)


def read_weights(path: Path, data: Optional[bytes] = None) -> Dict[str, torch.Tensor]:
    """The tensors of a state dict or checkpoint file, flattened to ``name -> tensor``; ConfigError naming the file
    when it is not one. ``data``: the file's bytes, when the caller has read (and hashed) them: what is hashed is
    what is loaded."""
    path = Path(path)
    try:
        data = path.read_bytes() if data is None else data
        if path.suffix == ".safetensors":
            from safetensors.torch import load as load_safetensors

            payload: Any = load_safetensors(data)
        else:
            payload = _torch_load(data)
    except Exception as err:  # noqa: BLE001 - whatever the reader raises, the user needs the file's name
        blocked = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(err))
        detail = (
            f"it names {blocked.group(1)}, which a weights-only load refuses to import"
            if blocked
            else (str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__)
        )
        raise ConfigError(
            f"{path}: not a state dict or checkpoint that torch.load or safetensors can read ({detail}); give a .pth/.pt/.ckpt/.safetensors file of ResNet weights"
        ) from None
    for wrapper in WRAPPERS:
        if isinstance(payload, dict) and isinstance(payload.get(wrapper), dict):
            payload = payload[wrapper]
            break
    if not isinstance(payload, dict):
        raise ConfigError(
            f"{path}: holds a {type(payload).__name__}, not a state dict (name -> tensor); save model.state_dict() instead"
        )
    tensors = {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"{path}: holds no tensors; give a .pth/.pt/.ckpt/.safetensors file of ResNet weights")
    return tensors


def _renamed(keys: Sequence[str], prefix: str) -> Dict[str, str]:
    """torchvision name -> file key for the keys under ``prefix`` (Sequential indices renamed)."""
    out = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        head, _, tail = rest.partition(".")
        if head in SEQUENTIAL_NAMES and tail:
            rest = f"{SEQUENTIAL_NAMES[head]}.{tail}"
        out[rest] = key
    return out


def _depth(names: Sequence[str]) -> Optional[str]:
    """resnet18/34/50 from the torchvision names of a trunk's keys (None when not recognised)."""
    blocks = {int(m.group(1)) for n in names for m in [re.match(r"layer3\.(\d+)\.", n)] if m}
    bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.", n) for n in names)
    count = max(blocks) + 1 if blocks else 0
    return {(False, 2): "resnet18", (False, 6): "resnet34", (True, 6): "resnet50"}.get((bottleneck, count))


def find_trunk(
    tensors: Dict[str, torch.Tensor], path: Path, prefix: Optional[str] = None
) -> Tuple[str, str, Dict[str, torch.Tensor]]:
    """(architecture, prefix used, torchvision-named trunk tensors) of a file's tensors; strict for the trunk."""
    keys = list(tensors)
    while keys and all(k.startswith("module.") for k in keys):
        keys = [k[len("module.") :] for k in keys]
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    candidates = [prefix] if prefix is not None else list(PREFIXES)
    found = {p: _renamed(keys, p) for p in candidates}
    score = {p: sum(1 for n in names if n.split(".")[0] in TRUNK_MODULES) for p, names in found.items()}
    chosen = max(candidates, key=lambda p: (score[p], -candidates.index(p)))
    if score[chosen] == 0:
        where = f"prefix {prefix!r}" if prefix is not None else "prefixes " + ", ".join(repr(p) for p in PREFIXES)
        raise ConfigError(
            f"{path}: no ResNet trunk found (no conv1/bn1/layer1-4 keys under {where}; the file's first keys: {', '.join(keys[:4])}); "
            "give the prefix of the trunk's keys: NAME=PATH,prefix=..."
        )
    names = found[chosen]
    arch = _depth(list(names))
    if arch is None:
        raise ConfigError(
            f"{path}: the trunk under prefix {chosen!r} is not a ResNet-18, -34 or -50 (the backbones this suite builds: {', '.join(FEATURE_DIMS)})"
        )
    stem = tensors[names["conv1.weight"]] if "conv1.weight" in names else None
    reference = ResNetTrunk(arch, int(stem.shape[1]) if stem is not None and stem.dim() == 4 else 3).state_dict()
    missing = [k for k in reference if k not in names and not k.endswith("num_batches_tracked")]
    unexpected = [n for n in names if n.split(".")[0] in TRUNK_MODULES and n not in reference]
    wrong_shape = [
        f"{n} {tuple(tensors[names[n]].shape)} (expected {tuple(reference[n].shape)})"
        for n in names
        if n in reference and tensors[names[n]].shape != reference[n].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = [
            f"{label} {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if items
        ]
        raise ConfigError(f"{path}: not a {arch} trunk torchvision can load (prefix {chosen!r}): " + "; ".join(parts))
    trunk = {n: tensors[names[n]] for n in reference if n in names}
    # load_state_dict would cast integer, bool or complex weights and keep NaN ones: a row of noise
    kinds = [
        f"{n} ({trunk[n].dtype})"
        for n in trunk
        if not n.endswith("num_batches_tracked") and not trunk[n].is_floating_point()
    ]
    broken = [n for n in trunk if trunk[n].is_floating_point() and not torch.isfinite(trunk[n]).all()]
    if kinds or broken:
        parts = [
            f"{label} {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
            for label, items in (("not floating-point:", kinds), ("non-finite values in", broken))
            if items
        ]
        raise ConfigError(
            f"{path}: the trunk's weights are not usable ({'; '.join(parts)}); give the file of a trained ResNet"
        )
    return arch, chosen, trunk


_SHA_CACHE: Dict[tuple, str] = {}


def cached_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per (path, inode, size, modification and change time) in this process: a
    file replaced by one of the same size and modification time (``cp`` + ``touch -r``, ``rsync -t``) has another
    change time, which no tool sets back. :func:`load_external` hashes the bytes it loads in any case."""
    stat = os.stat(path)
    ident = (str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if ident not in _SHA_CACHE:
        _SHA_CACHE[ident] = file_sha256(path)
    return _SHA_CACHE[ident]


def _numbers(text: str, option: str, where: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(":")]
    except ValueError:
        raise ConfigError(
            f"{where}: {option}={text!r} is not a number or colon-separated numbers such as 0.485:0.456:0.406"
        ) from None
    if option == "std" and any(v <= 0 for v in values):
        raise ConfigError(f"{where}: std must be positive, got {text}")
    return values


def parse_encoder_option(text: str, reserved: Sequence[str] = ()) -> Tuple[str, Dict[str, Any]]:
    """``NAME=PATH[,mean=M,std=S,prefix=P,stem=S]`` -> (name, spec as a suite's ``encoders`` entry)."""
    where = f"--encoder {text}"
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise ConfigError(f"{where}: write NAME=PATH, e.g. --encoder imagenet=weights/resnet18-f37072fd.pth")
    parts = rest.split(",")
    path_parts, spec = [], {}
    for part in parts:
        option, eq, value = part.partition("=")
        if eq and option.strip() in OPTION_NAMES:
            spec[option.strip()] = value.strip()
        elif eq and spec:
            raise ConfigError(f"{where}: unknown option {option.strip()!r}; options are {', '.join(OPTION_NAMES)}")
        else:
            path_parts.append(part)
    spec["path"] = ",".join(path_parts)
    for option in ("mean", "std"):
        if option in spec:
            spec[option] = _numbers(spec[option], option, where)
    check_encoder_name(name, reserved)
    return name, spec


def check_encoder_name(name: str, reserved: Sequence[str]) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise ConfigError(
            f"encoder name {name!r}: use letters, digits and _ . + - (it names a table row and a results folder)"
        )
    if name in reserved:
        raise ConfigError(
            f"encoder name {name!r} is the name of a method; choose another row name, e.g. {name}-external"
        )


def sidecar_of(path: Path) -> Optional[Path]:
    candidate = Path(path).with_suffix(".json")
    return candidate if candidate.exists() else None


def header_normalisation(path: Path) -> Optional[Tuple[List[float], List[float]]]:
    """(mean, std) from the ``medssl`` entry of a safetensors header (what ``export`` writes), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            saved = json.loads((handle.metadata() or {}).get("medssl", "null"))
        return [float(v) for v in saved["mean"]], [float(v) for v in saved["std"]]
    except Exception:  # noqa: BLE001 - no such entry (another tool's file), or not readable: read_weights names it
        return None


def resolve_spec(name: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """A suite's ``encoders`` entry with what identifies the encoder filled in: the file's SHA-256 (unless given:
    entries rebuilt from records for a report, where the file need not exist any more) and the normalisation with its
    source. ConfigError naming the file when it does not exist."""
    spec = dict(spec)
    path = Path(str(spec.get("path", "")))
    if "sha256" not in spec:
        if path.is_dir():
            files = sorted(p.name for p in path.iterdir() if p.suffix in SUFFIXES)[:3]
            raise ConfigError(
                f"encoder {name}: {path} is a folder; give the weights file in it (--encoder {name}=PATH/FILE{', e.g. ' + files[0] if files else ''})"
            )
        if not path.is_file():
            raise ConfigError(
                f"encoder {name}: {path} does not exist; give the path of a .pth/.pt/.ckpt/.safetensors file (--encoder {name}=PATH)"
            )
        spec["path"] = str(path.resolve())
        spec["sha256"] = cached_sha256(path)
    if "normalisation" not in spec:
        source = "given" if "mean" in spec or "std" in spec else None
        sidecar = sidecar_of(path) if source is None and path.is_file() else None
        if sidecar is not None:
            try:
                saved = json.loads(sidecar.read_text())
                spec["mean"], spec["std"] = [float(v) for v in saved["mean"]], [float(v) for v in saved["std"]]
                source = f"sidecar {sidecar.name}"
            except (OSError, ValueError, KeyError, TypeError):
                raise ConfigError(
                    f"encoder {name}: {sidecar} has no readable mean and std lists; fix it, delete it, or give mean=...,std=... with the encoder"
                ) from None
        if source is None and path.suffix == ".safetensors" and path.is_file():
            saved = header_normalisation(path)
            if saved is not None:
                spec["mean"], spec["std"] = saved
                source = "safetensors header"
        spec.setdefault("mean", list(IMAGENET_MEAN))
        spec.setdefault("std", list(IMAGENET_STD))
        spec["normalisation"] = source or "ImageNet (default)"
    spec["mean"], spec["std"] = [float(v) for v in _as_list(spec["mean"])], [float(v) for v in _as_list(spec["std"])]
    if not all(math.isfinite(v) for v in spec["mean"]) or not all(math.isfinite(v) and v > 0 for v in spec["std"]):
        origin = spec["normalisation"] if spec["normalisation"] != "given" else "--encoder"
        raise ConfigError(
            f"encoder {name}: mean {spec['mean']} and std {spec['std']} ({origin}) must be finite numbers and every std above 0"
        )
    spec["stem"] = str(spec.get("stem", STEMS[0]))
    if spec["stem"] not in STEMS:
        raise ConfigError(
            f"encoder {name}: stem={spec['stem']!r}; choose replicate (the grey image fed as three channels, each normalised) or sum (conv1 summed over its channels)"
        )
    return spec


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def identity(spec: Dict[str, Any]) -> Dict[str, Any]:
    """What an external row's results depend on (hashed into its evaluations' keys): not where the file lies."""
    return {
        "sha256": spec["sha256"],
        "mean": spec["mean"],
        "std": spec["std"],
        "prefix": spec.get("prefix"),
        "stem": spec.get("stem", STEMS[0]),
        "external_version": EXTERNAL_VERSION,
    }


def channel_statistics(values: Sequence[float], channels: int, what: str, name: str) -> List[float]:
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if len(values) == 3 and channels == 1:
        return [sum(values) / 3]
    raise ConfigError(
        f"encoder {name}: {what} has {len(values)} values but the suite's images have {channels} channels; give 1 or {channels}"
    )


def load_external(name: str, spec: Dict[str, Any], in_channels: int) -> Tuple[ResNetTrunk, Dict[str, Any]]:
    """(trunk for ``in_channels``-channel images, metadata as ``pretrain.load_encoder`` returns) of an ``encoders``
    entry resolved by :func:`resolve_spec`; ConfigError naming the file for any problem."""
    path = Path(spec["path"])
    if not path.is_file():
        raise ConfigError(
            f"encoder {name}: {path} does not exist; give the path of its weights file (--encoder {name}=PATH)"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != spec["sha256"]:  # the bytes that are loaded, not a cached hash of the path
        raise ConfigError(
            f"encoder {name}: {path} has changed since this run was planned (SHA-256 differs); run the command again"
        )
    arch, prefix, trunk_state = find_trunk(read_weights(path, data), path, spec.get("prefix"))
    stem = trunk_state["conv1.weight"]
    # replicated grey input: the trunk keeps its three channels and Normalize broadcasts the image to them
    channels = (
        3 if stem.shape[1] == 3 and in_channels == 1 and spec.get("stem", STEMS[0]) == "replicate" else in_channels
    )
    try:
        trunk_state["conv1.weight"] = adapt_stem(stem, channels)
    except ValueError as err:
        raise ConfigError(f"{path}: {err} (the suite's images have {in_channels} channels)") from None
    trunk = ResNetTrunk(arch, channels)
    trunk.load_state_dict(trunk_state, strict=False)  # only num_batches_tracked may be absent (find_trunk checked)
    meta = {
        "method": name,
        "backbone": arch,
        "in_channels": channels,
        "image_size": None,
        "mean": channel_statistics(spec["mean"], channels, "mean", name),
        "std": channel_statistics(spec["std"], channels, "std", name),
        "external": {
            "path": str(path),
            "sha256": spec["sha256"],
            "prefix": prefix,
            "file_channels": int(stem.shape[1]),
            "normalisation": spec["normalisation"],
            "stem": spec.get("stem", STEMS[0]),
        },
    }
    return trunk, meta
