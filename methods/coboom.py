"""CoBooM: codebook-guided bootstrapping (Singh & Mishra, MICCAI 2024, section 3; shared/papers/coboom-miccai2024.txt).

Architecture (paper, section 3 and Fig. 1), with our decisions from shared/specs/methods.md:

* Context encoder f_theta (online) and target encoder f_phi (EMA of f_theta, tau 0.996 -> 1 cosine, as the BYOL
  code base the official repo derives from). View a goes to f_theta, view b to f_phi; the loss is symmetrised by
  swapping the views (section 3.2, last sentence) and averaging the two assignments.
* Global path: z_theta = q_theta(g_theta(GAP(y_theta))) (projector + predictor), z_phi = g_phi(GAP(y_phi)).
  All heads are **three-layer** MLPs with output 256 (section 4), hidden width 4096 (official code). The
  official code uses two-layer heads; we follow the paper.
* Quantizer (section 3.1): the target map y_phi (B x 512 x h x w; 7 x 7 at 224 px) is split into its h*w spatial
  vectors, each replaced by its nearest codeword by **plain Euclidean distance** (the official code L2-normalises
  both sides first; the paper says Euclidean). K = 1024 codewords of D = 512. L_q = ||SG[y_phi] - e||^2 +
  alpha * ||y_phi - SG[e]||^2 with a straight-through estimator. The official code instead keeps an EMA
  codebook whose count update sums code *indices* and re-creates its parameters every step (spec 1, bugs 2b/2c);
  we learn the codebook by the codebook loss as the paper states. Because y_phi comes from the EMA encoder, the
  commitment term has no gradient path into any trained weight (it is logged, and it is zero-gradient exactly as
  in the official code); the codebook, DiversiFuse, p_theta and the decoder are trained.
* Codebook initialisation: ``data`` (default) copies randomly chosen target vectors of the first training batch
  into the codebook, so every code starts on the data manifold; ``uniform`` is VQ-VAE's U(-1/K, 1/K) (official
  code), under which ReLU features all map to a handful of codes. Codebook usage (perplexity, share of dead codes)
  is recorded every epoch; ``reseed_dead_codes`` (off by default: the paper does not describe it) re-seeds codes
  unused for a whole epoch from recent target vectors, the remedy of the paper's reference 32.
* DiversiFuse (section 3.1): multi-head cross-attention whose tokens are the **h*w spatial positions**: queries
  from the quantized map y_d, keys and values from the continuous map y_phi, 8 heads of 64, heads concatenated
  and mixed by the output projection (``nn.MultiheadAttention``). The official code's ``.view`` on BCHW makes its
  tokens channel chunks (bug 2a); we use real spatial tokens.
* z'_theta = p_theta(GAP(y'_dc)); L1 = 2 - 2cos(z_theta, SG[z_phi]); L2 = 2 - 2cos(z_theta, z'_theta). The
  paper writes L1/L2 as cosine similarities; we use BYOL's 2 - 2cos form (spec). z'_theta is not detached
  (official code), so DiversiFuse and p_theta learn from L2.
* Decoder f'_theta (section 3.2): reconstructs the un-augmented image (resized to the training resolution) from
  y'_dc; L_r = MSE. The target is mirrored wherever the view that y'_dc comes from was mirrored, so input and
  target share their geometry (the official HEAD compares with the unflipped ``orig`` although y_phi comes from a
  50 %-flipped view; the project fixes the same mirrored target for DiRA/CAiD). The decoder's architecture is
  unpublished: we use four x2 upsampling stages (bilinear, conv3x3-BN-ReLU; 512 -> 256 -> 128 -> 64 -> 32), a 1x1
  conv to the image channels and a bilinear x2 to the input size.
* Total: L = alpha (L1 + L2) + L_q + gamma L_r, alpha = gamma = 0.5 (section 3.2). The official trainer's
  ``[D(q1,z2)+D(q2,z1)+D(q2,fuse1)+D(q1,fuse2)]/4`` equals alpha(L1+L2) with alpha = 0.5 after symmetrisation,
  which is the mapping we use.
* Views: the official ``get_transform(gb_prob=1.0)`` for both views, so Gaussian blur is applied **always** to both
  (p = 1 overrides the suite's blur probability); colour jitter and grayscale have no 1-channel counterpart.
* Under DDP every process must quantize with the same codebook, but the data initialisation and the re-seeding
  draw from each process's own batch, and a Parameter that changes outside the optimiser is not synchronised by
  DDP: the codebook is broadcast from process 0 after both, and code usage is summed over processes every step,
  so dead codes are the same everywhere.
* All similarity terms are computed in fp32 with autocast off (``byol_similarity_loss``).

Ablations (section 5, "Ablation Studies") are config switches of this one class: ``use_decoder: false``
(registered as ``coboom-nodec``) and ``use_diversifuse: false`` + ``use_decoder: false`` (``coboom-nodf``), where
z'_theta = p_theta(GAP(y_d)) from the quantized map directly.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightly.models.modules.heads import ProjectionHead
from lightly.utils.dist import world_size
from torch import nn

from medssl.nn.augment import apply_crop_boxes, draw_crop_boxes, photometric, to_unit_float
from methods.base import MethodConfig, SSLMethod, byol_similarity_loss, pooled


@dataclasses.dataclass
class CoBooMConfig(MethodConfig):
    codebook_size: int = 1024
    commitment_weight: float = 0.5  # the paper's alpha inside L_q (official code: 0.25)
    alpha: float = 0.5
    gamma: float = 0.5
    hidden_dim: int = 4096
    output_dim: int = 256
    head_layers: int = 3
    attention_heads: int = 8
    use_diversifuse: bool = True
    use_decoder: bool = True
    codebook_init: str = "data"
    reseed_dead_codes: bool = False
    ema_base: float = 0.996


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int, layers: int) -> ProjectionHead:
    """Linear-BN-ReLU blocks and a final Linear (BYOL's head shape, with ``layers`` linear layers)."""
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    blocks = [(dims[i], dims[i + 1], nn.BatchNorm1d(dims[i + 1]), nn.ReLU()) for i in range(layers - 1)]
    blocks.append((dims[-2], dims[-1], None, None))
    return ProjectionHead(blocks)


class VectorQuantizer(nn.Module):
    """Nearest-codeword quantisation of D-dim vectors with codebook + commitment losses (van den Oord et al. 2017)."""

    def __init__(self, codebook_size: int, dim: int, init: str = "data"):
        super().__init__()
        if init not in ("data", "uniform"):
            raise ValueError(f"codebook_init must be 'data' or 'uniform', got {init!r}")
        self.codebook = nn.Parameter(torch.empty(codebook_size, dim).uniform_(-1 / codebook_size, 1 / codebook_size))
        self.register_buffer("initialized", torch.tensor(init == "uniform"))
        self.register_buffer("usage", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("recent", torch.zeros(0, dim), persistent=False)
        # the host's copy of ``initialized`` once it is known to be True: reading the buffer at every step would
        # stop the CPU until the GPU catches up; it is read until the codebook has been initialised (or restored)
        self._known_initialized = False

    def _load_from_state_dict(self, *args, **kwargs):
        self._known_initialized = False  # the loaded ``initialized`` is read again at the next training step
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, vectors: torch.Tensor):
        """vectors: N x D. Returns (straight-through quantized N x D, codebook loss, commitment loss, indices)."""
        with torch.autocast(device_type=vectors.device.type, enabled=False):  # nearest-code search in fp32 under AMP
            return self._quantize(vectors.float())

    @torch.no_grad()
    def share_codebook(self) -> None:
        """Under DDP: every process takes process 0's codebook (after a change made from the process's own data)."""
        if world_size() > 1:
            dist.broadcast(self.codebook.data, src=0)

    def _quantize(self, vectors: torch.Tensor):
        if self.training and not self._known_initialized and not bool(self.initialized):
            with torch.no_grad():
                pick = torch.randint(len(vectors), (len(self.codebook),), device=vectors.device)
                self.codebook.copy_(vectors[pick])
                self.initialized.fill_(True)
                self.share_codebook()
        self._known_initialized = self._known_initialized or self.training
        with torch.no_grad():
            distances = (
                vectors.pow(2).sum(1, keepdim=True)
                - 2 * vectors @ self.codebook.t()
                + self.codebook.pow(2).sum(1)[None]
            )
            indices = distances.argmin(1)
        # F.embedding, not self.codebook[indices]: the indexing backward accumulates rows with index_put_, whose
        # multi-threaded CPU kernel adds in a run-dependent order (two 2-thread runs diverged after ~50 steps)
        codes = F.embedding(indices, self.codebook)
        codebook_loss = F.mse_loss(codes, vectors.detach())
        commitment_loss = F.mse_loss(vectors, codes.detach())
        quantized = vectors + (codes - vectors).detach()
        if self.training:
            # bincount sizes its output from the largest index, a host sync on a GPU; index_add_ counts the same
            counts = torch.zeros_like(self.usage).index_add_(0, indices, torch.ones_like(indices))
            if world_size() > 1:
                dist.all_reduce(counts)
            self.usage += counts
            self.recent = vectors.detach()[torch.randperm(len(vectors), device=vectors.device)[: len(self.codebook)]]
        return quantized, codebook_loss, commitment_loss, indices

    def usage_statistics(self) -> Dict[str, float]:
        counts = self.usage.double()
        total = counts.sum()
        if total == 0:
            return {"codebook_perplexity": float("nan"), "codebook_dead_share": float("nan")}
        probs = counts / total
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        return {
            "codebook_perplexity": float(entropy.exp()),
            "codebook_dead_share": float((counts == 0).double().mean()),
        }

    @torch.no_grad()
    def reseed_dead(self) -> int:
        dead = torch.nonzero(self.usage == 0).flatten()
        if len(dead) and len(self.recent):
            pick = torch.randint(len(self.recent), (len(dead),), device=self.recent.device)
            self.codebook[dead] = self.recent[pick].to(self.codebook.dtype)
        self.share_codebook()  # usage is summed over processes, so every process reaches this call
        return int(len(dead))


class Decoder(nn.Module):
    """Four x2 upsampling stages from the stride-32 map to stride 2, a 1x1 conv to the image channels and a final
    bilinear x2 (architecture unpublished; ours). Skipping a conv stage at full resolution halves its cost."""

    def __init__(self, in_channels: int, out_channels: int, widths=(256, 128, 64, 32)):
        super().__init__()
        layers, prev = [], in_channels
        for width in widths:
            layers += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(prev, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            prev = width
        layers.append(nn.Conv2d(prev, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, size: int) -> torch.Tensor:
        out = self.net(x)
        return (
            out
            if out.shape[-1] == size
            else F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)
        )


class CoBooM(SSLMethod):
    Config = CoBooMConfig
    test_params = {"hidden_dim": 64, "output_dim": 32, "codebook_size": 32}
    # 2: codebook lookup by F.embedding (bit-reproducible on multi-threaded CPUs); 3: official views (blur always),
    # mirrored reconstruction target, similarity terms in fp32, one codebook across DDP processes
    version = 3
    view_overrides = {"blur_p": 1.0}

    def build(self) -> None:
        c = self.config
        dim = self.backbone.feature_dim
        self.projection_head = mlp_head(dim, c.hidden_dim, c.output_dim, c.head_layers)  # g_theta
        self.prediction_head = mlp_head(c.output_dim, c.hidden_dim, c.output_dim, c.head_layers)  # q_theta
        self.fusion_head = mlp_head(dim, c.hidden_dim, c.output_dim, c.head_layers)  # p_theta
        self.quantizer = VectorQuantizer(c.codebook_size, dim, c.codebook_init)
        self.diversifuse = (
            nn.MultiheadAttention(dim, c.attention_heads, batch_first=True) if c.use_diversifuse else None
        )
        self.decoder = Decoder(dim, self.protocol.in_channels) if c.use_decoder else None
        self.make_ema_targets("backbone", "projection_head")

    def quantize_and_fuse(self, target_map: torch.Tensor):
        """y_phi (B x D x h x w) -> (y'_dc as B x D x h x w, codebook loss, commitment loss)."""
        b, d, h, w = target_map.shape
        tokens = target_map.flatten(2).transpose(1, 2)  # B x hw x D: one token per spatial position
        quantized, codebook_loss, commitment_loss, _ = self.quantizer(tokens.reshape(-1, d))
        quantized = quantized.reshape(b, h * w, d)
        if self.diversifuse is not None:
            fused, _ = self.diversifuse(quantized, tokens.float(), tokens.float(), need_weights=False)
        else:
            fused = quantized
        return fused.transpose(1, 2).reshape(b, d, h, w), codebook_loss, commitment_loss

    def make_views(self, images):
        """[view 1, view 2], then, with the decoder, each view's reconstruction target: the un-augmented image at the
        training resolution, mirrored where that view was mirrored."""
        x = to_unit_float(images)
        size = self.protocol.image_size
        views, targets = [], []
        whole = self.unaugmented(images) if self.decoder is not None else None
        for cfg in self.view_augment:
            boxes = draw_crop_boxes(len(x), cfg, device=x.device)
            views.append(self.normalize(photometric(apply_crop_boxes(x, size, boxes), cfg)))
            if whole is not None:
                targets.append(torch.where(boxes.flip[:, None, None, None] < 0, whole.flip(-1), whole))
        return self.in_memory_format(views + targets)

    def compute_loss(self, views, images):
        c = self.config
        views, recon_targets = views[: self.n_views], views[self.n_views :]
        online = [self.prediction_head(self.projection_head(pooled(self.backbone.forward_features(v)))) for v in views]
        with torch.no_grad():
            target_maps = [self.backbone_target.forward_features(v) for v in views]
            target_z = [self.projection_head_target(pooled(m)) for m in target_maps]
        terms = {k: 0.0 for k in ("l1", "l2", "codebook", "commitment", "reconstruction")}
        for a, b in ((0, 1), (1, 0)):
            fused_map, codebook_loss, commitment_loss = self.quantize_and_fuse(target_maps[b])
            fused_z = self.fusion_head(pooled(fused_map))
            terms["l1"] = terms["l1"] + byol_similarity_loss(online[a], target_z[b]) / 2
            terms["l2"] = terms["l2"] + byol_similarity_loss(online[a], fused_z, stop_gradient=False) / 2
            terms["codebook"] = terms["codebook"] + codebook_loss / 2
            terms["commitment"] = terms["commitment"] + commitment_loss / 2
            if self.decoder is not None:
                recon = self.decoder(fused_map, self.protocol.image_size)
                terms["reconstruction"] = (
                    terms["reconstruction"] + F.mse_loss(recon.float(), recon_targets[b].float()) / 2
                )
        quantization = terms["codebook"] + c.commitment_weight * terms["commitment"]
        loss = c.alpha * (terms["l1"] + terms["l2"]) + quantization + c.gamma * terms["reconstruction"]
        out = {"loss": loss, "quantization": quantization}
        out.update({k: v for k, v in terms.items() if torch.is_tensor(v)})
        return out

    def on_train_epoch_start(self) -> None:
        self.quantizer.usage.zero_()

    def on_train_epoch_end(self) -> None:
        # Lightning calls callbacks (EpochHistory reads epoch_statistics) before this hook, so re-seeding here
        # does not hide the epoch's dead codes from the history.
        if self.config.reseed_dead_codes:
            self.quantizer.reseed_dead()

    def epoch_statistics(self) -> Dict[str, float]:
        """Codebook perplexity and share of codes unused during the current epoch."""
        return self.quantizer.usage_statistics()
