"""VICReg (Bardes, Ponce & LeCun, ICLR 2022, section 3), built from lightly's ``VICRegLoss`` and ``VICRegProjectionHead``.

Two views, a 3-layer expander on the pooled encoder output and the loss
``lambda * invariance + mu * variance + nu * covariance`` with lambda = mu = 25, nu = 1 (section 4.1): invariance
is the MSE between the two embeddings, variance the hinge ``mean(relu(1 - sqrt(var + eps)))`` averaged over the two
branches, covariance the squared off-diagonal covariance (over N - 1) summed and divided by the dimension, summed
over the branches (the official formulas, which lightly reproduces; spec section 7). The paper's expander is
8192-8192-8192 for ResNet-50; for ResNet-18 we use solo-learn's 2048-2048-2048 (spec section 7), a config field.
Augmentations: the suite's, with the asymmetric blur (p = 1.0 / 0.1) and solarisation (p = 0 / 0.2) that VICReg
takes from BYOL; no colour jitter on grayscale images. The loss runs in fp32 under mixed precision.
"""

import dataclasses

from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead

from methods.base import MethodConfig, SSLMethod, gather_across_processes


@dataclasses.dataclass
class VICRegConfig(MethodConfig):
    hidden_dim: int = 2048
    output_dim: int = 2048
    num_layers: int = 3
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0


class VICReg(SSLMethod):
    Config = VICRegConfig
    test_params = {"hidden_dim": 64, "output_dim": 64}
    view_overrides = {"blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]}

    def build(self) -> None:
        c = self.config
        self.projection_head = VICRegProjectionHead(self.backbone.feature_dim, c.hidden_dim, c.output_dim, c.num_layers)
        self.criterion = VICRegLoss(
            c.invariance_weight, c.variance_weight, c.covariance_weight, gather_distributed=gather_across_processes()
        )

    def compute_loss(self, views, images):
        z1, z2 = (self.projection_head(self.backbone(v)).float() for v in views)
        with self.full_precision():
            return {"loss": self.criterion(z1, z2)}
