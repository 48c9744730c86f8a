"""FedGMA's soft mask as a drop-in replacement of the average under Flower's FedAdam."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import FedAdam

from .fedgma import FedGMA
from .masking import MaskObserver, check_mask_metrics, resolve_mask_control, resolve_tau
from .validation import CheckedReply, ReplyBounds


class FedGMAAdam(FedAdam, FedGMA):
    """FedAdam whose pseudo-gradient is FedGMA's masked average (``gma`` variant).

    The journal version of FedGMA (https://arxiv.org/abs/2201.11986) uses the
    masked pseudo-gradient ``m * g_bar`` as a drop-in replacement of ``g_bar`` in
    server optimizers. Here FedAdam's first step, the plain FedAvg average, is
    replaced by FedGMA's ``x_t - m * g_bar`` (``gma`` mask, server step 1), so
    FedAdam's ``delta_t = -m * g_bar`` and its moments see the masked update.
    Replies are checked, or handed over checked, exactly as in :class:`FedGMA`.

    Parameters
    ----------
    mask_tau : Optional[float] (default: None)
        Agreement threshold of the mask in ``[0, 1]``; ``None`` means 0.4
        (``masking.resolve_tau("gma", None)``). ``tau`` is FedAdam's own
        adaptivity constant.
    agreement_weighted : bool (default: False)
        Weight each client's sign by ``num-examples`` instead of ``1 / K``.
    bounds : Optional[ReplyBounds] (default: None)
        Bounds on each reply, as in :class:`FedGMA`. ``None``: no bound.
    mask_control : str (default: "none")
        ``"none"``, ``"random"`` or ``"uniform"``: the mask control, as in :class:`FedGMA`
        (``"uniform"``: FedAdam sees ``-m * g_bar`` with one ``m``, the round's mean mask).
    mask_seed : int (default: 0)
        Seed of the ``"random"`` control, as in :class:`FedGMA`.
    mask_metrics : Optional[Callable] (default: None)
        Observer of each round's applied masks, as in :class:`FedGMA`.
    **kwargs
        Every keyword of :class:`flwr.serverapp.strategy.FedAdam` (``eta``,
        ``eta_l``, ``beta_1``, ``beta_2``, ``tau``, ``fraction_train``, ...).
    """

    def __init__(
        self,
        *,
        mask_tau: float | None = None,
        agreement_weighted: bool = False,
        bounds: ReplyBounds | None = None,
        mask_control: str = "none",
        mask_seed: int = 0,
        mask_metrics: MaskObserver | None = None,
        **kwargs: Any,
    ) -> None:
        # Checked before FedAdam's constructor chain, which reaches FedGMA.__init__
        # with its defaults (set again below).
        reply_bounds = ReplyBounds.coerce(bounds)
        threshold = resolve_tau("gma", mask_tau)
        control, seed = resolve_mask_control(mask_control, mask_seed)
        check_mask_metrics(mask_metrics)
        super().__init__(**kwargs)
        self.variant = "gma"
        self.mask_tau = threshold
        self.server_lr = 1.0
        self.agreement_weighted = bool(agreement_weighted)
        self.bounds = reply_bounds
        self.mask_control = control
        self.mask_seed = seed
        self.mask_metrics = mask_metrics

    def aggregate_checked(
        self, server_round: int, replies: Sequence[CheckedReply]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAdam's step over the masked average of replies checked by the caller.

        FedAdam's ``aggregate_train`` asks FedGMA's for the average; the checked
        replies are handed over for that one call, so they are not checked again.
        """
        self._handed_over = replies
        try:
            return FedAdam.aggregate_train(self, server_round, [reply.message for reply in replies])
        finally:
            self._handed_over = None
