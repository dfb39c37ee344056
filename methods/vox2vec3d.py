"""vox2vec in 3D (Goncharov et al., MICCAI 2023): voxel-level contrastive pretraining of a 3D FPN on CT.

Faithful to the official code (github mishgon/vox2vec; facts in ../shared/specs/vox2vec3d.md):

* **FPN3d** (nn/fpn.py, nn/blocks.py): a 3x3x3 stem conv to ``base_channels``; per encoder level two pre-activation
  residual blocks (BN-ReLU-Conv3-BN-ReLU-Conv3 + identity, convs with bias), then MaxPool3d(2, ceil_mode) and a
  1x1x1 conv doubling the channels; two blocks at the bottom; per decoder level a 1x1x1 conv halving the channels,
  nearest x2 upsampling, a crop to the skip's shape, the skip through its own 1x1x1 conv added, two blocks. Output:
  the decoder levels 0 .. L-2 and the bottom, level i with ``base * 2**i`` channels at stride 2**i. FPN3d(1, 16, 6)
  has 47.6 M parameters, FPN3d(1, 8, 5) 2.98 M (tested).
* **Voxel embedding** (nn/functional/fpn.py): for voxel v, level i's vector at v // 2**i, concatenated over levels
  (nearest upsampling of every level; 1008 dims for base 16 and 6 levels). **Projector** (pretrain/model.py):
  (Linear D->D, BatchNorm1d, ReLU) x 2, Linear D->128; BatchNorm over the voxels sampled in the step.
* **Sampling** (pretrain/data.py): one CT per step and ``pairs_per_step`` pairs of views from it. An anchor is a
  random body voxel; each view is a ``patch_size`` box drawn uniformly among the boxes that contain the anchor (the
  only overlap guarantee); the positives are up to ``max_voxels_per_pair`` random body voxels inside both boxes, the
  same physical voxel in both views. Deviation: the official code keeps an int64 list of every body voxel of each CT
  and filters it per pair; here the anchor is drawn by rejection from the body mask and the positives from the mask
  of the two boxes' intersection: the same distributions without the list (memory). Body mask (processing/ct.py):
  everything but the air (< -500 HU) connected to the axial border of the volume: lungs and bowel gas are body.
* **Augmentations** per view, on HU, in the official order and ranges, with MONAI's transforms: with p=0.5 either
  an axial Gaussian blur (sigma ~ U(0.25, 1.5), ``GaussianSmooth``) or an axial sharpening (b + alpha (b - G_0.5(b)),
  b = G_sigma1, sigma1 ~ U(0.5, 1), alpha ~ U(10, 30), ``GaussianSharpen``); with p=0.5 Gaussian noise of sd ~ U(0,
  30) HU (``RandGaussianNoise(sample_std=True)``); with p=0.8 a random window (low ~ U(-1350, -1000), high ~ U(300,
  1000)), else [-1350, 1000]; clipped and scaled to [0, 1] (``ScaleIntensityRange``). No flips, rotations or
  rescaling (the official code has none, whatever a comment there says).
* **Loss**: symmetric InfoNCE at temperature 0.1 over all positives of the step, every other sampled voxel of both
  views a negative = lightly's ``NTXentLoss(temperature=0.1)`` without memory bank. **Optimiser**: Adam, lr 3e-4, no
  weight decay, no schedule (the suite's optimiser settings), gradient norm clipped at 1.0, fp32 in the official
  code.

The encoder evaluated downstream is the FPN (all of its levels). Deviation for DDP (the official code trains on one
GPU): each process samples its own CT and the negatives are gathered across processes. Registered as ``vox2vec3d``
with ``track = "ct"``: only CT suites (``track: ct``, medssl/run/ct.py) list it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import MethodConfig, SSLMethod, gather_across_processes

BODY_THRESHOLD_HU = -500
# the official window of evaluation and the ranges of the random pretraining window (HU)
WINDOW_HU = (-1350.0, 1000.0)
RANDOM_LOW_HU = (-1350.0, -1000.0)
RANDOM_HIGH_HU = (300.0, 1000.0)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: BN-ReLU-Conv-BN-ReLU-Conv plus the identity (channels unchanged)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        padding = kernel_size // 2
        self.layers = nn.Sequential(
            nn.BatchNorm3d(channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, kernel_size, padding=padding),
            nn.BatchNorm3d(channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(channels, channels, kernel_size, padding=padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


def _crop_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` cut to ``like``'s spatial shape (upsampling a ceil-mode pooled map can overshoot by one voxel)."""
    return x[..., : like.shape[-3], : like.shape[-2], : like.shape[-1]]


class FPN3d(nn.Module):
    def __init__(self, in_channels: int = 1, base_channels: int = 16, num_levels: int = 6, blocks: int = 2):
        super().__init__()
        c = base_channels
        self.stem = nn.Conv3d(in_channels, c, kernel_size=3, padding=1)
        encoder, down, up, skip, decoder = [], [], [], [], []
        for _ in range(num_levels - 1):
            encoder.append(nn.Sequential(*[ResBlock3d(c) for _ in range(blocks)]))
            down.append(nn.Sequential(nn.MaxPool3d(kernel_size=2, ceil_mode=True), nn.Conv3d(c, 2 * c, kernel_size=1)))
            up.insert(0, nn.Sequential(nn.Conv3d(2 * c, c, kernel_size=1), nn.Upsample(scale_factor=2, mode="nearest")))
            skip.insert(0, nn.Conv3d(c, c, kernel_size=1))
            decoder.insert(0, nn.Sequential(*[ResBlock3d(c) for _ in range(blocks)]))
            c *= 2
        self.encoder, self.down = nn.ModuleList(encoder), nn.ModuleList(down)
        self.bottom = nn.Sequential(*[ResBlock3d(c) for _ in range(blocks)])
        self.up, self.skip, self.decoder = nn.ModuleList(up), nn.ModuleList(skip), nn.ModuleList(decoder)
        self.in_channels, self.base_channels, self.num_levels = in_channels, base_channels, num_levels
        self.level_channels = tuple(base_channels * 2**i for i in range(num_levels))
        self.embedding_dim = sum(self.level_channels)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Feature maps of levels 0 .. L-1 (finest first; the last is the bottom)."""
        x = self.stem(x)
        skips = []
        for block, down in zip(self.encoder, self.down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottom(x)
        levels = [x]
        for up, skip, block in zip(self.up, self.skip, self.decoder):
            fmap = skips.pop()
            x = block(_crop_to(up(x), fmap) + skip(fmap))
            levels.insert(0, x)
        return levels


def voxel_embeddings(levels: Sequence[torch.Tensor], patch_index: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
    """(N x D) vectors of voxels ``voxels`` (N x 3, patch coordinates) of patches ``patch_index`` (N): level i's
    vector at voxel // 2**i, concatenated over the levels."""
    out = []
    for i, fmap in enumerate(levels):
        where = voxels // (2**i)
        out.append(fmap[patch_index, :, where[:, 0], where[:, 1], where[:, 2]])
    return torch.cat(out, dim=1)


class Projector(nn.Module):
    def __init__(self, dim: int, output_dim: int = 128):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, dim),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.layers(x), dim=1)


class FPNLinearHead(nn.Module):
    """Evaluation head (nn/fpn.py): a 1x1x1 conv per level to the classes (bias at level 0 only), each coarser map
    upsampled (nearest) and added to the finer one: a linear classifier on the voxel embedding (tested)."""

    def __init__(self, level_channels: Sequence[int], num_classes: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv3d(c, num_classes, kernel_size=1, bias=i == 0) for i, c in enumerate(level_channels)
        )

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        maps = [layer(x) for x, layer in zip(levels, self.layers)]
        x = maps[-1]
        for fmap in reversed(maps[:-1]):
            x = _crop_to(F.interpolate(x, scale_factor=2, mode="nearest"), fmap) + fmap
        return x


class FPNNonLinearHead(nn.Module):
    """Evaluation head (nn/fpn.py): the FPN decoder again with 1x1x1 kernels: a residual block at the bottom, then
    per level a 1x1x1 conv halving the channels, nearest x2 upsampling, the level added through its own 1x1x1 conv,
    a residual block; a final 1x1x1 conv to the classes."""

    def __init__(self, level_channels: Sequence[int], num_classes: int):
        super().__init__()
        self.bottom = ResBlock3d(level_channels[-1], kernel_size=1)
        finer = list(reversed(level_channels[:-1]))
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv3d(2 * c, c, kernel_size=1), nn.Upsample(scale_factor=2, mode="nearest"))
            for c in finer
        )
        self.skip = nn.ModuleList(nn.Conv3d(c, c, kernel_size=1) for c in finer)
        self.blocks = nn.ModuleList(ResBlock3d(c, kernel_size=1) for c in finer)
        self.final = nn.Conv3d(level_channels[0], num_classes, kernel_size=1)

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.bottom(levels[-1])
        for up, skip, block, fmap in zip(self.up, self.skip, self.blocks, reversed(levels[:-1])):
            x = block(_crop_to(up(x), fmap) + skip(fmap))
        return self.final(x)


# ----- data: body mask, pairs of views, augmentations ----------------------------------------------------------------
def body_mask(volume: np.ndarray) -> np.ndarray:
    """Everything but the exterior air: air (< -500 HU) components that touch the volume's x or y border."""
    from scipy import ndimage

    air = volume < BODY_THRESHOLD_HU
    components, _ = ndimage.label(air)
    border = np.unique(
        np.concatenate(
            [components[0].ravel(), components[-1].ravel(), components[:, 0].ravel(), components[:, -1].ravel()]
        )
    )
    return ~np.isin(components, border[border > 0])


def sample_box(
    shape: Sequence[int], patch: Sequence[int], anchor: Sequence[int], rng: np.random.Generator
) -> np.ndarray:
    """Start corner of a ``patch``-sized box inside ``shape``, uniform among those containing ``anchor``."""
    low = [max(0, a - p + 1) for a, p in zip(anchor, patch)]
    high = [min(a, s - p) for a, s, p in zip(anchor, shape, patch)]
    return np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])


def random_body_voxel(body: np.ndarray, rng: np.random.Generator, tries: int = 10000) -> np.ndarray:
    for _ in range(tries):
        voxel = np.array([rng.integers(0, s) for s in body.shape])
        if body[tuple(voxel)]:
            return voxel
    raise ValueError("no body voxel found: the volume holds no voxel above -500 HU inside the body")


def sample_pair(
    volume: np.ndarray, body: np.ndarray, patch: Sequence[int], max_voxels: int, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(patch 1, patch 2, positives in patch 1's coordinates, the same voxels in patch 2's), raw HU."""
    if any(s < p for s, p in zip(volume.shape, patch)):
        raise ValueError(f"a volume of shape {volume.shape} is smaller than the patch {tuple(patch)}")
    anchor = random_body_voxel(body, rng)
    first, second = sample_box(volume.shape, patch, anchor, rng), sample_box(volume.shape, patch, anchor, rng)
    low, high = np.maximum(first, second), np.minimum(first, second) + np.asarray(patch)
    inside = np.argwhere(body[low[0] : high[0], low[1] : high[1], low[2] : high[2]]) + low  # body voxels in both boxes
    chosen = inside[rng.choice(len(inside), size=min(max_voxels, len(inside)), replace=False)]
    crop = lambda start: np.asarray(
        volume[start[0] : start[0] + patch[0], start[1] : start[1] + patch[1], start[2] : start[2] + patch[2]]
    )
    return crop(first), crop(second), chosen - first, chosen - second


def augment_view(patch_hu: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """One view's intensity augmentations on HU (module docstring), then the window to [0, 1]: 1 x X x Y x Z."""
    from monai.transforms import GaussianSharpen, GaussianSmooth, RandGaussianNoise, ScaleIntensityRange

    x = torch.from_numpy(np.asarray(patch_hu, dtype=np.float32))[None]
    if rng.uniform() < 0.5:
        if rng.uniform() < 0.5:
            sigma = rng.uniform(0.25, 1.5)
            x = GaussianSmooth(sigma=(sigma, sigma, 0.0))(x)
        else:
            sigma = rng.uniform(0.5, 1.0)
            x = GaussianSharpen(sigma1=(sigma, sigma, 0.0), sigma2=(0.5, 0.5, 0.0), alpha=rng.uniform(10.0, 30.0))(x)
    if rng.uniform() < 0.5:
        noise = RandGaussianNoise(prob=1.0, mean=0.0, std=30.0, sample_std=True)
        noise.set_random_state(seed=int(rng.integers(2**31)))
        x = noise(x)
    low, high = (rng.uniform(*RANDOM_LOW_HU), rng.uniform(*RANDOM_HIGH_HU)) if rng.uniform() < 0.8 else WINDOW_HU
    return torch.as_tensor(
        ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)(x), dtype=torch.float32
    )


def sample_step(
    volume: np.ndarray, body: np.ndarray, patch: Sequence[int], pairs: int, max_voxels: int, rng: np.random.Generator
) -> Dict[str, torch.Tensor]:
    """One training step's batch from one CT: ``pairs`` augmented view pairs and their positives."""
    first, second, voxels_first, voxels_second, owner = [], [], [], [], []
    for index in range(pairs):
        a, b, va, vb = sample_pair(volume, body, patch, max_voxels, rng)
        first.append(augment_view(a, rng))
        second.append(augment_view(b, rng))
        voxels_first.append(torch.from_numpy(va))
        voxels_second.append(torch.from_numpy(vb))
        owner.append(torch.full((len(va),), index, dtype=torch.long))
    return {
        "views_first": torch.stack(first),
        "views_second": torch.stack(second),
        "voxels_first": torch.cat(voxels_first).long(),
        "voxels_second": torch.cat(voxels_second).long(),
        "patch_index": torch.cat(owner),
    }


class VolumeSteps:
    """The pretraining stream: ``steps_per_epoch`` batches per epoch, batch k of epoch e drawn from the generator
    seeded with (seed, e, k): one CT chosen at random, ``pairs`` view pairs from it (:func:`sample_step`). A run
    resumed at an epoch's start therefore draws exactly the batches of the uninterrupted run (Lightning sets the
    epoch through :class:`EpochOfSteps`). Body masks are computed once per CT."""

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        patch: Sequence[int],
        pairs: int,
        max_voxels: int,
        steps_per_epoch: int,
        seed: int,
    ):
        self.volumes, self.patch, self.pairs, self.max_voxels = list(volumes), tuple(patch), int(pairs), int(max_voxels)
        self.steps_per_epoch, self.seed, self.epoch = int(steps_per_epoch), int(seed), 0
        self._bodies: Dict[int, np.ndarray] = {}
        small = [i for i, v in enumerate(self.volumes) if any(s < p for s, p in zip(v.shape, self.patch))]
        if small:
            raise ValueError(
                f"{len(small)} volumes are smaller than the patch {self.patch} (e.g. shape {self.volumes[small[0]].shape}); use a smaller patch_size or larger volumes"
            )

    def __len__(self) -> int:
        return self.steps_per_epoch

    def body(self, index: int) -> np.ndarray:
        if index not in self._bodies:
            self._bodies[index] = body_mask(np.asarray(self.volumes[index]))
        return self._bodies[index]

    def __iter__(self):
        for step in range(self.steps_per_epoch):
            rng = np.random.default_rng([self.seed, self.epoch, step])
            index = int(rng.integers(len(self.volumes)))
            yield sample_step(
                np.asarray(self.volumes[index]), self.body(index), self.patch, self.pairs, self.max_voxels, rng
            )


class EpochOfSteps(pl.Callback):
    """Tells a :class:`VolumeSteps` which epoch Lightning is in (also after a resume)."""

    def __init__(self, steps: VolumeSteps):
        self.steps = steps

    def on_train_epoch_start(self, trainer: pl.Trainer, module) -> None:
        self.steps.epoch = trainer.current_epoch


@dataclasses.dataclass
class Vox2Vec3dConfig(MethodConfig):
    base_channels: int = 16
    num_levels: int = 6
    patch_size: Tuple[int, int, int] = (128, 128, 32)
    pairs_per_step: int = 10
    max_voxels_per_pair: int = 1024
    output_dim: int = 128
    temperature: float = 0.1
    gradient_clip: float = 1.0


class Vox2Vec3d(SSLMethod):
    """vox2vec on the shared base: its trunk is an FPN3d (``build_trunk``), its steps take :class:`VolumeSteps`
    batches (views already augmented on the CPU, as the official data loader does) instead of 2D images, and it
    clips the gradient norm (``gradient_clip``). Optimiser and schedule are the suite's (the official: Adam 3e-4,
    constant)."""

    Config = Vox2Vec3dConfig
    track = "ct"

    def build_trunk(self) -> nn.Module:
        return FPN3d(self.protocol.in_channels, self.config.base_channels, self.config.num_levels)

    def build(self) -> None:
        from lightly.loss import NTXentLoss

        self.projector = Projector(self.backbone.embedding_dim, self.config.output_dim)
        # under DDP every process's voxels are negatives of the others' (each process samples its own CT)
        self.criterion = NTXentLoss(temperature=self.config.temperature, gather_distributed=gather_across_processes())

    def embed(self, views: torch.Tensor, patch_index: torch.Tensor, voxels: torch.Tensor) -> torch.Tensor:
        return self.projector(voxel_embeddings(self.backbone(views), patch_index, voxels))

    def compute_loss(self, views: Dict[str, torch.Tensor], images=None) -> Dict[str, torch.Tensor]:
        first = self.embed(views["views_first"], views["patch_index"], views["voxels_first"])
        second = self.embed(views["views_second"], views["patch_index"], views["voxels_second"])
        with self.full_precision():
            return {"loss": self.criterion(first.float(), second.float())}

    def training_step(self, batch, batch_idx):
        losses = (self._compiled_loss or self.compute_loss)(batch)
        self.log_losses(losses, len(batch["patch_index"]))
        return losses["loss"]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        self.clip_gradients(optimizer, gradient_clip_val=self.config.gradient_clip, gradient_clip_algorithm="norm")


def architecture(params: Dict[str, Any]) -> Dict[str, int]:
    """The FPN3d a CT method's settings describe (what a random-init row shares with it)."""
    return {"in_channels": 1, "base_channels": int(params["base_channels"]), "num_levels": int(params["num_levels"])}
