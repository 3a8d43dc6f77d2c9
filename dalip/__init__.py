"""DALIP: an open_clip CLIP with a second-order (MBDC) embedding per modality, its loss, loader, trainer and eval.

The package extends open_clip and never forks it: the backbone is an unmodified open_clip model, token
features come through its public ``forward_intermediates`` and the loss composes its ``ClipLoss``.
"""

from dalip.bdc import MBDC, MbdcConfig, bdc_matrix
from dalip.loss import DalipLoss
from dalip.model import DalipModel

__all__ = ["MBDC", "DalipLoss", "DalipModel", "MbdcConfig", "bdc_matrix"]
