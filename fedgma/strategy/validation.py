"""Checks a training reply must pass before it may touch the global model."""

from __future__ import annotations

import functools
import io
import math
import statistics

import numpy as np
from flwr.app import Array, RecordDict
from flwr.common.constant import SType


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
    if np.isfinite(np.add.reduce(value, axis=None)):
        return True  # NaN and Inf propagate into the sum
    return bool(np.isfinite(value).all())  # an overflowing sum of finite values


def reply_weight(
    content: RecordDict, weighted_by_key: str, max_num_examples: float | None = None
) -> float:
    """The reply's aggregation weight: its one MetricRecord's ``weighted_by_key`` entry.

    It must be a positive integer (an ``int``, or a float with an integral value), at
    most ``max_num_examples`` when given.

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
    if not math.isfinite(weight) or weight <= 0 or (isinstance(weight, float) and not weight.is_integer()):
        raise InvalidReply(
            f"metric {weighted_by_key!r} must be a positive integer, got {weight!r}"
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


def decode_reply(
    content: RecordDict,
    global_arrays: dict[str, np.ndarray],
    weighted_by_key: str,
    max_num_examples: float | None = None,
    max_update_norm: float | None = None,
    check_values: bool = True,
) -> tuple[dict[str, np.ndarray], float]:
    """Decode a training reply into ``(arrays, weight)`` after checking it.

    A good reply holds exactly one ArrayRecord whose arrays have the global
    model's names, shapes and dtypes and only finite values, and exactly one
    MetricRecord whose ``weighted_by_key`` entry is a positive integer (an
    ``int``, or a float with an integral value), at most ``max_num_examples``
    when given. With ``max_update_norm``, the L2 norm of the pseudo-gradient
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
            raise InvalidReply(
                f"array {name!r} has dtype {value.dtype}, expected {reference.dtype}"
            )
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
    return arrays, float(weight)
