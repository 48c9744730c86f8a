"""Checks a training reply must pass before it may touch the global model."""

from __future__ import annotations

import functools
import io
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from flwr.app import Array, Message, RecordDict
from flwr.common.constant import SType

DEFAULT_MAX_WEIGHT_RATIO = 10.0


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
        if parsed is None:
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


def reply_weight(
    content: RecordDict, weighted_by_key: str, max_num_examples: float | None = None
) -> float:
    """The reply's aggregation weight: its one MetricRecord's ``weighted_by_key`` entry.

    It must be a positive finite number (an ``int`` or a ``float``, fractional
    weights included, as Flower's FedAvg takes them), at most ``max_num_examples``
    when given.

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
    if max_num_examples is not None and weight > max_num_examples:
        raise InvalidReply(
            f"metric {weighted_by_key!r} is {weight!r}, above the bound {max_num_examples:g}"
        )
    return float(weight)


def weight_outliers(weights: list[float], max_ratio: float | None) -> dict[int, str]:
    """Which replies claim too much weight: ``{index: reason}`` for each weight above
    ``max_ratio`` times the round's median weight.

    The median is the lower median (``statistics.median_low``), so a single client
    claiming an enormous count cannot raise the bound it is measured against: with two
    replies, the larger is measured against the smaller. ``None`` (or 0) means no bound.
    A client can still claim up to ``max_ratio`` times the median: this bounds a lie,
    it does not make the average Byzantine-robust.
    """
    if not max_ratio or len(weights) < 2:
        return {}
    median = statistics.median_low(weights)
    bound = max_ratio * median
    return {
        i: f"claims weight {w:g}, above {max_ratio:g} x the round's median {median:g}"
        for i, w in enumerate(weights)
        if w > bound
    }


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
    max_num_examples: float | None = None,
    max_update_norm: float | None = None,
    check_values: bool = True,
) -> DecodedReply:
    """Decode a training reply into ``(arrays, weight, cast)`` after checking it.

    A good reply holds exactly one ArrayRecord whose arrays have the global
    model's names and shapes and only finite values, and exactly one
    MetricRecord whose ``weighted_by_key`` entry is a positive finite number,
    at most ``max_num_examples`` when given. An array of another dtype is cast
    to the global model's when :func:`castable` allows it (and named in
    ``cast``), else refused. With ``max_update_norm``, the L2 norm of the pseudo-gradient
    ``x - y`` over all floating-point arrays must not exceed it. With
    ``check_values=False`` the values are not read (no finiteness check): the
    caller must then check its result (see ``FedGMA.aggregate_train``).

    Raises
    ------
    InvalidReply
        With the first problem found.
    """
    if len(content.array_records) != 1:
        raise InvalidReply(
            f"expected exactly one ArrayRecord, found {len(content.array_records)}"
        )
    weight = reply_weight(content, weighted_by_key, max_num_examples)
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
    if max_update_norm is not None:
        squared = sum(
            float(np.square(global_arrays[n].astype(np.float64) - v).sum())
            for n, v in arrays.items()
            if np.issubdtype(v.dtype, np.floating)
        )
        if math.sqrt(squared) > max_update_norm:
            raise InvalidReply(
                f"update norm {math.sqrt(squared):.4g} is above the bound {max_update_norm:g}"
            )
    return DecodedReply(arrays, float(weight), tuple(cast))


@dataclass(frozen=True)
class ReplyBounds:
    """Bounds a training reply must respect; None: no bound.

    Attributes
    ----------
    max_num_examples : Optional[float]
        Largest weight a reply may claim.
    max_update_norm : Optional[float]
        Largest L2 norm of a reply's pseudo-gradient ``x - y``.
    max_weight_ratio : Optional[float]
        Largest weight a reply may claim, as a multiple of the round's lower median
        weight (see :func:`weight_outliers`).
    """

    max_num_examples: float | None = None
    max_update_norm: float | None = None
    max_weight_ratio: float | None = DEFAULT_MAX_WEIGHT_RATIO

    def __post_init__(self) -> None:
        for name in ("max_num_examples", "max_update_norm"):
            _check_bound(name, getattr(self, name), 0.0)
        _check_bound("max_weight_ratio", self.max_weight_ratio, 1.0)


def _check_bound(name: str, value: float | None, low: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"FedGMA: {name} must be None or a finite number >= {low:g}, got {value!r}")


@dataclass(frozen=True)
class CheckedReply:
    """A training reply that passed :func:`check_replies`, with its decoded arrays."""

    message: Message
    arrays: dict[str, np.ndarray]
    weight: float
    cast: tuple[str, ...] = ()


class CheckedReplies(list):
    """The messages of replies that passed :func:`check_replies`, in order.

    A plain list of ``Message`` to any Flower strategy; ``FedGMA`` also reads the
    decoded arrays it carries instead of checking the replies again.
    """

    def __init__(self, checked: list[CheckedReply], global_arrays: dict[str, np.ndarray],
                 weighted_by_key: str, values_checked: bool) -> None:
        super().__init__(reply.message for reply in checked)
        self.checked = checked
        self.global_arrays = global_arrays
        self.weighted_by_key = weighted_by_key
        self.values_checked = values_checked

    def checked_against(self, global_arrays: dict[str, np.ndarray], weighted_by_key: str) -> bool:
        """True if these replies were checked against arrays like ``global_arrays``."""
        return (
            weighted_by_key == self.weighted_by_key
            and list(global_arrays) == list(self.global_arrays)
            and all(
                global_arrays[name].shape == self.global_arrays[name].shape
                and global_arrays[name].dtype == self.global_arrays[name].dtype
                for name in global_arrays
            )
        )


def check_replies(
    replies: Iterable[Message],
    global_arrays: dict[str, np.ndarray],
    weighted_by_key: str,
    bounds: ReplyBounds,
    check_values: bool = True,
) -> tuple[CheckedReplies, list[tuple[Message, str]]]:
    """Check one round's training replies against the global arrays; the one place that does.

    Each reply is decoded and checked (:func:`decode_reply`); then the replies claiming
    more than ``bounds.max_weight_ratio`` times the lower median weight of the
    well-formed ones are left out (:func:`weight_outliers`). Returns the good replies,
    in their given order, and ``(message, reason)`` for each one left out.
    """
    good: list[CheckedReply] = []
    refused: list[tuple[Message, str]] = []
    for message in replies:
        try:
            decoded = decode_reply(message.content, global_arrays, weighted_by_key,
                                   bounds.max_num_examples, bounds.max_update_norm, check_values)
        except InvalidReply as err:
            refused.append((message, str(err)))
            continue
        good.append(CheckedReply(message, *decoded))
    outliers = weight_outliers([reply.weight for reply in good], bounds.max_weight_ratio)
    refused.extend((good[i].message, reason) for i, reason in outliers.items())
    kept = [reply for i, reply in enumerate(good) if i not in outliers]
    return CheckedReplies(kept, global_arrays, weighted_by_key, check_values), refused
