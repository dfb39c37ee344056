"""CAiD: context-aware instance discrimination (Taher et al., MIDL 2022, section 2), MoCo-v2 base.

Instance discrimination (MoCo-v2: InfoNCE against a queue of EMA keys) plus restoration of the context of the
distorted view 1 by a U-Net on the same encoder, ``L = InfoNCE + 10 * MSE``. The official CAiD code is the DiRA code
without the discriminator (spec section 4: same U-Net, MoCo-v2 settings 65,536 / 0.999 / T 0.2, augmentations,
distortions and restoration target), so CAiD is :class:`methods.dira.DiRA` with the adversarial weight at 0,
and inherits its documented choices: ResNet-18 U-Net, restoration target after the input's flip, 1-channel input.
The paper's Barlow Twins and SimSiam variants are not released and not implemented.
"""

import dataclasses

from methods.dira import DiRA, DiRAConfig


@dataclasses.dataclass
class CAiDConfig(DiRAConfig):
    adversarial_weight: float = 0.0


class CAiD(DiRA):
    Config = CAiDConfig
    version = 2  # DiRA's 3 changed its discriminator's step only; CAiD has none
