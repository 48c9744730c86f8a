"""The FedGMA strategy, its mask math and the checks a training reply must pass.

Names are imported on first use (see ``fedgma.loop``): the ClientApp reads only
``DEFAULT_TAU`` (or ``resolve_tau``) and should not load the strategies to get it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedgma import lazy_attributes

if TYPE_CHECKING:
    from .fedgma import FedGMA
    from .fedgma_adam import FedGMAAdam
    from .masking import (
        DEFAULT_TAU,
        MASK_CONTROLS,
        VARIANTS,
        MaskControl,
        MaskedAggregator,
        MaskObserver,
        MaskStats,
        agreement_score,
        apply_mask_rule,
        mask_from_agreement,
        observe_masks,
        resolve_mask_control,
        resolve_tau,
        server_update,
        shuffled_mask,
    )
    from .validation import (
        AggregatesCheckedReplies,
        CheckedReply,
        InvalidReply,
        ReplyBounds,
        check_replies,
        decode_reply,
    )

_MODULE_OF = {
    "FedGMA": "fedgma",
    "FedGMAAdam": "fedgma_adam",
    **dict.fromkeys(("DEFAULT_TAU", "MASK_CONTROLS", "VARIANTS", "MaskControl", "MaskObserver", "MaskedAggregator",
                     "MaskStats", "agreement_score", "apply_mask_rule", "mask_from_agreement", "observe_masks",
                     "resolve_mask_control", "resolve_tau", "server_update", "shuffled_mask"), "masking"),
    **dict.fromkeys(("AggregatesCheckedReplies", "CheckedReply", "InvalidReply", "ReplyBounds",
                     "check_replies", "decode_reply"), "validation"),
}
__all__ = [
    "DEFAULT_TAU",
    "MASK_CONTROLS",
    "VARIANTS",
    "AggregatesCheckedReplies",
    "CheckedReply",
    "FedGMA",
    "FedGMAAdam",
    "InvalidReply",
    "MaskControl",
    "MaskObserver",
    "MaskStats",
    "MaskedAggregator",
    "ReplyBounds",
    "agreement_score",
    "apply_mask_rule",
    "check_replies",
    "decode_reply",
    "mask_from_agreement",
    "observe_masks",
    "resolve_mask_control",
    "resolve_tau",
    "server_update",
    "shuffled_mask",
]


__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF)
