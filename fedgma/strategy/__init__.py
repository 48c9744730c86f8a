"""The FedGMA strategy and its mask math."""

from .fedgma import FedGMA
from .fedgma_adam import FedGMAAdam
from .masking import (
    DEFAULT_TAU,
    VARIANTS,
    MaskedAggregator,
    MaskStats,
    agreement_score,
    mask_from_agreement,
    server_update,
)
from .validation import InvalidReply, decode_reply

__all__ = [
    "DEFAULT_TAU",
    "VARIANTS",
    "FedGMA",
    "FedGMAAdam",
    "InvalidReply",
    "MaskStats",
    "MaskedAggregator",
    "agreement_score",
    "decode_reply",
    "mask_from_agreement",
    "server_update",
]
