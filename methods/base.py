"""The shared base class of every pretraining method (one Lightning module per method).

A method subclasses :class:`SSLMethod`, declares its hyperparameters as a dataclass ``Config`` (defaults are the
paper's), builds its heads in ``build()`` and computes its loss from the augmented views in ``compute_loss``.
Everything else is shared and therefore identical across methods: the ResNet trunk, the batched view
augmentation, the optimiser (LARS or SGD/AdamW) with per-step warm-up + cosine schedule, the parameter groups that
exclude biases and normalisation layers from weight decay, the EMA hook, logging and the exported encoder.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters, update_momentum
from lightly.utils.dist import world_size
from torch import nn

from medssl.nn.augment import Normalize, augment_view, resize, view_configs
from medssl.nn.backbone import ResNetTrunk
from medssl.nn.optim import SyncFreeLARS, check_optimizer
from methods.momentum import check_momentum_settings, cosine_momentum


@dataclasses.dataclass
class PretrainProtocol:
    """The part of a suite that every method shares."""

    backbone: str = "resnet18"
    in_channels: int = 1
    image_size: int = 64
    epochs: int = 1
    steps_per_epoch: int = 1
    # the CoBooM paper's optimiser (official LARSSGD: lr 0.02 at batch 64, weight decay 1.5e-6, trust 0.001)
    optimizer: Dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"name": "lars", "lr": 0.02, "weight_decay": 1.5e-6}
    )
    schedule: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"name": "warmup_cosine", "warmup_epochs": 0})
    augment: Dict[str, Any] = dataclasses.field(default_factory=dict)
    mean: Sequence[float] = (0.5,)
    std: Sequence[float] = (0.25,)
    channels_last: bool = False

    @property
    def total_steps(self) -> int:
        return max(1, self.epochs * self.steps_per_epoch)


@dataclasses.dataclass
class MethodConfig:
    """Hyperparameters of a method; subclasses add fields with the paper's defaults."""


@torch.no_grad()
def estimate_batchnorm_statistics(
    network: nn.Module, inputs, images: torch.Tensor, batch_size: int, generator: torch.Generator
) -> None:
    """Replace the running statistics of ``network``'s BatchNorm layers by their cumulative average (BatchNorm's
    ``momentum=None``) over one pass of ``images`` in batches of ``batch_size`` (order from ``generator``), each
    batch turned into network inputs by ``inputs``; weights are unchanged, momenta restored, eval mode on exit.
    What a frozen encoder that was never trained needs (``methods/supervised.py``)."""
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    network.train()
    for batch in torch.randperm(len(images), generator=generator).split(batch_size):
        network(inputs(images[batch]))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    network.eval()


class SSLMethod(pl.LightningModule):
    #: registry name, set by the registry
    name: str = "base"
    Config = MethodConfig
    #: number of augmented views per image fed to ``compute_loss``
    n_views: int = 2
    #: False for methods that produce an encoder without training (supervised-from-scratch)
    needs_pretraining: bool = True
    #: what the method trains on: "2d" (images; the suites of Tables 1/2) or "ct" (3D volumes; suites with
    #: ``track: ct``, medssl/run/ct.py). A suite of the other track refuses the method before any work
    track: str = "2d"
    #: augmentation settings that override the suite's for this method (e.g. BYOL's asymmetric blur)
    view_overrides: Dict[str, Any] = {}
    #: False for methods whose official code keeps per-process BatchNorm statistics on purpose under DDP (MoCo's
    #: shuffle-BN: a query and its key must not share batch statistics); the others synchronise BatchNorm on GPUs
    sync_batchnorm: bool = True
    #: True for a method whose step leaves some parameters without a gradient by design (PCRLv2's one random decoder
    #: level per step): DDP then looks for unused parameters, which costs a graph traversal per step
    ddp_find_unused_parameters: bool = False
    #: True where the trunk is trained inside a larger network but exported and evaluated without it (MLVICX's
    #: attention block after every stage): its BatchNorm running statistics were collected on inputs the plain trunk
    #: never produces, so they are re-estimated on the plain trunk before export and before every monitor probe
    reestimate_exported_batchnorm: bool = False
    #: small settings (heads, queues, crops) under which every generic test (docs/add-a-method.md) trains the method in
    #: seconds on a CPU: a registered method is in those tests by construction, without editing a test file
    test_params: Dict[str, Any] = {}
    #: bump when a code change alters what the method trains: it is part of the pretraining hash, so cached
    #: encoders and results of the old code are not reused
    version: int = 1
    #: a torch.compile backend ("inductor" for ``--compile``), set before training: ``compute_loss`` is compiled in
    #: ``setup``, i.e. in every training process after Lightning has started it
    compile_backend: Optional[str] = None

    def __init__(self, config: MethodConfig, protocol: PretrainProtocol):
        super().__init__()
        self.config = config
        self.protocol = protocol
        self.backbone = self.build_trunk()
        self.normalize = Normalize(protocol.mean, protocol.std)
        augment = {**protocol.augment, **self.view_overrides}
        self.view_augment = view_configs(augment, self.n_views)
        self.build()
        check_momentum_settings(
            type(self).__name__,
            config,
            bool(self.momentum_pairs()),
            type(self).ema_momentum is not SSLMethod.ema_momentum,
        )
        if protocol.channels_last:
            self.to(memory_format=torch.channels_last)
        self._compiled_loss = None

    # ----- to implement -------------------------------------------------------------------------------------
    def build_trunk(self) -> nn.Module:
        """The encoder the method trains and exports: the suite's ResNet trunk (vox2vec3d: its FPN3d)."""
        return ResNetTrunk(self.protocol.backbone, self.protocol.in_channels)

    def build(self) -> None:
        """Create heads and auxiliary modules (the backbone exists already)."""

    def compute_loss(self, views: List[torch.Tensor], images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Return a dict with at least ``loss``; ``views`` are normalised, ``images`` the uint8 batch."""
        raise NotImplementedError

    def finish_encoder(self, images: torch.Tensor, batch_size: int, seed: int) -> None:
        """Called once before the encoder is exported, after training (or instead of it where ``needs_pretraining``
        is False), with the pretraining corpus (uint8) and the suite's batch size. By default the trunk keeps the
        running statistics of its training, unless ``reestimate_exported_batchnorm`` asks for new ones."""
        if self.reestimate_exported_batchnorm:
            self.estimate_trunk_statistics(self.backbone, images, batch_size, seed)

    def estimate_trunk_statistics(self, trunk: nn.Module, images: torch.Tensor, batch_size: int, seed: int) -> None:
        """Give ``trunk`` (the backbone or a copy of it) the BatchNorm statistics of one pass over ``images`` seen
        through the method's ``n_views`` training views (``estimate_batchnorm_statistics``). The random number
        generators are forked and seeded with ``seed``, so the result is the same wherever in a run, or a resumed
        run, this is called, and training's own random stream is untouched."""
        devices = [self.device] if self.device.type == "cuda" else []

        def training_views(batch: torch.Tensor) -> torch.Tensor:
            return torch.cat(self.make_views(batch.to(self.device))[: self.n_views])

        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            estimate_batchnorm_statistics(
                trunk, training_views, images, batch_size, torch.Generator().manual_seed(seed)
            )

    def momentum_pairs(self) -> List[tuple]:
        """(online module, EMA module) pairs updated after every optimiser step."""
        return [(getattr(self, name), getattr(self, name + "_target")) for name in getattr(self, "_ema_names", ())]

    def make_ema_targets(self, *names: str) -> None:
        """Create frozen copies ``<name>_target`` of the named online modules, tracked by ``momentum_pairs``."""
        for name in names:
            target = copy.deepcopy(getattr(self, name))
            deactivate_requires_grad(target)
            setattr(self, name + "_target", target)
        self._ema_names = tuple(names)

    # ----- shared machinery ---------------------------------------------------------------------------------
    def make_views(self, images: torch.Tensor) -> List[torch.Tensor]:
        """The inputs of ``compute_loss``: the ``n_views`` augmented, normalised views first; methods may append
        more (local views, restoration targets, pixel coordinates) and document their layout."""
        return self.in_memory_format(
            [self.normalize(augment_view(images, self.protocol.image_size, cfg)) for cfg in self.view_augment]
        )

    def in_memory_format(self, tensors: List[torch.Tensor]) -> List[torch.Tensor]:
        """4-D image tensors in channels-last layout when the protocol asks for it (faster convolutions on GPU)."""
        if not self.protocol.channels_last:
            return tensors
        return [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in tensors]

    def unaugmented(self, images: torch.Tensor) -> torch.Tensor:
        """The whole image resized to the training resolution and normalised (reconstruction targets)."""
        return self.normalize(resize(images, self.protocol.image_size))

    def setup(self, stage: str) -> None:
        """Compiles ``compute_loss`` when ``compile_backend`` is set: everything a method runs per step after the
        views (trunk, heads, EMA targets, decoders, the loss), not only the trunk's forward. Views of a step keep
        their shapes from step to step (SwAV's global and local sizes included), so it compiles once; queue and
        codebook bookkeeping in Python becomes graph breaks, not errors. Subclasses that override ``setup`` call
        this one."""
        if self.compile_backend and self._compiled_loss is None:
            self._compiled_loss = torch.compile(self.compute_loss, backend=self.compile_backend, dynamic=False)

    def __getstate__(self):
        # a compiled function does not pickle (ddp_spawn pickles the module); each process compiles in setup
        return {**super().__getstate__(), "_compiled_loss": None}

    def training_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        losses = (self._compiled_loss or self.compute_loss)(self.make_views(images), images)
        self.log_losses(losses, len(images))
        return losses["loss"]

    def log_losses(self, losses: Dict[str, torch.Tensor], batch_size: int) -> None:
        """Keep a step's loss terms for medssl.pretrain.callbacks.DivergenceGuard and log them (progress bar: the loss)."""
        self.last_loss_terms = {k: v.detach() for k, v in losses.items()}
        self.log_dict(
            {f"train/{k}": v.detach().float() for k, v in losses.items()},
            prog_bar=False,
            on_step=True,
            on_epoch=True,
            batch_size=batch_size,
        )
        self.log(
            "loss", losses["loss"].detach().float(), prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size
        )

    def full_precision(self):
        """A context with autocast off, for loss terms that lose accuracy in bf16/fp16: softmax over similarity
        logits (NT-Xent, InfoNCE), Sinkhorn's exponentials, batch variances and covariances (VICReg). Callers pass
        fp32 tensors in."""
        return torch.autocast(device_type=self.device.type, enabled=False)

    def ema_momentum(self, base: float, step: Optional[int] = None) -> float:
        """The EMA coefficient of the momentum targets at ``step`` (default: the current one): BYOL's cosine from
        ``base`` (the config's ``ema_base``) to 1 over training. Override for another schedule (MoCo's constant)."""
        return cosine_momentum(base, self.global_step if step is None else step, self.protocol.total_steps)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        pairs = self.momentum_pairs()
        if pairs:
            m = self.ema_momentum(getattr(self.config, "ema_base", None))
            for online, target in pairs:
                update_momentum(online, target, m)

    def configure_optimizers(self):
        trainable = [m for name, m in self.named_children() if name not in self.frozen_children()]
        decay, no_decay = get_weight_decay_parameters(trainable)
        decay = [p for p in decay if p.requires_grad]
        no_decay = [p for p in no_decay if p.requires_grad]
        check_optimizer(self.protocol.optimizer)
        opt = dict(self.protocol.optimizer)
        name, lr = opt.pop("name", "lars"), float(opt.pop("lr"))
        wd = float(opt.pop("weight_decay", 0.0))
        groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        if name == "lars":
            # lightly's LARS (its updates, without host syncs: medssl.nn.optim) skips the trust ratio for groups with
            # weight_decay 0: that is how biases and norms are excluded (check_optimizer refused a LARS without
            # weight decay, which would be plain SGD everywhere)
            optimizer = SyncFreeLARS(
                groups,
                lr=lr,
                momentum=float(opt.pop("momentum", 0.9)),
                trust_coefficient=float(opt.pop("trust_coefficient", 0.001)),
            )
        elif name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=float(opt.pop("momentum", 0.9)))
        elif name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr)
        elif name == "adam":
            optimizer = torch.optim.Adam(groups, lr=lr)
        else:
            raise ValueError(f"unknown optimizer {name!r}; choose lars, sgd, adam or adamw")
        schedule = dict(self.protocol.schedule)
        warmup = int(round(float(schedule.get("warmup_epochs", 0)) * self.protocol.steps_per_epoch))
        total = self.protocol.total_steps
        final = float(schedule.get("final_lr_ratio", 0.0))
        kind = schedule.get("name", "warmup_cosine")

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if kind == "constant":
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

        if kind not in ("warmup_cosine", "constant"):
            raise ValueError(f"unknown schedule {kind!r}; choose warmup_cosine or constant")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def frozen_children(self) -> Sequence[str]:
        """Names of child modules the optimiser must not see (EMA targets)."""
        return [name for name, m in self.named_children() if name.endswith("_target") or name.startswith("target_")]

    def encoder_state_dict(self) -> Dict[str, torch.Tensor]:
        """The encoder evaluated downstream (the online/context backbone)."""
        return {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}

    def epoch_statistics(self) -> Dict[str, float]:
        """Extra per-epoch diagnostics stored with the checkpoint (e.g. codebook usage)."""
        return {}


def byol_similarity_loss(p: torch.Tensor, z: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """BYOL's regression loss 2 - 2 cos(p, z) averaged over the batch (Grill et al. 2020, eq. 2).

    With ``stop_gradient`` the target ``z`` is a constant, as for an EMA target; without it both sides learn.
    Computed in fp32 with autocast off whatever the inputs' precision: CUDA autocast upcasts ``cosine_similarity``
    but CPU autocast does not, and in bf16 the loss reads 0 once the cosine passes about 0.9995.
    """
    target = z.detach() if stop_gradient else z
    with torch.autocast(device_type=p.device.type, enabled=False):
        return 2 - 2 * nn.functional.cosine_similarity(p.float(), target.float(), dim=-1).mean()


def gather_across_processes() -> bool:
    """The ``gather_distributed`` flag for lightly's batch-level losses (NT-Xent, VICReg, Sinkhorn): lightly checks
    the world size at every call, so the flag can be set when the module is built, before DDP starts its
    processes; a single process gathers nothing."""
    return dist.is_available()


def average_gradients_across_processes(module: nn.Module) -> None:
    """All-reduce the gradients of a module that is trained outside DDP's forward/backward (e.g. a GAN
    discriminator with its own optimiser, stepped in a hook): DDP's reducer only averages gradients of the
    backward pass that follows its own forward, so without this each process would train a different copy."""
    world = world_size()
    if world == 1:
        return
    for parameter in module.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world


def pooled(feature_map: torch.Tensor) -> torch.Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)
