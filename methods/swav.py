"""SwAV (Caron et al., NeurIPS 2020, sections 3.1-3.2), built from lightly's ``SwaVProjectionHead``,
``SwaVPrototypes`` and ``SwaVLoss``.

Swapped prediction: the code (soft cluster assignment, Sinkhorn-Knopp with 3 iterations and epsilon 0.05) of each
high-resolution view is predicted from every other view's softmax over the prototypes (temperature 0.1).
Multi-crop (section 3.2): two global views at the suite's resolution and crop scale plus ``n_local_views`` = 6
local views of 96/224 of that resolution with area fraction 0.05-0.14 (the paper's 224/96 px pair; for the shared
protocol the global views keep the suite's crop scale instead of the paper's 0.14-1). Heads: projector
512 -> 2048 -> 128, 3000 prototypes (solo-learn's ResNet-18 recipe, spec section 7).

As in the official code: prototypes are L2-normalised before every step and kept frozen at the start of training;
small batches use a queue of past global-view embeddings that joins the Sinkhorn step (not the loss) once it is
full. Both schedules are set per step in the official code, for its own length of training: the small-batch recipe
(``scripts/swav_400ep_bs256_pretrain.sh``: ``queue_length`` 3840, 400 epochs of 5,005 iterations) freezes the
prototypes for ``freeze_prototypes_niters`` 5,005 iterations (the first epoch, 1/400 of training) and starts the
queue at ``epoch_queue_starts`` 15 (15/400). We keep those **shares of training**
(``freeze_prototypes_share``, ``queue_start_share``), so a shorter protocol keeps the reference's proportions
instead of, say, freezing the prototypes for a quarter of a 4-epoch run; the step counts are rounded up (at least
one frozen step). A queue longer than the corpus would hold the same images twice; the suites set it to fit. Under DDP each process keeps ``queue_length / processes`` embeddings, as the official code:
Sinkhorn gathers across processes, so it sees as many queued embeddings as one process would. The prototype
scores, Sinkhorn and the loss run in fp32 under mixed precision.
"""

import dataclasses
import math
from typing import Optional, Tuple

import torch
from lightly.loss import SwaVLoss
from lightly.models.modules.heads import SwaVProjectionHead, SwaVPrototypes
from lightly.utils.dist import world_size
from torch import nn

from medssl.nn.augment import augment_view, view_configs
from methods.base import MethodConfig, SSLMethod, gather_across_processes


@dataclasses.dataclass
class SwAVConfig(MethodConfig):
    hidden_dim: int = 2048
    output_dim: int = 128
    n_prototypes: int = 3000
    temperature: float = 0.1
    sinkhorn_iterations: int = 3
    sinkhorn_epsilon: float = 0.05
    n_local_views: int = 6
    local_crop_scale: Tuple[float, float] = (0.05, 0.14)
    local_size_ratio: float = 96 / 224
    freeze_prototypes_share: float = 1 / 400
    queue_length: int = 3840
    queue_start_share: float = 15 / 400


class SwAV(SSLMethod):
    Config = SwAVConfig
    test_params = {
        "hidden_dim": 64,
        "output_dim": 32,
        "n_prototypes": 16,
        "n_local_views": 2,
        "queue_length": 0,
        "freeze_prototypes_share": 0.0,
    }
    version = 2  # 2: prototype freeze and queue start as shares of training (were whole epochs)

    def build(self) -> None:
        c = self.config
        self.projection_head = SwaVProjectionHead(self.backbone.feature_dim, c.hidden_dim, c.output_dim)
        # frozen by dropping their gradients after backward (on_after_backward), as the official code does, not by
        # lightly's requires_grad toggle inside forward, which DDP cannot follow (its reducer fixes the parameter
        # set at construction); the arithmetic of every step is the same
        self.prototypes = SwaVPrototypes(c.output_dim, c.n_prototypes)
        self.frozen_prototype_steps = self.steps_of(c.freeze_prototypes_share)
        self.queue_start_step = self.steps_of(c.queue_start_share)
        self.criterion = SwaVLoss(
            temperature=c.temperature,
            sinkhorn_iterations=c.sinkhorn_iterations,
            sinkhorn_epsilon=c.sinkhorn_epsilon,
            sinkhorn_gather_distributed=gather_across_processes(),
        )
        local = {**self.protocol.augment, **self.view_overrides, "crop_scale": list(c.local_crop_scale)}
        self.local_augment = view_configs(local, c.n_local_views)
        self.local_size = max(8, int(round(self.protocol.image_size * c.local_size_ratio)))
        self.register_buffer("queue", torch.zeros(self.n_views, c.queue_length, c.output_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._host_queue_filled: Optional[int] = None  # queue_filled mirrored on the host (queue_in_use)

    def make_views(self, images):
        """Two global views (the suite's), then the local views."""
        local = [self.normalize(augment_view(images, self.local_size, cfg)) for cfg in self.local_augment]
        return super().make_views(images) + self.in_memory_format(local)

    def embed(self, view: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.projection_head(self.backbone(view)).float(), dim=1)

    def compute_loss(self, views, images):
        self.prototypes.normalize()
        embeddings = [self.embed(v) for v in views]
        with self.full_precision():  # Sinkhorn's exp(score / 0.05) and the softmax need fp32
            scores = [self.prototypes(z) for z in embeddings]
            high, low = scores[: self.n_views], scores[self.n_views :]
            queue_scores = None
            if self.queue_in_use():
                with torch.no_grad():
                    queue_scores = [self.prototypes(self.queue[i]) for i in range(self.n_views)]
            loss = self.criterion(high, low, queue_outputs=queue_scores)
        if self.training and self.config.queue_length > 0 and self.global_step >= self.queue_start_step:
            self.enqueue(torch.stack(embeddings[: self.n_views]).detach())
        return {"loss": loss.squeeze()}

    def on_after_backward(self) -> None:
        """The official ``freeze_prototypes_niters``: the prototypes' gradients are dropped (set to None, so the
        optimiser skips them, weight decay and momentum included) during the first steps."""
        if self.global_step < self.frozen_prototype_steps:
            for parameter in self.prototypes.parameters():
                parameter.grad = None

    def steps_of(self, share: float) -> int:
        """A share of the protocol's training steps, rounded up."""
        return math.ceil(share * self.protocol.total_steps - 1e-9)

    def setup(self, stage: str) -> None:
        """Size this process's queue share; runs in every DDP process before a checkpoint is restored."""
        super().setup(stage)
        local_length = self.config.queue_length // world_size()
        if self.queue.shape[1] != local_length:
            self.queue = torch.zeros(self.n_views, local_length, self.config.output_dim, device=self.queue.device)
            self.queue_filled.zero_()
            self._host_queue_filled = None

    def on_load_checkpoint(self, checkpoint) -> None:
        """A run resumed on another number of processes starts its queue afresh (it refills within an epoch)."""
        state = checkpoint.get("state_dict", {})
        if "queue" in state and state["queue"].shape != self.queue.shape:
            state["queue"] = torch.zeros_like(self.queue)
            state["queue_filled"] = torch.zeros_like(self.queue_filled)

    def _load_from_state_dict(self, *args, **kwargs):
        self._host_queue_filled = None
        super()._load_from_state_dict(*args, **kwargs)

    def queue_in_use(self) -> bool:
        """Whether the queue is full. The fill count is read from the device once (after building or loading) and
        then counted on the host: a read at every step would stop the CPU until the GPU caught up."""
        if self.queue.shape[1] == 0:
            return False
        if self._host_queue_filled is None:
            self._host_queue_filled = int(self.queue_filled)
        return self._host_queue_filled >= self.queue.shape[1]

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor) -> None:
        """Newest embeddings first; the oldest fall off the end."""
        length = self.queue.shape[1]
        n = min(embeddings.shape[1], length)
        self.queue.copy_(torch.cat([embeddings[:, :n].to(self.queue.dtype), self.queue[:, : length - n]], dim=1))
        self.queue_filled.add_(n)
        if self._host_queue_filled is not None:
            self._host_queue_filled += n
