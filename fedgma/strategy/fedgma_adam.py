"""FedGMA's soft mask as a drop-in replacement of the average under Flower's FedAdam."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam

from .fedgma import FedGMA
from .validation import ReplyBounds


class FedGMAAdam(FedAdam, FedGMA):
    """FedAdam whose pseudo-gradient is FedGMA's masked average (``gma`` variant).

    The journal version of FedGMA (https://arxiv.org/abs/2201.11986) uses the
    masked pseudo-gradient ``m * g_bar`` as a drop-in replacement of ``g_bar`` in
    server optimizers. Here FedAdam's first step, the plain FedAvg average, is
    replaced by FedGMA's ``x_t - m * g_bar`` (``gma`` mask, server step 1), so
    FedAdam's ``delta_t = -m * g_bar`` and its moments see the masked update.
    Replies are checked exactly as in :class:`FedGMA`.

    Parameters
    ----------
    mask_tau : Optional[float] (default: None)
        Agreement threshold of the mask in ``[0, 1]``; ``None`` means 0.4.
        (``tau`` is FedAdam's own adaptivity constant.)
    agreement_weighted : bool (default: False)
        Weight each client's sign by ``num-examples`` instead of ``1 / K``.
    max_num_examples, max_weight_ratio, max_update_norm, max_norm_ratio : Optional[float] (default: None)
        Optional bounds on each reply, as in :class:`FedGMA`.
    **kwargs
        Every keyword of :class:`flwr.serverapp.strategy.FedAdam` (``eta``,
        ``eta_l``, ``beta_1``, ``beta_2``, ``tau``, ``fraction_train``, ...).
    """

    def __init__(
        self,
        *,
        mask_tau: float | None = None,
        agreement_weighted: bool = False,
        max_num_examples: float | None = None,
        max_weight_ratio: float | None = None,
        max_update_norm: float | None = None,
        max_norm_ratio: float | None = None,
        **kwargs,
    ) -> None:
        bounds = ReplyBounds(max_num_examples, max_update_norm, max_weight_ratio, max_norm_ratio)  # checks them
        # Validate the mask settings with FedGMA's own checks before FedAdam's
        # constructor chain (which reaches FedGMA.__init__ with its defaults).
        probe = FedGMA(variant="gma", tau=mask_tau, agreement_weighted=agreement_weighted)
        super().__init__(**kwargs)
        self.variant = "gma"
        self.mask_tau = probe.tau
        self.server_lr = 1.0
        self.agreement_weighted = probe.agreement_weighted
        self.bounds = bounds

    @property
    def mask_threshold(self) -> float:
        """The agreement threshold of the mask (``self.tau`` is FedAdam's constant)."""
        return self.mask_tau
