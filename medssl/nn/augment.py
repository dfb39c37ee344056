"""Batched, device-side augmentations for SSL views and fine-tuning.

Images arrive as uint8 batches at their cached native resolution; every random transform is drawn per sample
but applied to the whole batch at once (one ``grid_sample`` for crop + flip, one grouped convolution for blur),
so the same code runs on CPU and keeps a GPU fed without per-sample Python work in data-loader workers.

Grayscale-aware: the intensity transforms are brightness, contrast, gamma, blur, noise and solarisation; no
colour jitter or grayscale conversion is applied to 1-channel images (DEVELOPERS decision for X-rays). For
3-channel images saturation/hue are not implemented: brightness/contrast act on all channels jointly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class AugmentConfig:
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    rotate_degrees: float = 0.0  # uniform in [-d, d] about the crop centre (PCRLv2's RandomRotation(10)); 0 disables
    intensity_p: float = 0.8  # probability of applying brightness/contrast/gamma jitter
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: float = 0.0  # log-uniform gamma in [1/(1+g), 1+g]; 0 disables
    blur_p: float = 0.5
    blur_sigma: Tuple[float, float] = (0.1, 2.0)  # in pixels of a 224-px image; rescaled to the output size
    solarize_p: float = 0.0
    noise_std: float = 0.0

    @classmethod
    def from_dict(cls, params: Optional[dict]) -> "AugmentConfig":
        params = dict(params or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown augmentation settings {sorted(unknown)}; known: {sorted(known)}")
        for key in ("crop_scale", "crop_ratio", "blur_sigma"):
            if key in params:
                params[key] = tuple(float(v) for v in params[key])
        return cls(**params)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1]; float input is passed through."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Whole-image resize (the un-augmented view used for evaluation and reconstruction targets)."""
    x = to_unit_float(images)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


@dataclasses.dataclass
class CropBoxes:
    """Per-sample crop boxes in normalised image coordinates ([-1, 1], ``grid_sample``'s convention).

    Box i covers ``centre_x[i] +- half_width[i]`` and ``centre_y[i] +- half_height[i]``; ``flip`` is -1 where the
    crop is mirrored; ``angle`` is a rotation in radians about the box centre. A point ``u`` of the output view
    (normalised, before flip) shows the image point ``centre + half_extent * u`` when the angle is 0.
    """

    centre_x: torch.Tensor
    centre_y: torch.Tensor
    half_width: torch.Tensor
    half_height: torch.Tensor
    flip: torch.Tensor
    angle: torch.Tensor


def draw_crop_boxes(n: int, cfg: AugmentConfig, generator=None, device="cpu") -> CropBoxes:
    """RandomResizedCrop boxes (area fraction and aspect ratio as torchvision), flips and rotations."""
    area = _uniform(n, cfg.crop_scale[0], cfg.crop_scale[1], generator, device)
    log_ratio = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator, device)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - width)
    cy = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - height)
    flip = torch.where(_bernoulli(n, cfg.hflip_p, generator, device), -1.0, 1.0)
    if cfg.rotate_degrees > 0:  # drawn only when enabled, so runs without rotation keep their random stream
        angle = _uniform(n, -cfg.rotate_degrees, cfg.rotate_degrees, generator, device) * (math.pi / 180)
    else:
        angle = torch.zeros(n, device=device)
    return CropBoxes(cx, cy, width, height, flip, angle)


def apply_crop_boxes(x: torch.Tensor, size: int, boxes: CropBoxes) -> torch.Tensor:
    """Resample every image of ``x`` inside its box to ``size`` x ``size`` (one batched ``grid_sample``)."""
    n = x.shape[0]
    cos, sin = torch.cos(boxes.angle), torch.sin(boxes.angle)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = boxes.half_width * boxes.flip * cos
    theta[:, 0, 1] = -boxes.half_height * sin
    theta[:, 1, 0] = boxes.half_width * boxes.flip * sin
    theta[:, 1, 1] = boxes.half_height * cos
    theta[:, 0, 2] = boxes.centre_x
    theta[:, 1, 2] = boxes.centre_y
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)


def random_resized_crop(x: torch.Tensor, size: int, cfg: AugmentConfig, generator=None) -> torch.Tensor:
    """Per-sample RandomResizedCrop with horizontal flip (and rotation if configured)."""
    return apply_crop_boxes(x, size, draw_crop_boxes(x.shape[0], cfg, generator, x.device))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: Optional[float] = None) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (in pixels) per sample; sigma <= 0 leaves a sample unchanged.

    The kernel is truncated at ceil(3 x the batch's largest sigma) taps each side. ``max_sigma`` (an upper bound of
    ``sigma`` known on the host, e.g. the top of the configured range) sizes the convolution without reading
    ``sigma`` back from the device, which would stop the CPU until the GPU catches up at every view: taps beyond
    the batch's own radius get weight 0, which is the same blur."""
    n, c, h, w = x.shape
    if max_sigma is None:
        max_sigma = float(sigma.max())
    radius = max(1, int(math.ceil(3 * max_sigma)))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe_sigma = sigma.clamp(min=1e-3).to(x.dtype)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / safe_sigma) ** 2)
    batch_radius = torch.ceil(3 * sigma.max()).clamp(min=1).to(x.dtype)
    kernel = torch.where(offsets.abs()[None] <= batch_radius, kernel, torch.zeros_like(kernel))
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype)[None].expand(n, -1)
    kernel = torch.where((sigma > 0)[:, None], kernel, identity)
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel) group
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def intensity_jitter(x: torch.Tensor, cfg: AugmentConfig, generator=None) -> torch.Tensor:
    n, device = x.shape[0], x.device
    apply = _bernoulli(n, cfg.intensity_p, generator, device)[:, None, None, None]
    brightness = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator, device)[:, None, None, None]
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator, device)[:, None, None, None]
    out = (x * brightness).clamp(0, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    if cfg.gamma > 0:
        log_g = _uniform(n, -math.log1p(cfg.gamma), math.log1p(cfg.gamma), generator, device)[:, None, None, None]
        out = out.clamp(min=1e-6) ** torch.exp(log_g)
    return torch.where(apply, out, x)


def photometric(x: torch.Tensor, cfg: AugmentConfig, generator=None) -> torch.Tensor:
    """The non-spatial part of a view: intensity jitter, blur, solarisation, noise; [0,1] in and out."""
    x = intensity_jitter(x, cfg, generator)
    if cfg.blur_p > 0:
        n = x.shape[0]
        scale = x.shape[-1] / 224
        sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], generator, x.device) * scale
        sigma = torch.where(_bernoulli(n, cfg.blur_p, generator, x.device), sigma, torch.zeros_like(sigma))
        x = gaussian_blur(x, sigma, max_sigma=max(cfg.blur_sigma) * scale)
    if cfg.solarize_p > 0:
        solarize = _bernoulli(x.shape[0], cfg.solarize_p, generator, x.device)[:, None, None, None]
        x = torch.where(solarize & (x >= 0.5), 1 - x, x)
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * torch.randn(x.shape, generator=generator, device=x.device)
    return x.clamp(0, 1)


def augment_view(images: torch.Tensor, size: int, cfg: AugmentConfig, generator=None) -> torch.Tensor:
    """One augmented view in [0,1] of a uint8 or float batch: crop+flip, intensity, blur, solarise, noise."""
    return photometric(random_resized_crop(to_unit_float(images), size, cfg, generator), cfg, generator)


def cutout(x: torch.Tensor, holes: int, hole_fraction: float, generator=None, fill: float = 0.0) -> torch.Tensor:
    """Set ``holes`` square patches of side ``hole_fraction`` x image width per sample to ``fill`` (DeVries &
    Taylor 2017; PCRLv2 uses 3 holes of 32 px on 224-px views). Patches may overlap and be clipped at the border."""
    n, _, h, w = x.shape
    side = max(1, int(round(hole_fraction * w)))
    ys = torch.randint(0, h, (n, holes), generator=generator, device=x.device)
    xs = torch.randint(0, w, (n, holes), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device)[None, None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, None, :]
    top, left = (ys - side // 2)[:, :, None, None], (xs - side // 2)[:, :, None, None]
    inside = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)).any(1, keepdim=True)
    return torch.where(inside, torch.full_like(x, fill), x)


def view_configs(augment: dict, n_views: int) -> Sequence[AugmentConfig]:
    """Per-view configs: a list value in the suite (e.g. ``blur_p: [1.0, 0.1]``) gives one value per view."""
    configs = []
    for v in range(n_views):
        params = {}
        for key, value in (augment or {}).items():
            per_view = isinstance(value, list) and key not in ("crop_scale", "crop_ratio", "blur_sigma")
            per_view = per_view or (isinstance(value, list) and value and isinstance(value[0], list))
            params[key] = value[v % len(value)] if per_view else value
        configs.append(AugmentConfig.from_dict(params))
    return configs


class Normalize(torch.nn.Module):
    """(x - mean) / std with fixed per-channel statistics (a buffer, so it follows the module's device)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[None, :, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
