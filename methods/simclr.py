"""SimCLR (Chen et al., ICML 2020, sections 2.1-2.2), built from lightly's ``NTXentLoss`` and ``SimCLRProjectionHead``.

Two views, a 2-layer MLP projection head on the pooled encoder output and the NT-Xent loss over the 2N views of
the batch. Defaults follow the lightly column of the project spec (section 7): temperature 0.5, head
512 -> 2048 -> 128 for ResNet-18. solo-learn's ImageNet-100 recipe uses temperature 0.2 and a 4096 -> 512 head;
both are config fields. The loss runs in fp32 under mixed precision. With more than one process the loss gathers all views so negatives span the global batch.
"""

import dataclasses

from lightly.loss import NTXentLoss
from lightly.models.modules.heads import SimCLRProjectionHead

from methods.base import MethodConfig, SSLMethod, gather_across_processes


@dataclasses.dataclass
class SimCLRConfig(MethodConfig):
    temperature: float = 0.5
    hidden_dim: int = 2048
    output_dim: int = 128


class SimCLR(SSLMethod):
    Config = SimCLRConfig
    test_params = {"hidden_dim": 64, "output_dim": 32}
    version = 2  # 2: NT-Xent in fp32 under mixed precision

    def build(self) -> None:
        c = self.config
        self.projection_head = SimCLRProjectionHead(self.backbone.feature_dim, c.hidden_dim, c.output_dim)
        self.criterion = NTXentLoss(temperature=c.temperature, gather_distributed=gather_across_processes())

    def compute_loss(self, views, images):
        z1, z2 = (self.projection_head(self.backbone(v)).float() for v in views)
        with self.full_precision():
            return {"loss": self.criterion(z1, z2)}
