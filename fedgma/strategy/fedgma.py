"""FedGMA: Flower's FedAvg with a sign-agreement (AND-) mask on the server step."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from .masking import (
    MaskedAggregator,
    MaskObserver,
    MaskStats,
    Variant,
    check_mask_metrics,
    observe_masks,
    resolve_mask_control,
    resolve_tau,
)
from .validation import CheckedReply, ReplyBounds, all_finite, check_replies, log_adjusted, num_clipped

# Metrics FedGMA adds to each round's training metrics: the mask's, always; the replies'
# counts only where FedGMA checks the replies itself (``aggregate_train``). Under
# ``fedgma.loop.RoundLoop`` the loop checks them and owns these counts (``RoundOutcome``).
MASK_METRICS = ("mask-kept-fraction", "mask-mean", "agreement-mean")
REPLY_METRICS = ("replies-used", "replies-dropped", "replies-failed", "replies-clipped")


class FedGMA(FedAvg):
    """Gradient-Masked Federated Averaging.

    Implementation based on Tenison et al., "Gradient-Masked Federated
    Optimization" (https://arxiv.org/abs/2104.10322, variant ``"ws"``) and
    "Gradient Masked Averaging for Federated Learning"
    (https://arxiv.org/abs/2201.11986, variant ``"gma"``).

    The server keeps the global weights ``x_t`` it sent, turns each client's
    returned weights ``y_k`` into a pseudo-gradient ``g_k = x_t - y_k``, and
    computes the per-coordinate sign agreement ``A = |sum_k w_k sign(g_k)|``.
    With ``g_bar = sum_k p_k g_k`` (``p_k`` proportional to ``num-examples``):

    - ``"ws"``: ``m = [A >= tau]``, ``x_{t+1} = x_t - g_bar - server_lr * m * g_bar``
      (FedAvg plus an extra masked step);
    - ``"gma"``: ``m = 1 if A >= tau else A``, ``x_{t+1} = x_t - server_lr * m * g_bar``.

    Aggregation streams over the replies with O(P) extra memory. Each reply is
    checked first (``validation.check_replies``: array names and shapes, finite
    values, a positive finite weight); a malformed reply is logged with its node
    id and left out, where FedAvg's consistency check would end the ServerApp.
    An array of a wider dtype of the same kind (float64 for a float32 model) is
    cast to the model's dtype and logged, as FedAvg would average it.
    ``aggregate_train`` (what ``Strategy.start`` calls) checks every reply;
    ``fedgma.loop.RoundLoop`` checks the replies itself and hands them over
    checked to ``aggregate_checked`` (so a subclass that changes one of the two
    should change both). With ``bounds=None`` FedGMA takes every
    well-formed reply as FedAvg does; :class:`~fedgma.strategy.validation.ReplyBounds`
    clip a reply that exceeds them. Like FedAvg's, this average is not
    Byzantine-robust.

    ``aggregate_train`` needs the weights sent in the same round: call
    ``configure_train`` first (as ``Strategy.start`` and ``RoundLoop`` do). The
    metrics FedGMA adds (``mask-kept-fraction``, ``mask-mean``, ``agreement-mean``;
    from ``aggregate_train`` also ``replies-used``, ``-dropped``, ``-failed`` and
    ``-clipped``) never replace a client metric of the same name: that one is
    kept, and FedGMA's goes under ``fedgma-<name>``, with a warning.
    Arrays that are not floating point (e.g. BatchNorm's
    ``num_batches_tracked``) are never masked: they take the example-weighted
    average of the clients' values, rounded back to their dtype.

    Parameters
    ----------
    *args
        Positional arguments of :class:`flwr.serverapp.strategy.FedAvg`
        (``fraction_train``, ``fraction_evaluate``, ...), in its order.
    variant : str (default: "ws")
        ``"ws"`` (workshop paper: binary mask, extra step on top of FedAvg) or
        ``"gma"`` (journal version: soft mask replacing the average).
    mask_tau : Optional[float] (default: None)
        Agreement threshold ``tau`` of the mask, in ``[0, 1]``. ``None`` means the
        variant's default (``masking.resolve_tau``: 0.8 for ``"ws"``, 0.4 for ``"gma"``).
    server_lr : float (default: 1.0)
        Server step size ``eta_s >= 0``.
    agreement_weighted : bool (default: False)
        Weight each client's sign by ``num-examples`` instead of ``1 / K``.
    bounds : Optional[ReplyBounds] (default: None)
        Bounds on each reply's weight and update norm, which clip a reply that
        exceeds them (see :class:`~fedgma.strategy.validation.ReplyBounds`).
        ``None``: no bound, as in FedAvg.
    mask_control : str (default: "none")
        A control for research on the mask's selectivity (``masking.MASK_CONTROLS``):
        ``"none"``, the agreement mask; ``"random"``, each array's agreement mask with
        its values shuffled among the array's coordinates each round (the same kept
        count and mask mean per array, at random places); ``"uniform"``, the round's
        mean agreement-mask value on every masked coordinate (a step-matched control).
    mask_seed : int (default: 0)
        Seed of the ``"random"`` control: round ``r``'s permutation of array ``i`` (in
        the model's order) comes from ``np.random.default_rng([mask_seed, r, i])``, so a
        resumed run applies the same masks.
    mask_metrics : Optional[Callable] (default: None)
        Called once per round with the masks applied (after the control), by array
        name, floating-point arrays only, each of its array's shape (read-only); the
        metrics it returns (names to finite numbers) join the round's training metrics
        under the same rule as FedGMA's own. A control or an observer materialises
        every mask: O(P) more memory in aggregation.
    **kwargs
        Every keyword of :class:`flwr.serverapp.strategy.FedAvg`
        (``fraction_train``, ``min_train_nodes``, ``weighted_by_key``, ...).

    Raises
    ------
    ValueError
        If ``variant`` is unknown, ``mask_tau`` is outside ``[0, 1]``, ``server_lr``
        is negative, ``mask_control`` is not one of ``masking.MASK_CONTROLS`` or
        ``mask_seed`` is not an integer ``>= 0``; in aggregation, if ``mask_metrics``
        returns a non-finite value or one of FedGMA's own metric names.
    TypeError
        If ``bounds`` is neither a ``ReplyBounds`` nor None, or ``mask_metrics`` is not
        callable; in aggregation, if ``mask_metrics`` returns no mapping of names to numbers.
    """

    def __init__(
        self,
        *args: Any,
        variant: Variant = "ws",
        mask_tau: float | None = None,
        server_lr: float = 1.0,
        agreement_weighted: bool = False,
        bounds: ReplyBounds | None = None,
        mask_control: str = "none",
        mask_seed: int = 0,
        mask_metrics: MaskObserver | None = None,
        **kwargs: Any,
    ) -> None:
        if "tau" in kwargs:  # FedAvg would refuse it without saying which name FedGMA uses
            raise TypeError("FedGMA: the agreement threshold is mask_tau (tau is FedAdam's adaptivity "
                            "constant), e.g. FedGMA(mask_tau=0.8)")
        reply_bounds = ReplyBounds.coerce(bounds)
        threshold = resolve_tau(variant, mask_tau)
        control, seed = resolve_mask_control(mask_control, mask_seed)
        check_mask_metrics(mask_metrics)
        if not isinstance(agreement_weighted, (bool, np.bool_)):
            raise TypeError(f"FedGMA: agreement_weighted must be True or False, got {agreement_weighted!r}")
        if (
            isinstance(server_lr, bool)
            or not isinstance(server_lr, (int, float))
            or not np.isfinite(server_lr)
            or server_lr < 0
        ):
            raise ValueError(f"FedGMA: server_lr must be a finite number >= 0, got {server_lr!r}")
        super().__init__(*args, **kwargs)
        self.variant: Variant = variant
        self.mask_tau = threshold
        self.server_lr = float(server_lr)
        self.agreement_weighted = bool(agreement_weighted)
        self.bounds = reply_bounds
        self.mask_control = control
        self.mask_seed = seed
        self.mask_metrics = mask_metrics
        self._current_arrays: dict[str, np.ndarray] | None = None
        # Set by FedGMAAdam.aggregate_checked for the one aggregate_train call it makes.
        self._handed_over: Sequence[CheckedReply] | None = None

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> FedGMA settings:")
        log(INFO, "\t│\t├── Variant: %s", self.variant)
        log(INFO, "\t│\t├── Agreement threshold mask_tau: %s", self.mask_tau)
        log(INFO, "\t│\t├── Server learning rate: %s", self.server_lr)
        if self.mask_control == "random":
            log(INFO, "\t│\t├── Mask control: random (seed %s)", self.mask_seed)
        elif self.mask_control != "none":
            log(INFO, "\t│\t├── Mask control: %s", self.mask_control)
        log(INFO, "\t│\t└── Agreement weighted by examples: %s", self.agreement_weighted)
        super().summary()

    @property
    def current_arrays(self) -> dict[str, np.ndarray] | None:
        """The global weights sent in this round, as NumPy arrays (set by ``configure_train``)."""
        return self._current_arrays

    @current_arrays.setter
    def current_arrays(self, arrays: ArrayRecord | dict[str, np.ndarray] | None) -> None:
        # An ArrayRecord (what configure_train receives) or NumPy arrays by name.
        if isinstance(arrays, ArrayRecord):
            self._current_arrays = {name: array.numpy() for name, array in arrays.items()}
        elif arrays is not None:
            self._current_arrays = {name: np.asarray(value) for name, value in arrays.items()}
        else:
            self._current_arrays = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Configure the next round of training and remember the weights sent."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply, then aggregate the good ones with the FedGMA mask.

        Returns ``(None, None)`` when no usable reply arrived, so the global
        model stays as it was. The metrics count the replies used, dropped,
        failed and clipped (``replies-*``).
        """
        if self._handed_over is not None:
            checked, self._handed_over = self._handed_over, None
            return self._aggregate_checked(server_round, checked)
        self._sent_arrays()
        replies = list(replies)
        # Flower's own consistency check would end the run on one malformed
        # reply; each reply is checked against the global model below instead.
        answered, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        result = self._check_and_fold(server_round, answered)
        if result is None:
            return None, None
        new_arrays, stats, masks, used, dropped, clipped = result
        counts = (len(used), dropped, len(replies) - len(answered), clipped)
        return self._result(server_round, new_arrays, stats, masks, used,
                            dict(zip(REPLY_METRICS, counts, strict=True)))

    def aggregate_checked(
        self, server_round: int, replies: Sequence[CheckedReply]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate replies checked by the caller, as they are, with the FedGMA mask.

        ``replies`` passed ``validation.check_replies`` this round against the weights
        given to ``configure_train``, with this strategy's ``weighted_by_key``
        (``fedgma.loop.RoundLoop`` hands them over so). They are not checked again,
        and the caller counts them: the metrics hold the mask's only.

        Raises
        ------
        ValueError
            If a reply's arrays differ in name, shape or dtype from this round's weights.
        """
        return self._aggregate_checked(server_round, replies)

    def _aggregate_checked(
        self, server_round: int, replies: Sequence[CheckedReply]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        current = self._sent_arrays()
        for reply in replies:
            if reply.arrays.keys() != current.keys() or any(
                value.shape != current[name].shape or value.dtype != current[name].dtype
                for name, value in reply.arrays.items()
            ):
                raise ValueError(f"FedGMA round {server_round}: a checked reply (node "
                                 f"{reply.message.metadata.src_node_id}) was not checked against "
                                 "this round's global weights")
        new_arrays, stats, masks, used = self._fold(server_round, replies)
        return self._result(server_round, new_arrays, stats, masks, used, {})

    def _sent_arrays(self) -> dict[str, np.ndarray]:
        if self.current_arrays is None:
            raise RuntimeError(
                "FedGMA.aggregate_train called before configure_train: "
                "the global weights of this round are unknown"
            )
        return self.current_arrays

    def _result(
        self,
        server_round: int,
        new_arrays: dict[str, np.ndarray],
        stats: MaskStats | None,
        masks: dict[str, np.ndarray] | None,
        used: list[RecordDict],
        reply_counts: dict[str, int],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The new global arrays and the round's metrics (the clients', then FedGMA's, then
        those of ``mask_metrics`` on the round's applied ``masks``: called here, once)."""
        if not used or stats is None:
            log(WARNING, "FedGMA round %s: no usable reply; the global model is unchanged", server_round)
            return None, None
        array_record = ArrayRecord(
            # np.require keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
            {name: Array(np.require(value, requirements="C")) for name, value in new_arrays.items()}
        )
        metrics = self.train_metrics_aggr_fn(used, self.weighted_by_key)
        own: dict[str, float | int] = {
            **dict(zip(MASK_METRICS, (stats.kept_fraction, stats.mask_mean, stats.agreement_mean), strict=True)),
            **reply_counts,
        }
        if self.mask_metrics is not None and masks is not None:
            for name, value in observe_masks(self.mask_metrics, masks).items():
                if name in own or name.startswith("fedgma-"):
                    raise ValueError(f"FedGMA: mask_metrics returned {name!r}, a name FedGMA's own metrics use")
                own[name] = value
        for name, value in own.items():
            if name in metrics:
                log(WARNING, "FedGMA round %s: the clients report a metric %r too; it is kept, and "
                    "FedGMA's is 'fedgma-%s'", server_round, name, name)
                name = f"fedgma-{name}"
            metrics[name] = value
        return array_record, metrics

    def _check_and_fold(
        self, server_round: int, replies: list[Message]
    ) -> tuple[dict[str, np.ndarray], MaskStats | None, dict[str, np.ndarray] | None, list[RecordDict],
               int, int] | None:
        """Check the replies and fold the good ones; None if finite replies overflowed.
        Returns the new arrays, the mask's statistics, the applied masks (see :meth:`_fold`),
        the used replies' contents and the numbers of dropped and clipped replies.

        Fast path: replies are checked for structure and weights, their values are
        folded in without a separate finiteness pass; a NaN or Inf in any reply makes
        the result non-finite, which one pass over the result detects. Only then are
        the replies checked again, value by value, so that the bad ones are dropped.
        """
        current = self._sent_arrays()
        checked, refused = check_replies(replies, current, self.weighted_by_key, self.bounds, check_values=False)
        with np.errstate(all="ignore"):  # NaN/Inf from a bad reply are expected here, and caught
            new_arrays, stats, masks, used = self._fold(server_round, checked)
        if used and not _all_finite(new_arrays):
            log(WARNING, "FedGMA round %s: non-finite values in the replies; checking each one", server_round)
            checked, refused = check_replies(replies, current, self.weighted_by_key, self.bounds, check_values=True)
            new_arrays, stats, masks, used = self._fold(server_round, checked)
            if used and not _all_finite(new_arrays):
                log(ERROR, "FedGMA round %s: the aggregate of finite replies overflowed; "
                    "the global model is unchanged", server_round)
                return None
        for message, reason in refused:
            log(WARNING, "FedGMA round %s: dropped the reply of node %s: %s", server_round,
                message.metadata.src_node_id, reason)
        log_adjusted(f"FedGMA round {server_round}", checked)
        return new_arrays, stats, masks, used, len(refused), num_clipped(checked)

    def _fold(
        self, server_round: int, checked: Sequence[CheckedReply]
    ) -> tuple[dict[str, np.ndarray], MaskStats | None, dict[str, np.ndarray] | None, list[RecordDict]]:
        """Fold checked replies into a fresh aggregator; returns (arrays, stats, masks, used).

        With ``mask_metrics``, ``masks`` are the applied masks, kept for :meth:`_result` to
        observe: a round may fold twice (``_check_and_fold``), the observer sees the last
        fold only. Without it, ``masks`` is None.
        """
        masks: dict[str, np.ndarray] | None = None

        def keep(applied: Mapping[str, np.ndarray]) -> Mapping[str, float]:
            nonlocal masks
            masks = dict(applied)
            return {}

        aggregator = MaskedAggregator(
            self._sent_arrays(),
            variant=self.variant,
            tau=self.mask_tau,
            server_lr=self.server_lr,
            agreement_weighted=self.agreement_weighted,
            mask_control=self.mask_control,
            mask_seed=self.mask_seed,
            server_round=server_round,
            mask_metrics=keep if self.mask_metrics is not None else None,
        )
        pending: list[tuple[dict[str, np.ndarray], float]] = []  # views into the replies' bytes
        for reply in checked:
            if all(value.base is not None for value in reply.arrays.values()):
                pending.append((reply.arrays, reply.weight))  # folded together below, block by block
            else:
                aggregator.add(reply.arrays, reply.weight)  # a decoded copy: fold now, do not keep it
        aggregator.add_many(pending)
        del pending
        used = [reply.message.content for reply in checked]
        if not used:
            return {}, None, None, used
        new_arrays, stats = aggregator.result()
        return new_arrays, stats, masks, used


def _all_finite(arrays: dict[str, np.ndarray]) -> bool:
    return all(all_finite(value) for value in arrays.values())
