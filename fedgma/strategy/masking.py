"""FedGMA's server-side math as pure NumPy functions (no Flower needed).

Notation follows ``FEDGMA.md``: global weights ``x``, client weights ``y_k``,
pseudo-gradients ``g_k = x - y_k``, client weights ``p_k = n_k / sum_j n_j``.

Aggregation streams over clients: :class:`MaskedAggregator` keeps, per array,
only the running sums ``sum_k sign(g_k)`` (or ``sum_k n_k sign(g_k)``) and
``sum_k n_k g_k``, so its extra memory is O(P), independent of the number of
clients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
import numpy.typing as npt

Variant = Literal["ws", "gma"]
MaskControl = Literal["none", "random", "uniform"]
# An observer of each round's applied masks (floating-point arrays, by name) returning metrics.
MaskObserver = Callable[[Mapping[str, np.ndarray]], Mapping[str, float]]
# Elements per block of the streaming fold: two float32 scratch blocks of 256 KiB
# stay in the CPU cache with the slices they work on.
BLOCK = 1 << 16
VARIANTS: tuple[str, ...] = ("ws", "gma")
DEFAULT_TAU: dict[str, float] = {"ws": 0.8, "gma": 0.4}
MASK_CONTROLS: tuple[str, ...] = ("none", "random", "uniform")


def resolve_tau(variant: str, tau: float | None = None) -> float:
    """The mask's agreement threshold: ``tau``, or ``variant``'s default for None.

    The one place the default is chosen (``DEFAULT_TAU``: 0.8 for ``"ws"``, 0.4 for
    ``"gma"``) and the threshold checked; FedGMA, FedGMAAdam and the app call it.

    Raises
    ------
    ValueError
        If ``variant`` is unknown or ``tau`` is not a number in ``[0, 1]``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"FedGMA: variant must be one of {VARIANTS}, got {variant!r}")
    if tau is None:
        return DEFAULT_TAU[variant]
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
        raise ValueError(f"FedGMA: mask_tau must be a number in [0, 1], got {tau!r}")
    return float(tau)


def resolve_mask_control(mask_control: str, mask_seed: int = 0) -> tuple[MaskControl, int]:
    """Check a mask control and its seed; the one place they are checked (FedGMA,
    FedGMAAdam and :class:`MaskedAggregator` call it).

    ``mask_control`` is one of ``MASK_CONTROLS``: ``"none"`` (the agreement mask),
    ``"random"`` (each array's agreement mask, its values shuffled among the array's
    coordinates) or ``"uniform"`` (every coordinate gets the round's mean mask value).

    Raises
    ------
    ValueError
        If ``mask_control`` is not one of ``MASK_CONTROLS``, or ``mask_seed`` is not an
        integer ``>= 0``.
    """
    if not isinstance(mask_control, str) or mask_control not in MASK_CONTROLS:
        raise ValueError(f"FedGMA: mask_control must be one of {MASK_CONTROLS}, got {mask_control!r}")
    if isinstance(mask_seed, bool) or not isinstance(mask_seed, (int, np.integer)) or mask_seed < 0:
        raise ValueError(f"FedGMA: mask_seed must be an integer >= 0, got {mask_seed!r}")
    return cast(MaskControl, mask_control), int(mask_seed)


def observe_masks(observer: MaskObserver, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Call a ``mask_metrics`` observer on a round's applied masks and check what it returns:
    a mapping of metric names (strings) to finite numbers, returned as floats.

    Raises
    ------
    TypeError
        If the observer returns no mapping, a name that is not a string, or a value that
        is not a number (the error names the metric).
    ValueError
        If a value is not finite (the error names the metric).
    """
    returned = observer(masks)
    if not isinstance(returned, Mapping):
        raise TypeError(f"FedGMA: mask_metrics must return a mapping of metric names to numbers, "
                        f"got {type(returned).__name__}")
    metrics: dict[str, float] = {}
    for name, value in returned.items():
        if not isinstance(name, str):
            raise TypeError(f"FedGMA: mask_metrics returned a metric name that is not a string: {name!r}")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"FedGMA: mask metric {name!r} must be a finite number, got {value!r}")
        number = float(value)
        if not np.isfinite(number):
            raise ValueError(f"FedGMA: mask metric {name!r} must be a finite number, got {number!r}")
        metrics[name] = number
    return metrics


def check_mask_metrics(mask_metrics: object) -> None:
    """Refuse a ``mask_metrics`` observer that is neither callable nor None.

    Raises
    ------
    TypeError
        If ``mask_metrics`` is not callable and not None.
    """
    if mask_metrics is not None and not callable(mask_metrics):
        raise TypeError(f"FedGMA: mask_metrics must be callable or None, got {mask_metrics!r}")


def shuffled_mask(mask: np.ndarray, mask_seed: int, server_round: int, index: int) -> np.ndarray:
    """The ``"random"`` control: ``mask``'s values permuted among its coordinates by
    ``np.random.default_rng([mask_seed, server_round, index])`` (same seed, round and
    array number: the same permutation, so a resumed run applies the same masks)."""
    rng = np.random.default_rng([mask_seed, server_round, index])
    shuffled: np.ndarray = rng.permutation(mask.reshape(-1)).reshape(mask.shape)
    return shuffled


def agreement_score(sign_sum: np.ndarray, total_weight: float) -> np.ndarray:
    """Return ``A = |sign_sum| / total_weight``, the per-coordinate sign agreement.

    ``sign_sum`` is ``sum_k sign(g_k)`` with ``total_weight = K`` (the AND-mask
    paper's definition), or ``sum_k n_k sign(g_k)`` with ``total_weight =
    sum_k n_k`` (agreement weighted by examples). ``sign(0) = 0``, so a client
    whose pseudo-gradient is exactly zero lowers the agreement.
    """
    score: np.ndarray = np.abs(sign_sum) / total_weight
    return score


def mask_from_agreement(agreement: np.ndarray, tau: float, variant: Variant) -> np.ndarray:
    """Turn agreement scores into the FedGMA mask (see :func:`apply_mask_rule`)."""
    return apply_mask_rule(agreement >= tau, agreement, variant)


def apply_mask_rule(
    kept: np.ndarray, agreement: np.ndarray, variant: Variant, out: np.ndarray | None = None
) -> np.ndarray:
    """The FedGMA mask from where the agreement reaches the threshold (``kept``, i.e.
    ``A >= tau``) and the agreement ``A`` itself; the mask rule, written once.

    ``ws``: binary mask, ``1`` where ``A >= tau`` else ``0`` (``A`` gives only the dtype).
    ``gma``: soft mask, ``1`` where ``A >= tau`` else ``A``; computed as ``max(A, kept)``,
    which is that since ``0 <= A <= 1``, in place into ``out`` when given.
    """
    mask: np.ndarray
    if variant == "ws":
        mask = kept.astype(agreement.dtype)
        return mask
    if variant == "gma":
        mask = np.maximum(agreement, kept, out=out, dtype=agreement.dtype)
        return mask
    raise ValueError(f"Unknown FedGMA variant {variant!r}; expected one of {VARIANTS}")


def kept_count_threshold(num_clients: int, tau: float) -> int:
    """The smallest count ``m`` of agreeing signs with ``m / num_clients >= tau``.

    With unweighted agreement ``A = |sum_k sign(g_k)| / K``, ``A >= tau`` is exactly
    ``|sum_k sign(g_k)| >= m`` (the sums are integers), decided here in float64 as
    ``agreement_score(...) >= tau`` decides it.
    """
    return next(m for m in range(num_clients + 1) if m / num_clients >= tau)


def server_update(
    x: np.ndarray, g_bar: np.ndarray, mask: np.ndarray, server_lr: float, variant: Variant
) -> np.ndarray:
    """Return the new global array from the averaged pseudo-gradient and the mask.

    ``ws``:  ``x - g_bar - server_lr * mask * g_bar`` (FedAvg plus a masked extra step).
    ``gma``: ``x - server_lr * mask * g_bar``.
    """
    step = mask * g_bar
    if server_lr != 1.0:
        step *= server_lr
    new: np.ndarray
    if variant == "ws":
        new = x - g_bar - step
        return new
    if variant == "gma":
        new = x - step
        return new
    raise ValueError(f"Unknown FedGMA variant {variant!r}; expected one of {VARIANTS}")


def _add_weighted(total: np.ndarray, g: np.ndarray, weight: float) -> None:
    """``total += weight * g`` in place (``g`` is overwritten)."""
    np.multiply(g, weight, out=g)
    np.add(total, g, out=total)


@dataclass
class MaskStats:
    """Summary of one round's mask over all masked (floating-point) coordinates.

    Attributes
    ----------
    kept_fraction : float
        Fraction of coordinates with agreement ``A >= tau`` (mask value 1).
    mask_mean : float
        Mean mask value (equals ``kept_fraction`` for the ``ws`` variant).
    agreement_mean : float
        Mean agreement score ``A``.
    num_coordinates : int
        Number of masked coordinates.
    observed : dict[str, float]
        What the ``mask_metrics`` observer returned (empty without one).

    With a mask control, ``kept_fraction`` and ``mask_mean`` describe the mask applied
    (``"random"``: those of the agreement mask, whose values it shuffles; ``"uniform"``:
    the fraction of coordinates whose value is 1, and the uniform value);
    ``agreement_mean`` is always that of the agreement.
    """

    kept_fraction: float
    mask_mean: float
    agreement_mean: float
    num_coordinates: int
    observed: dict[str, float] = field(default_factory=dict)


class MaskedAggregator:
    """Streaming FedGMA aggregation over client replies.

    Parameters
    ----------
    global_arrays : dict[str, np.ndarray]
        The global weights ``x_t`` sent to the clients this round.
    variant : {"ws", "gma"}
        FedGMA variant.
    tau : float
        Agreement threshold in ``[0, 1]``.
    server_lr : float
        Server step size ``eta_s``.
    agreement_weighted : bool
        Weight the sign agreement by example counts instead of ``1 / K``.
    mask_control : {"none", "random", "uniform"} (default: "none")
        The mask applied (see :func:`resolve_mask_control`): ``"none"``, the
        agreement mask; ``"random"``, each array's agreement mask with its values
        permuted among the array's coordinates (the same number of kept coordinates
        and the same mask mean per array, at random places); ``"uniform"``, every
        masked coordinate of the model set to the round's mean agreement-mask value.
    mask_seed : int (default: 0)
        Seed of the ``"random"`` control: array number ``i`` (in the order of
        ``global_arrays``) is permuted by ``np.random.default_rng([mask_seed,
        server_round, i])`` (see :func:`shuffled_mask`).
    server_round : Optional[int] (default: None)
        This round's number; needed by the ``"random"`` control.
    mask_metrics : Optional[Callable] (default: None)
        Called once in :meth:`result` with the masks applied (after the control),
        by array name, floating-point arrays only, each of its array's shape
        (read-only); what it returns, metric names to finite numbers, is
        ``MaskStats.observed`` (see :func:`observe_masks`).

    Notes
    -----
    Floating-point arrays are masked. Arrays of any other dtype (integer
    counters such as BatchNorm's ``num_batches_tracked``, booleans) are never
    masked: they take the plain example-weighted average of the clients' values,
    rounded and cast back to their dtype, so the global model keeps its dtypes.

    With a mask control other than ``"none"``, or with ``mask_metrics``,
    :meth:`result` materialises every array's mask before it steps: O(P) more
    memory for that call (meant for research runs). Otherwise unweighted
    agreement takes a fused block-wise pass that never holds a whole mask.

    Raises
    ------
    ValueError
        If ``mask_control`` or ``mask_seed`` is refused by :func:`resolve_mask_control`,
        or ``"random"`` is asked for without ``server_round``.
    """

    def __init__(
        self,
        global_arrays: dict[str, np.ndarray],
        variant: Variant,
        tau: float,
        server_lr: float,
        agreement_weighted: bool = False,
        *,
        mask_control: str = "none",
        mask_seed: int = 0,
        server_round: int | None = None,
        mask_metrics: MaskObserver | None = None,
    ) -> None:
        self.mask_control, self.mask_seed = resolve_mask_control(mask_control, mask_seed)
        if self.mask_control == "random" and (
            isinstance(server_round, bool) or not isinstance(server_round, (int, np.integer)) or server_round < 0
        ):
            raise ValueError(f"FedGMA: mask_control='random' needs the round number (an integer >= 0), "
                             f"got server_round={server_round!r}")
        check_mask_metrics(mask_metrics)
        self.global_arrays = global_arrays
        self.variant = variant
        self.tau = tau
        self.server_lr = server_lr
        self.agreement_weighted = agreement_weighted
        self.server_round = server_round
        self.mask_metrics = mask_metrics
        self.num_clients = 0
        self.total_examples = 0.0
        # Running sums, allocated on the first client.
        self._grad_sum: dict[str, np.ndarray] = {}
        self._sign_sum: dict[str, np.ndarray] = {}
        self._value_sum: dict[str, np.ndarray] = {}
        self._scratch: tuple[np.ndarray, ...] | None = None
        self._finished = False

    @staticmethod
    def is_masked(array: np.ndarray) -> bool:
        """Return True for arrays the mask applies to (floating point)."""
        return np.issubdtype(array.dtype, np.floating)

    def add(self, client_arrays: dict[str, np.ndarray], num_examples: float) -> None:
        """Fold one client's returned weights into the running sums (see :meth:`add_many`)."""
        self.add_many([(client_arrays, num_examples)])

    def add_many(self, clients: list[tuple[dict[str, np.ndarray], float]]) -> None:
        """Fold several clients' returned weights into the running sums.

        The caller guarantees that every client's arrays have the global
        model's names, shapes and dtypes (see ``validation``). They are only
        read (they may be read-only views of the replies' bytes). The fold runs
        block by block, every client's block in turn, so the global weights and
        the running sums of a block stay in the CPU cache while the clients'
        blocks stream past: each reply is read from memory once, and the only
        scratch memory is two blocks.
        """
        if not clients:
            return
        weights = [float(w) for _, w in clients]
        for name, x in self.global_arrays.items():
            if not self.is_masked(x):
                for (arrays, _), weight in zip(clients, weights, strict=True):
                    self._accumulate(self._value_sum, name, arrays[name].astype(np.float64) * weight)
                continue
            if self.agreement_weighted:
                sign_sum = self._sums(self._sign_sum, name, x.shape, np.float64)
            else:
                # Counts of +-1 are exact integers in float32 up to 2**24 clients
                # (float16 models count in float32 too: float16 is exact only up to 2048).
                sign_sum = self._sums(self._sign_sum, name, x.shape, np.result_type(x.dtype, np.float32))
            grad_sum = self._sums(self._grad_sum, name, x.shape, x.dtype)
            ys = [np.ascontiguousarray(arrays[name]).reshape(-1) for arrays, _ in clients]
            self._fold_blocks(x, ys, weights, sign_sum, grad_sum)
        self.num_clients += len(clients)
        self.total_examples += sum(weights)

    @staticmethod
    def _sums(sums: dict[str, np.ndarray], name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        if name not in sums:
            sums[name] = np.zeros(shape, dtype=dtype)
        return sums[name]

    def _fold_blocks(self, x: np.ndarray, ys: list[np.ndarray], weights: list[float],
                     sign_sum: np.ndarray, grad_sum: np.ndarray) -> None:
        """For each client: ``sign_sum += sign(x - y)`` (times its weight if weighted) and
        ``grad_sum += weight * (x - y)``, block by block.

        Unweighted, the signs are not computed: ``np.sign`` is slow (not vectorised),
        so each block counts the clients with ``x - y > 0`` and with ``x - y < 0`` in
        two ``uint8`` blocks (boolean flags added as bytes, up to 255 clients at a
        time) and adds ``positives - negatives`` to the float32 sums: the same exact
        integers, and ``sign(0) = 0`` (zero is neither).
        """
        xf, sf, gf = x.reshape(-1), sign_sum.reshape(-1), grad_sum.reshape(-1)
        size = xf.size
        block = min(BLOCK, size)
        scratch = self._scratch_blocks(block, x.dtype)
        for start in range(0, size, block):
            stop = min(start + block, size)
            xs, ss, gs = xf[start:stop], sf[start:stop], gf[start:stop]
            g, sign, flag, positive, negative = (a[: stop - start] for a in scratch)

            if self.agreement_weighted:  # float64: example counts are not exact in float32
                for y, weight in zip(ys, weights, strict=True):
                    np.subtract(xs, y[start:stop], out=g)
                    ss += np.sign(g, out=sign).astype(np.float64) * weight
                    _add_weighted(gs, g, weight)
                continue
            for first in range(0, len(ys), 255):
                positive.fill(0)
                negative.fill(0)
                for y, weight in zip(ys[first:first + 255], weights[first:first + 255], strict=True):
                    np.subtract(xs, y[start:stop], out=g)
                    np.add(positive, np.greater(g, 0, out=flag).view(np.uint8), out=positive)
                    np.add(negative, np.less(g, 0, out=flag).view(np.uint8), out=negative)
                    _add_weighted(gs, g, weight)
                np.add(ss, positive, out=ss)
                np.subtract(ss, negative, out=ss)

    def _scratch_blocks(self, block: int, dtype: np.dtype) -> tuple[np.ndarray, ...]:
        """Blocks reused across arrays and calls: pseudo-gradient, signs, flags, two counts."""
        if self._scratch is None or self._scratch[0].size < block or self._scratch[0].dtype != dtype:
            self._scratch = (np.empty(block, dtype=dtype), np.empty(block, dtype=dtype),
                             np.empty(block, dtype=np.bool_), np.empty(block, dtype=np.uint8),
                             np.empty(block, dtype=np.uint8))
        return self._scratch

    @staticmethod
    def _accumulate(sums: dict[str, np.ndarray], name: str, value: np.ndarray) -> None:
        if name in sums:
            sums[name] += value
        else:
            sums[name] = value

    def _block_mask(self, counts: np.ndarray, threshold: int) -> tuple[np.ndarray, float, float, float]:
        """The mask of one block of unweighted sign sums, which it consumes in place.

        ``counts`` holds exact integers (sums of +-1), so ``A >= tau`` is
        ``|sum| >= threshold`` for the smallest integer ``m`` with ``m / K >= tau``
        (:func:`kept_count_threshold`, decided in float64 as ``agreement_score(...) >= tau``).
        Returns the mask (in the sums' dtype) and the sums of the kept indicator, the
        mask and ``A`` over the block.
        """
        k = self.num_clients
        np.abs(counts, out=counts)
        kept = counts >= threshold
        kept_here = float(np.count_nonzero(kept))
        agreement_here = float(counts.sum(dtype=np.float64)) / k
        if self.variant == "gma":
            np.divide(counts, k, out=counts)  # A, in [0, 1] (ws needs only `kept`)
        mask = apply_mask_rule(kept, counts, self.variant, out=counts)
        mask_here = kept_here if self.variant == "ws" else float(mask.sum(dtype=np.float64))
        return mask, kept_here, mask_here, agreement_here

    def _masked_update_blocks(self, x: np.ndarray, sign_sum: np.ndarray, grad_sum: np.ndarray
                              ) -> tuple[np.ndarray, float, float, float]:
        """The new array from unweighted sign counts, block by block (cache-resident passes).

        The sums are consumed in place. Returns the new array and the sums of the
        kept indicator, the mask and ``A`` over its coordinates.
        """
        threshold = kept_count_threshold(self.num_clients, self.tau)
        new = np.empty(x.shape, dtype=x.dtype)
        xf, sf, gf, nf = x.reshape(-1), sign_sum.reshape(-1), grad_sum.reshape(-1), new.reshape(-1)
        kept_total = mask_total = agreement_total = 0.0
        for start in range(0, xf.size, BLOCK):
            stop = min(start + BLOCK, xf.size)
            g_bar = gf[start:stop]
            g_bar /= self.total_examples
            mask, kept_here, mask_here, agreement_here = self._block_mask(sf[start:stop], threshold)
            kept_total += kept_here
            mask_total += mask_here
            agreement_total += agreement_here
            mask = mask.astype(x.dtype, copy=False)
            nf[start:stop] = server_update(xf[start:stop], g_bar, mask, self.server_lr, self.variant)
        return new, kept_total, mask_total, agreement_total

    def _agreement_mask(self, name: str, x: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """Array ``name``'s agreement mask, whole (in ``x``'s dtype), and the sums of the kept
        indicator, the mask and ``A`` over it; the sign sums are consumed. Unweighted, the
        blocks of :meth:`_masked_update_blocks` give the same values, bit for bit."""
        sign_sum = self._sign_sum[name]
        if not self.agreement_weighted:
            threshold = kept_count_threshold(self.num_clients, self.tau)
            mask = np.empty(x.shape, dtype=x.dtype)
            sf, mf = sign_sum.reshape(-1), mask.reshape(-1)
            kept_total = mask_total = agreement_total = 0.0
            for start in range(0, sf.size, BLOCK):
                stop = min(start + BLOCK, sf.size)
                block, kept_here, mask_here, agreement_here = self._block_mask(sf[start:stop], threshold)
                mf[start:stop] = block
                kept_total += kept_here
                mask_total += mask_here
                agreement_total += agreement_here
            return mask, kept_total, mask_total, agreement_total
        agreement = agreement_score(sign_sum, self.total_examples)
        mask = mask_from_agreement(agreement, self.tau, self.variant).astype(x.dtype)
        return (mask, float(np.count_nonzero(agreement >= self.tau)), float(mask.sum(dtype=np.float64)),
                float(agreement.sum(dtype=np.float64)))

    def _g_bar(self, name: str) -> np.ndarray:
        """The averaged pseudo-gradient of array ``name``, in place of its running sum."""
        g_bar = self._grad_sum[name]
        g_bar /= self.total_examples
        return g_bar

    def result(self) -> tuple[dict[str, np.ndarray], MaskStats]:
        """Return the new global arrays and the mask statistics (call once: the
        running sums are reused in place).

        Raises
        ------
        ValueError
            If no client was added, or the clients' example counts sum to zero, or
            (from :func:`observe_masks`) ``mask_metrics`` returned a non-finite value.
        TypeError
            If ``mask_metrics`` returned no mapping of names to numbers.
        RuntimeError
            If called a second time.
        """
        if self._finished:
            raise RuntimeError("MaskedAggregator.result() may be called only once")
        if self.num_clients == 0 or self.total_examples <= 0:
            raise ValueError("FedGMA aggregation needs at least one client with examples")
        self._finished = True
        self._scratch = None
        new_arrays: dict[str, np.ndarray] = {}
        for name, x in self.global_arrays.items():
            if not self.is_masked(x):
                mean = self._value_sum[name] / self.total_examples
                new_arrays[name] = np.asarray(np.rint(mean)).astype(x.dtype)
        if self.mask_control != "none" or self.mask_metrics is not None:
            return self._result_with_masks(new_arrays)
        kept = mask_sum = agreement_sum = 0.0
        count = 0
        for name, x in self.global_arrays.items():
            if not self.is_masked(x):
                continue
            if self.agreement_weighted:
                mask, kept_here, mask_here, agreement_here = self._agreement_mask(name, x)
                new_arrays[name] = server_update(x, self._g_bar(name), mask, self.server_lr, self.variant)
            else:  # fused: no whole mask is held
                new_arrays[name], kept_here, mask_here, agreement_here = self._masked_update_blocks(
                    x, self._sign_sum[name], self._grad_sum[name]
                )
            kept += kept_here
            mask_sum += mask_here
            agreement_sum += agreement_here
            count += x.size
        new_arrays = {name: new_arrays[name] for name in self.global_arrays}  # the model's order
        return new_arrays, self._stats(kept, mask_sum, agreement_sum, count)

    def _result_with_masks(self, new_arrays: dict[str, np.ndarray]
                           ) -> tuple[dict[str, np.ndarray], MaskStats]:
        """:meth:`result` with every mask materialised: the agreement masks, then the control,
        then the observer, then the steps."""
        masks: dict[str, np.ndarray] = {}
        kept = mask_sum = agreement_sum = 0.0
        count = 0
        for name, x in self.global_arrays.items():
            if self.is_masked(x):
                masks[name], kept_here, mask_here, agreement_here = self._agreement_mask(name, x)
                kept += kept_here
                mask_sum += mask_here
                agreement_sum += agreement_here
                count += x.size
        if self.mask_control == "random":
            # The permutation keeps each array's values, hence the kept count and the mask sum.
            assert self.server_round is not None  # checked in __init__
            for index, name in enumerate(self.global_arrays):
                if name in masks:
                    masks[name] = shuffled_mask(masks[name], self.mask_seed, int(self.server_round), index)
        elif self.mask_control == "uniform":
            # One value everywhere: the mean agreement-mask value (so the mask sum is kept).
            mean = mask_sum / max(count, 1)
            kept = 0.0
            for name in masks:
                x = self.global_arrays[name]
                value = np.asarray(mean, dtype=x.dtype)
                masks[name] = np.broadcast_to(value, x.shape)
                kept += x.size if value == 1 else 0
        for mask in masks.values():
            mask.flags.writeable = False
        observed = observe_masks(self.mask_metrics, masks) if self.mask_metrics is not None else {}
        for name, mask in masks.items():
            new_arrays[name] = server_update(self.global_arrays[name], self._g_bar(name), mask,
                                             self.server_lr, self.variant)
        new_arrays = {name: new_arrays[name] for name in self.global_arrays}  # the model's order
        stats = self._stats(kept, mask_sum, agreement_sum, count)
        stats.observed = observed
        return new_arrays, stats

    @staticmethod
    def _stats(kept: float, mask_sum: float, agreement_sum: float, count: int) -> MaskStats:
        denominator = max(count, 1)
        return MaskStats(
            kept_fraction=kept / denominator,
            mask_mean=mask_sum / denominator,
            agreement_mean=agreement_sum / denominator,
            num_coordinates=count,
        )
