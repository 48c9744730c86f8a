"""Checks a training reply must pass before it may touch the global model."""

from __future__ import annotations

import functools
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from logging import WARNING
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SType
from flwr.supercore import log


class InvalidReply(ValueError):
    """A training reply that must not reach the aggregation; ``str()`` says why."""


@functools.lru_cache(maxsize=4096)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran_order, dtype)`` of a ``.npy`` header, or None if it is not one.

    Cached by the header's bytes: every reply repeats the global model's headers,
    and parsing one (``ast.literal_eval``) costs more than reading a small array.
    """
    handle = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            parsed = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            parsed = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
    except (ValueError, OSError):
        return None
    return parsed if handle.tell() == len(header) else None


def _npy_header_bytes(data: bytes | bytearray | memoryview) -> bytes | None:
    """The header of a ``.npy`` buffer (magic, version, length and text), or None."""
    prefix = bytes(data[:12])
    if len(prefix) < 10 or not prefix.startswith(b"\x93NUMPY"):
        return None
    if prefix[6] == 1:
        end = 10 + int.from_bytes(prefix[8:10], "little")
    elif prefix[6] == 2 and len(prefix) == 12:
        end = 12 + int.from_bytes(prefix[8:12], "little")
    else:
        return None
    return bytes(data[:end]) if end <= len(data) else None


def array_view(array: Array) -> np.ndarray:
    """A read-only NumPy view of a Flower ``Array``'s bytes, without copying them.

    ``Array.numpy()`` copies the whole buffer (``np.load`` on a BytesIO); the
    aggregation only reads each reply once, so it views the ``.npy`` payload
    in place. Anything but a plain, non-object ``.npy`` payload falls back to
    ``Array.numpy()``.
    """
    data = array.data
    if array.stype == SType.NUMPY and isinstance(data, (bytes, bytearray, memoryview)):
        header = _npy_header_bytes(data)
        parsed = _npy_header(header) if header is not None else None
        if header is None or parsed is None:
            return array.numpy()
        shape, fortran_order, dtype = parsed
        if not dtype.hasobject:
            count = int(np.prod(shape, dtype=np.int64))
            view = np.frombuffer(data, dtype=dtype, count=count, offset=len(header))
            return view.reshape(shape, order="F" if fortran_order else "C")
    return array.numpy()


def all_finite(value: np.ndarray) -> bool:
    """True if every value is finite: one summing pass, exact check only if the sum is not finite."""
    if not np.issubdtype(value.dtype, np.floating):
        return True
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, or an overflow: checked below
        total = np.add.reduce(value, axis=None)
    if np.isfinite(total):
        return True  # NaN and Inf propagate into the sum
    return bool(np.isfinite(value).all())  # an overflowing sum of finite values


def reply_weight(content: RecordDict, weighted_by_key: str) -> float:
    """The reply's aggregation weight: its one MetricRecord's ``weighted_by_key`` entry.

    It must be a positive finite number (an ``int`` or a ``float``, fractional
    weights included, as Flower's FedAvg takes them).

    Raises
    ------
    InvalidReply
        If the reply has not exactly one MetricRecord or the weight is not as above.
    """
    if len(content.metric_records) != 1:
        raise InvalidReply(
            f"expected exactly one MetricRecord, found {len(content.metric_records)}"
        )
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(weighted_by_key)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise InvalidReply(f"metric {weighted_by_key!r} missing or not a number: {weight!r}")
    if not math.isfinite(weight) or weight <= 0:
        raise InvalidReply(
            f"metric {weighted_by_key!r} must be a positive finite number, got {weight!r}"
        )
    return float(weight)


class DecodedReply(NamedTuple):
    """A checked training reply: its arrays (in the global model's dtypes), its weight, and
    the arrays that were cast to get there (``"name: float64 -> float32"``)."""

    arrays: dict[str, np.ndarray]
    weight: float
    cast: tuple[str, ...] = ()


def castable(value: np.dtype, reference: np.dtype) -> bool:
    """True if an array of dtype ``value`` may stand for one of dtype ``reference``, cast.

    Numbers of the same kind or a safer one (float64 for float32, int for float) are
    cast, as Flower's FedAvg averages them; a float for an integer array, a complex,
    or anything that is not a number is not.
    """
    return value.kind in "biuf" and np.can_cast(value, reference, casting="same_kind")


def decode_reply(
    content: RecordDict,
    global_arrays: dict[str, np.ndarray],
    weighted_by_key: str,
    check_values: bool = True,
) -> DecodedReply:
    """Decode a training reply into ``(arrays, weight, cast)`` after checking it.

    A good reply holds exactly one ArrayRecord whose arrays have the global
    model's names and shapes and only finite values, and exactly one
    MetricRecord whose ``weighted_by_key`` entry is a positive finite number.
    An array of another dtype is cast to the global model's when :func:`castable`
    allows it (and named in ``cast``), else refused. With ``check_values=False``
    the values are not read (no finiteness check): the caller must then check its
    result (see ``FedGMA.aggregate_train``). Bounds on the weight and the update
    are :class:`ReplyBounds`' job, applied by :func:`check_replies`.

    Raises
    ------
    InvalidReply
        With the first problem found.
    """
    if len(content.array_records) != 1:
        raise InvalidReply(
            f"expected exactly one ArrayRecord, found {len(content.array_records)}"
        )
    weight = reply_weight(content, weighted_by_key)
    record = next(iter(content.array_records.values()))
    missing = sorted(set(global_arrays) - set(record))
    extra = sorted(set(record) - set(global_arrays))
    if missing or extra:
        raise InvalidReply(
            f"array names differ from the global model: missing {missing}, extra {extra}"
        )
    arrays: dict[str, np.ndarray] = {}
    cast: list[str] = []
    for name, reference in global_arrays.items():
        try:
            value = array_view(record[name])
        except Exception as err:  # a corrupt buffer must not end the ServerApp
            raise InvalidReply(f"array {name!r} cannot be decoded: {err}") from err
        if value.shape != reference.shape:
            raise InvalidReply(
                f"array {name!r} has shape {value.shape}, expected {reference.shape}"
            )
        if value.dtype != reference.dtype:
            if not castable(value.dtype, reference.dtype):
                raise InvalidReply(
                    f"array {name!r} has dtype {value.dtype}, expected {reference.dtype}"
                )
            cast.append(f"{name}: {value.dtype} -> {reference.dtype}")
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught as non-finite
                value = value.astype(reference.dtype)
        if check_values and not all_finite(value):
            raise InvalidReply(f"array {name!r} has non-finite values")
        arrays[name] = value
    return DecodedReply(arrays, float(weight), tuple(cast))


def update_norm(arrays: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray]) -> float:
    """The L2 norm of the pseudo-gradient ``x - y`` over the floating-point arrays."""
    return math.sqrt(sum(
        float(np.square(global_arrays[name].astype(np.float64) - value).sum())
        for name, value in arrays.items()
        if np.issubdtype(value.dtype, np.floating)
    ))


@dataclass(frozen=True)
class CheckedReply:
    """A training reply that passed :func:`check_replies`, with its decoded arrays and
    weight (after any clipping, named in ``clipped``)."""

    message: Message
    arrays: dict[str, np.ndarray]
    weight: float
    cast: tuple[str, ...] = ()
    clipped: tuple[str, ...] = ()


@runtime_checkable
class AggregatesCheckedReplies(Protocol):
    """A strategy that takes training replies its caller has checked already.

    ``fedgma.loop.RoundLoop`` checks every training reply once (:func:`check_replies`,
    against the arrays it gave the strategy's ``configure_train`` that round, with the
    strategy's ``weighted_by_key``). A strategy with ``aggregate_checked`` gets the checked
    replies, decoded arrays included; any other strategy gets their (clipped) messages
    through Flower's ``aggregate_train``. ``aggregate_train`` itself, as
    ``Strategy.start`` calls it, must check every reply.
    """

    def aggregate_checked(
        self, server_round: int, replies: Sequence[CheckedReply]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate replies that passed :func:`check_replies` this round, in their order."""
        ...


@dataclass(frozen=True)
class ReplyBounds:
    """Bounds on what one training reply may contribute; None: no bound (FedAvg's behaviour).

    A reply beyond a bound is clipped to it, not dropped, so an honest client that
    happens to exceed a bound still counts, with less influence. Each bound trades
    some of an honest federation's result for a limit on a lying client:

    Attributes
    ----------
    max_num_examples : Optional[float]
        Largest weight a reply may claim; a larger claim counts as this much. Protects
        against a client claiming a huge count to take the average; costs an honest
        federation whose clients hold more than this.
    max_weight_ratio : Optional[float]
        Largest weight a reply may claim as a multiple (>= 1) of the round's lower median
        weight; a larger claim counts as that much. The same protection without knowing
        the data sizes in advance; costs a federation whose honest sizes differ by more
        than this factor (their large clients lose weight).
    max_update_norm : Optional[float]
        Largest L2 norm of a reply's pseudo-gradient ``x - y`` (over the floating-point
        arrays); a larger update is scaled down to it. Protects against one client
        pushing the model far in one round; costs an honest federation whose updates
        are larger (early rounds, large learning rates): they are shortened.
    max_norm_ratio : Optional[float]
        Largest update norm as a multiple (>= 1) of the round's lower median update
        norm; a longer update is scaled down to it. The same protection without a
        norm known in advance, following the model as its updates shrink; costs an
        honest federation whose clients' update norms differ by more than this factor.
    """

    max_num_examples: float | None = None
    max_update_norm: float | None = None
    max_weight_ratio: float | None = None
    max_norm_ratio: float | None = None

    @classmethod
    def coerce(cls, bounds: ReplyBounds | None) -> ReplyBounds:
        """``bounds`` as given, or no bounds for None (how FedGMA and the round loop take them).

        Raises
        ------
        TypeError
            If ``bounds`` is neither a ``ReplyBounds`` nor None.
        """
        if bounds is None:
            return cls()
        if not isinstance(bounds, ReplyBounds):
            raise TypeError(f"FedGMA: bounds must be a ReplyBounds or None, got {type(bounds).__name__}")
        return bounds

    def __post_init__(self) -> None:
        # A weight or norm bound of 0 would zero every reply: no round could move the model.
        for name in ("max_num_examples", "max_update_norm"):
            _check_bound(name, getattr(self, name), 0.0, above=True)
        for name in ("max_weight_ratio", "max_norm_ratio"):
            _check_bound(name, getattr(self, name), 1.0)

    @property
    def bounds_norms(self) -> bool:
        """True if a bound applies to the update norm (the replies' norms are then needed)."""
        return self.max_update_norm is not None or self.max_norm_ratio is not None

    def weight_limit(self, weights: list[float]) -> tuple[float, str] | None:
        """The largest weight a reply of this round may carry, and why; None: no limit.

        The ratio is measured against the lower median (``statistics.median_low``), so
        a single client claiming an enormous count cannot raise the limit it is held to:
        with two replies, the larger is measured against the smaller.
        """
        limits: list[tuple[float, str]] = []
        if self.max_num_examples is not None:
            limits.append((self.max_num_examples, f"max_num_examples {self.max_num_examples:g}"))
        if self.max_weight_ratio is not None and len(weights) >= 2:
            median = statistics.median_low(weights)
            limits.append((self.max_weight_ratio * median,
                           f"{self.max_weight_ratio:g} x the round's lower median {median:g}"))
        return min(limits) if limits else None

    def norm_limit(self, norms: list[float]) -> tuple[float, str] | None:
        """The largest update norm a reply of this round may have, and why; None: no limit
        (the ratio, like the weight's, against the lower median)."""
        limits: list[tuple[float, str]] = []
        if self.max_update_norm is not None:
            limits.append((self.max_update_norm, f"max_update_norm {self.max_update_norm:g}"))
        if self.max_norm_ratio is not None and len(norms) >= 2:
            median = statistics.median_low(norms)
            limits.append((self.max_norm_ratio * median,
                           f"{self.max_norm_ratio:g} x the round's lower median norm {median:.4g}"))
        return min(limits) if limits else None

    def clip(self, reply: CheckedReply, limit: tuple[float, str] | None,
             global_arrays: dict[str, np.ndarray], weighted_by_key: str,
             norm_limit: tuple[float, str] | None = None, norm: float | None = None) -> CheckedReply:
        """``reply`` within the bounds: its weight at most ``limit``, its update norm (``norm``,
        computed if None) at most ``norm_limit``. The message's content is clipped in place
        too (as Flower's clipping wrappers do), so any strategy that reads the message sees
        the clipped reply."""
        weight, arrays, clipped = reply.weight, reply.arrays, list(reply.clipped)
        content = reply.message.content
        if limit is not None and weight > limit[0]:
            clipped.append(f"weight {weight:g} clipped to {limit[0]:g} ({limit[1]})")
            weight = limit[0]
            next(iter(content.metric_records.values()))[weighted_by_key] = weight
        if norm_limit is not None:
            norm = update_norm(arrays, global_arrays) if norm is None else norm
            if norm > norm_limit[0]:  # False for NaN: a non-finite reply is refused elsewhere
                scale = norm_limit[0] / norm
                arrays = {
                    name: (global_arrays[name] - scale * (global_arrays[name].astype(np.float64) - value)
                           ).astype(value.dtype)
                    if np.issubdtype(value.dtype, np.floating) else value
                    for name, value in arrays.items()
                }
                clipped.append(f"update norm {norm:.4g} scaled to {norm_limit[0]:.4g} ({norm_limit[1]})")
                record = next(iter(content.array_records.values()))
                for name, value in arrays.items():
                    record[name] = Array(value)
        if not clipped:
            return reply
        return CheckedReply(reply.message, arrays, weight, reply.cast, tuple(clipped))


def _check_bound(name: str, value: float | None, low: float, above: bool = False) -> None:
    """``value`` is None or a finite number >= ``low`` (> ``low`` where ``above``)."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < low or (above and value == low)):
        raise ValueError(f"FedGMA: {name} must be None or a finite number {'>' if above else '>='} {low:g}, "
                         f"got {value!r}")


def check_replies(
    replies: Iterable[Message],
    global_arrays: dict[str, np.ndarray],
    weighted_by_key: str,
    bounds: ReplyBounds,
    check_values: bool = True,
) -> tuple[list[CheckedReply], list[tuple[Message, str]]]:
    """Check one round's training replies against the global arrays; the one place that does.

    Each reply is decoded and checked (:func:`decode_reply`); a malformed one is left out.
    The well-formed ones are then held to ``bounds`` (:meth:`ReplyBounds.clip`: a weight
    above the round's limit, or an update above the norm bound, is clipped). Returns the
    good replies, in their given order, and ``(message, reason)`` for each one left out.
    With ``check_values=False`` the values are not checked for finiteness (see
    :func:`decode_reply`): only :class:`fedgma.strategy.FedGMA`'s own fast path does that.
    """
    good: list[CheckedReply] = []
    refused: list[tuple[Message, str]] = []
    for message in replies:
        try:
            decoded = decode_reply(message.content, global_arrays, weighted_by_key, check_values)
        except InvalidReply as err:
            refused.append((message, str(err)))
            continue
        good.append(CheckedReply(message, *decoded))
    limit = bounds.weight_limit([reply.weight for reply in good])
    norms: list[float | None] = [None] * len(good)
    norm_limit = None
    if bounds.bounds_norms:
        norms = [update_norm(reply.arrays, global_arrays) for reply in good]
        norm_limit = bounds.norm_limit([norm for norm in norms if norm is not None])
    kept = [bounds.clip(reply, limit, global_arrays, weighted_by_key, norm_limit, norm)
            for reply, norm in zip(good, norms, strict=True)]
    return kept, refused


def num_clipped(checked: Sequence[CheckedReply]) -> int:
    """How many of the checked replies were clipped to a bound."""
    return sum(1 for reply in checked if reply.clipped)


def log_adjusted(where: str, checked: Sequence[CheckedReply]) -> None:
    """Log each checked reply that was cast to the model's dtypes or clipped to a bound."""
    for reply in checked:
        node = reply.message.metadata.src_node_id
        if reply.cast:
            log(WARNING, "%s: node %s's reply was cast to the model's dtypes (%s)", where, node,
                "; ".join(reply.cast))
        if reply.clipped:
            log(WARNING, "%s: node %s's reply was clipped (%s)", where, node, "; ".join(reply.clipped))
