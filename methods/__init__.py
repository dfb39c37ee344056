"""Method registry: one entry per name a suite can list.

Adding a method = one file in ``methods/`` with an :class:`~methods.base.SSLMethod` subclass, plus one line in
``REGISTRY`` below (or a call to :func:`register_method` from your own code, or an entry
``name=module:Class`` in the environment variable ``MEDSSL_METHODS``, comma-separated, which every process of a
run, torchrun's and DDP's included, reads when it imports this package). Variants of one method (ablations)
are entries that point at the same class with different config values.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Dict, List, NamedTuple, Optional, Type

from methods.base import MethodConfig, PretrainProtocol, SSLMethod


class MethodEntry(NamedTuple):
    target: Any  # "module:Class" or the class itself
    overrides: Dict[str, Any]
    description: str
    label: str  # row name in the report tables (the CoBooM paper's where it has one)


REGISTRY: Dict[str, MethodEntry] = {
    "supervised": MethodEntry("methods.supervised:Supervised", {}, "random initialisation, no pretraining", "Sup."),
    "simclr": MethodEntry("methods.simclr:SimCLR", {}, "SimCLR, NT-Xent contrastive (Chen et al. 2020)", "SimCLR"),
    "byol": MethodEntry("methods.byol:BYOL", {}, "BYOL, EMA self-distillation (Grill et al. 2020)", "BYOL"),
    "swav": MethodEntry(
        "methods.swav:SwAV", {}, "SwAV, swapped cluster assignments with multi-crop (Caron et al. 2020)", "SwAV"
    ),
    "vicreg": MethodEntry(
        "methods.vicreg:VICReg",
        {},
        "VICReg, variance-invariance-covariance regularisation (Bardes et al. 2022)",
        "VICReg",
    ),
    "caid": MethodEntry("methods.caid:CAiD", {}, "CAiD, MoCo-v2 + context restoration (Taher et al. 2022)", "CAiD"),
    "pcrlv2": MethodEntry(
        "methods.pcrlv2:PCRLv2", {}, "PCRLv2, multi-scale pixel restoration + alignment (Zhou et al. 2023)", "PCRLv2"
    ),
    "dira": MethodEntry(
        "methods.dira:DiRA", {}, "DiRA, MoCo-v2 + restoration + adversary (Haghighi et al. 2022)", "DiRA"
    ),
    "mlvicx": MethodEntry(
        "methods.mlvicx:MLVICX", {}, "MLVICX, multi-level VICReg with context attention (Singh & Mishra 2024)", "MLVICX"
    ),
    "vox2vec2d": MethodEntry(
        "methods.vox2vec2d:Vox2Vec2d",
        {},
        "vox2vec, pixel-level FPN contrast, 2D variant (Goncharov et al. 2023)",
        "vox2vec",
    ),
    "vox2vec3d": MethodEntry(
        "methods.vox2vec3d:Vox2Vec3d",
        {},
        "vox2vec, voxel-level FPN3d contrast on CT (Goncharov et al. 2023; CT suites only)",
        "vox2vec",
    ),
    "coboom": MethodEntry(
        "methods.coboom:CoBooM", {}, "CoBooM with DiversiFuse and decoder (Singh & Mishra 2024)", "CoBooM w/ Dec."
    ),
    "coboom-nodec": MethodEntry(
        "methods.coboom:CoBooM", {"use_decoder": False}, "CoBooM without decoder", "CoBooM w/o Dec."
    ),
    "coboom-nodf": MethodEntry(
        "methods.coboom:CoBooM",
        {"use_decoder": False, "use_diversifuse": False},
        "CoBooM without DiversiFuse and decoder",
        "CoBooM w/o DF",
    ),
}


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def register_method(
    name: str,
    cls: Type[SSLMethod],
    overrides: Optional[Dict[str, Any]] = None,
    description: str = "",
    label: str = "",
    replace: bool = False,
) -> None:
    if name in REGISTRY and not replace:
        raise ValueError(f"method {name!r} is already registered; pass replace=True to override it")
    REGISTRY[name] = MethodEntry(
        cls, dict(overrides or {}), description or (cls.__doc__ or "").strip().split("\n")[0], label or name
    )


def method_label(name: str) -> str:
    """The row name of a method in the report tables (the CoBooM paper's where it has one); unknown names as given."""
    entry = REGISTRY.get(name)
    return entry.label if entry is not None else name


def method_names() -> List[str]:
    return list(REGISTRY)


def track_methods(track: str) -> List[str]:
    """The registered methods of one track: "2d" (image suites) or "ct" (CT suites, ``track: ct``)."""
    return [name for name in REGISTRY if method_class(name).track == track]


def method_class(name: str) -> Type[SSLMethod]:
    if name not in REGISTRY:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(REGISTRY)}")
    target = REGISTRY[name].target
    if isinstance(target, str):
        module, cls_name = target.split(":")
        target = getattr(importlib.import_module(module), cls_name)
    return target


def resolve_config(name: str, params: Optional[Dict[str, Any]] = None) -> MethodConfig:
    """The method's full config: class defaults <- registry overrides <- suite ``method_params``."""
    cls = method_class(name)
    values = {**REGISTRY[name].overrides, **(params or {})}
    known = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"method {name!r} has no settings {unknown}; its settings are {sorted(known)}")
    return cls.Config(**values)


def build_method(name: str, protocol: PretrainProtocol, params: Optional[Dict[str, Any]] = None) -> SSLMethod:
    cls = method_class(name)
    model = cls(resolve_config(name, params), protocol)
    model.name = name
    return model


ENVIRONMENT_VARIABLE = "MEDSSL_METHODS"


def register_from_environment(value: Optional[str] = None) -> List[str]:
    """Register the ``name=module:Class`` entries of ``MEDSSL_METHODS`` (or ``value``); the class is imported when
    the method is first used. Returns the names registered."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "") if value is None else value
    names = []
    for entry in filter(None, (part.strip() for part in value.split(","))):
        name, _, target = entry.partition("=")
        if not name or target.count(":") != 1:
            raise ValueError(
                f"{ENVIRONMENT_VARIABLE} entry {entry!r}: write name=module:Class, e.g. mine=my_methods:Mine"
            )
        REGISTRY[name.strip()] = MethodEntry(
            target.strip(), {}, f"{target.strip()} ({ENVIRONMENT_VARIABLE})", name.strip()
        )
        names.append(name.strip())
    return names


register_from_environment()
