"""The FedGMA strategy, its mask math and the checks a training reply must pass."""

from .fedgma import FedGMA
from .fedgma_adam import FedGMAAdam
from .masking import (
    DEFAULT_TAU,
    VARIANTS,
    MaskedAggregator,
    MaskStats,
    agreement_score,
    apply_mask_rule,
    mask_from_agreement,
    server_update,
)
from .validation import (
    DEFAULT_MAX_WEIGHT_RATIO,
    CheckedReplies,
    InvalidReply,
    ReplyBounds,
    check_replies,
    decode_reply,
)

__all__ = [
    "DEFAULT_MAX_WEIGHT_RATIO",
    "DEFAULT_TAU",
    "VARIANTS",
    "CheckedReplies",
    "FedGMA",
    "FedGMAAdam",
    "InvalidReply",
    "MaskStats",
    "MaskedAggregator",
    "ReplyBounds",
    "agreement_score",
    "apply_mask_rule",
    "check_replies",
    "decode_reply",
    "mask_from_agreement",
    "server_update",
]
