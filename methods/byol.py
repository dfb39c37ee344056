"""BYOL (Grill et al., NeurIPS 2020, section 3), built from lightly's BYOL heads and ``update_momentum``.

Online network = encoder + projector + predictor; target network = EMA copy of encoder + projector with
tau increasing from 0.996 to 1 by a cosine schedule over all steps (section 3.2); loss = 2 - 2 cos(q_online(view a),
z_target(view b)) (eq. 2) **summed** over the two directions, as the paper's symmetrised loss and the official code
(and lightly's BYOL benchmark); averaging them would halve the effective lr of every group without a trust ratio
(biases and BatchNorm under LARS). Heads 512 -> 4096 -> 256 (projector) and
256 -> 4096 -> 256 (predictor) as in lightly's defaults and the paper. Augmentations are the suite's, with BYOL's
asymmetric blur (p = 1.0 / 0.1) and solarisation (p = 0 / 0.2); no colour jitter on grayscale images.
"""

import dataclasses

import torch
from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead

from methods.base import MethodConfig, SSLMethod, byol_similarity_loss


@dataclasses.dataclass
class BYOLConfig(MethodConfig):
    hidden_dim: int = 4096
    output_dim: int = 256
    ema_base: float = 0.996


class BYOL(SSLMethod):
    Config = BYOLConfig
    test_params = {"hidden_dim": 64, "output_dim": 32}
    version = 2  # 2: the two directions are summed (were averaged); the loss is computed in fp32 under CPU autocast
    view_overrides = {"blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]}

    def build(self) -> None:
        c = self.config
        self.projection_head = BYOLProjectionHead(self.backbone.feature_dim, c.hidden_dim, c.output_dim)
        self.prediction_head = BYOLPredictionHead(c.output_dim, c.hidden_dim, c.output_dim)
        self.make_ema_targets("backbone", "projection_head")

    def compute_loss(self, views, images):
        p1, p2 = (self.prediction_head(self.projection_head(self.backbone(v))) for v in views)
        with torch.no_grad():
            z1, z2 = (self.projection_head_target(self.backbone_target(v)) for v in views)
        return {"loss": byol_similarity_loss(p1, z2) + byol_similarity_loss(p2, z1)}
