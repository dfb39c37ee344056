"""Supervised from scratch ("Sup." in the CoBooM tables, section 4 "Baselines").

No pretraining: the exported encoder is the seeded random initialisation of the shared ResNet trunk. Under
linear probing this row is the randomly initialised *frozen* encoder, the floor every SSL method must beat;
under fine-tuning it is ordinary supervised training from random weights.

BatchNorm statistics (our choice; the CoBooM paper does not say): a frozen encoder normalises its activations with
the running statistics stored in its BatchNorm layers. Every pretrained encoder carries the statistics of its
pretraining corpus, seen through the suite's augmentations. A freshly constructed torchvision ResNet carries
PyTorch's initial values instead (mean 0, variance 1), so its BatchNorm layers are identities in eval mode and
the frozen "random" encoder is a different network, one without normalisation. On the chest phantoms that
network probes far better than the same weights with data statistics (docs/protocol.md):
comparing against it measures the BatchNorm convention, not what pretraining learned. By default
(``batchnorm_statistics: corpus``) the random encoder therefore gets what any method would get from zero
learning steps: one pass over the pretraining corpus through the suite's augmentation in train mode, without
gradients, with BatchNorm's cumulative average (``momentum=None``), so the statistics do not depend on the order
of the batches. ``batchnorm_statistics: init`` keeps PyTorch's initial values.
"""

import dataclasses

import torch

from methods.base import MethodConfig, SSLMethod

BATCHNORM_STATISTICS = ("corpus", "init")


@dataclasses.dataclass
class SupervisedConfig(MethodConfig):
    batchnorm_statistics: str = "corpus"

    def __post_init__(self):
        if self.batchnorm_statistics not in BATCHNORM_STATISTICS:
            raise ValueError(
                f"supervised: batchnorm_statistics must be one of {BATCHNORM_STATISTICS}, not {self.batchnorm_statistics!r}"
            )


class Supervised(SSLMethod):
    Config = SupervisedConfig
    needs_pretraining = False
    n_views = 1  # the statistics pass sees one view per image, augmented as the suite's pretraining views

    def finish_encoder(self, images: torch.Tensor, batch_size: int, seed: int) -> None:
        if self.config.batchnorm_statistics == "corpus":
            self.estimate_trunk_statistics(self.backbone, images, batch_size, seed)
