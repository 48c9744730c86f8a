"""The two colored-MNIST tasks of the FedGMA paper.

Binary (after Arjovsky et al. 2019): label ``1`` for digit >= 5, else ``0``.
The image is drawn in red for label 0 and green for label 1, and that color is
flipped with probability ``flip``: a client-specific value in training, its
mean for the in-distribution test set, and ``ood_color_flip`` (0.9, colors
reversed) for the out-of-distribution (OOD) test set.

Ten-class (after Arpit et al. 2019): in training (and the in-distribution test
set) each class has two foreground and two background colors of its own; OOD
images draw foreground and background colors at random from ten further colors
unrelated to the training ones.

Shortcut variants of the binary task (``shortcut``, ``shortcut-reversed-share``): a
*reversed* client draws label 0 green and label 1 red; with ``marker`` the digit's colour is
random and each client's own 3x3 blue marker (:func:`marker_positions`) carries the shortcut.
The ``plain`` test set carries none: colour-neutral digits (``NEUTRAL``) or no marker.
Ten-class with ``color-class-correlation`` rho < 1: an image takes another class's colours
with probability 1 - rho.

A grayscale intensity ``v`` in [0, 1] becomes ``v * foreground + (1 - v) * background``.
"""

from __future__ import annotations

import colorsys
import math
from fractions import Fraction

import numpy as np

RED = np.array([1.0, 0.0, 0.0])
GREEN = np.array([0.0, 1.0, 0.0])
BLACK = np.zeros(3)
NEUTRAL = np.array([0.5, 0.5, 0.0])  # the plain test set: half red, half green
MARKER_GRID = 9  # marker cells (3i, 3j), i, j in 0..8: 81 positions
MARKER_SIZE = 3


def _hsv_palette(hues: np.ndarray, saturation: float, value: float) -> np.ndarray:
    return np.array([colorsys.hsv_to_rgb(h, saturation, value) for h in hues])


# 20 bright foreground and 20 dark background colors: class c owns entries 2c and 2c+1.
TRAIN_FOREGROUND = _hsv_palette(np.arange(20) / 20, 1.0, 1.0).reshape(10, 2, 3)
TRAIN_BACKGROUND = _hsv_palette((np.arange(20) + 0.5) / 20, 0.8, 0.35).reshape(10, 2, 3)
# Pastel colors, not among the training ones.
OOD_COLORS = _hsv_palette((np.arange(10) + 0.25) / 10, 0.35, 0.75)


def paint(images: np.ndarray, foreground: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Color grayscale uint8 ``[N, 28, 28]`` images; returns uint8 ``[N, 3, 28, 28]``."""
    v = images.astype(np.float32)[:, None] / 255.0
    fg = foreground.astype(np.float32)[:, :, None, None]
    bg = background.astype(np.float32)[:, :, None, None]
    return np.rint(255.0 * (v * fg + (1.0 - v) * bg)).astype(np.uint8)


def binary_labels(digits: np.ndarray) -> np.ndarray:
    """Label 1 for digit >= 5, else 0."""
    return (digits >= 5).astype(np.int64)


def color_binary(
    images: np.ndarray,
    digits: np.ndarray,
    flip: float,
    rng: np.random.Generator,
    label_noise: float = 0.0,
    reverse: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary task: returns ``(colored, labels, green)``.

    ``green`` is 1 where the image is drawn in green; it equals the label except
    where the color was flipped (probability ``flip``), and the other way round where
    the image's relation is reversed (probability ``reverse``: 0 or 1 for a client, the
    reversed share for the ID test set).
    """
    labels = binary_labels(digits)
    if label_noise > 0:
        labels ^= (rng.random(len(labels)) < label_noise).astype(np.int64)
    green: np.ndarray = labels ^ (rng.random(len(labels)) < flip).astype(np.int64)
    if reverse >= 1:
        green = 1 - green
    elif reverse > 0:  # drawn after the flips: the default settings draw exactly as before
        green ^= (rng.random(len(labels)) < reverse).astype(np.int64)
    foreground = np.where(green[:, None] == 1, GREEN, RED)
    background = np.broadcast_to(BLACK, foreground.shape)
    return paint(images, foreground, background), labels, green


def color_plain(images: np.ndarray, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary task's ``plain`` test set with the colour shortcut: every digit in ``NEUTRAL``
    (R = G = v / 2, B = 0); returns ``(colored, labels, green)`` with ``green`` all -1."""
    labels = binary_labels(digits)
    foreground = np.broadcast_to(NEUTRAL, (len(labels), 3))
    return paint(images, foreground, np.zeros_like(foreground)), labels, np.full(len(labels), -1, dtype=np.int64)


def reversed_client(client: int, share: float) -> bool:
    """Whether client ``client`` (0-based) has its shortcut-label relation reversed: iff
    ``floor((c + 1) s) - floor(c s) == 1``, so the first N clients hold ``floor(N s)``
    reversed ones spread evenly. Exact in the decimal written (``0.3`` is 3/10)."""
    s = Fraction(repr(float(share)))
    return math.floor((client + 1) * s) - math.floor(client * s) == 1


def marker_positions(seed: int) -> np.ndarray:
    """``[81, 2]``: the top-left (row, column) of client c's marker, the cells (3i, 3j)
    assigned to clients by a permutation seeded by the task's seed."""
    cells = np.random.default_rng([seed, 4409]).permutation(MARKER_GRID * MARKER_GRID)
    return np.stack([cells // MARKER_GRID, cells % MARKER_GRID], axis=1).astype(np.int64) * MARKER_SIZE


def color_marker(
    images: np.ndarray,
    digits: np.ndarray,
    flip: float,
    rng: np.random.Generator,
    clients: np.ndarray | None,
    positions: np.ndarray,
    share: float,
    label_noise: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary task with the marker shortcut: returns ``(colored, labels, colors)``.

    The digit is red or green at random (``colors[:, 0]``, 1 = green). Each image belongs
    to a client drawn uniformly from ``clients`` (one for a training partition; None: no
    marker, the ``plain`` test set); that client's marked label is 1, or 0 where it is
    reversed (:func:`reversed_client` with ``share``). Its marker (a 3x3 patch of 255 in
    the blue channel at ``positions[client]``) is drawn on images of the marked label with
    probability ``1 - flip`` and on the others with probability ``flip``. ``colors[:, 1]``
    is the client whose marker was drawn, -1 where none was.
    """
    labels = binary_labels(digits)
    if label_noise > 0:
        labels ^= (rng.random(len(labels)) < label_noise).astype(np.int64)
    n = len(labels)
    green = rng.integers(0, 2, size=n)
    foreground = np.where(green[:, None] == 1, GREEN, RED)
    colored = paint(images, foreground, np.zeros_like(foreground))
    marker = np.full(n, -1, dtype=np.int64)
    if clients is not None:
        owner = clients[rng.integers(0, len(clients), size=n)]
        marked = np.array([0 if reversed_client(int(c), share) else 1 for c in range(len(positions))])[owner]
        present = (labels == marked) ^ (rng.random(n) < flip)
        marker[present] = owner[present]
        for i in np.flatnonzero(present):
            row, col = positions[owner[i]]
            colored[i, 2, row:row + MARKER_SIZE, col:col + MARKER_SIZE] = 255
    return colored, labels, np.stack([green, marker], axis=1)


def color_ten_class(
    images: np.ndarray, digits: np.ndarray, ood: bool, rng: np.random.Generator, correlation: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ten-class task: returns ``(colored, labels, color_ids)``.

    ``color_ids[:, 0]`` and ``[:, 1]`` index the foreground and background colors:
    into ``TRAIN_FOREGROUND[label]`` / ``TRAIN_BACKGROUND[label]`` (0 or 1) in
    distribution, into ``OOD_COLORS`` (0..9, never equal) out of distribution.
    With ``correlation`` < 1 an in-distribution image takes a uniformly drawn other
    class's colours with probability ``1 - correlation``; ``color_ids[:, 2]`` is then
    the class whose colours it took (the column is absent at 1, as before).
    """
    n = len(digits)
    if ood:
        fg_id = rng.integers(0, len(OOD_COLORS), size=n)
        bg_id = (fg_id + rng.integers(1, len(OOD_COLORS), size=n)) % len(OOD_COLORS)
        foreground, background = OOD_COLORS[fg_id], OOD_COLORS[bg_id]
    else:
        fg_id = rng.integers(0, 2, size=n)
        bg_id = rng.integers(0, 2, size=n)
        painted = digits
        if correlation < 1:  # drawn after the ids: the default settings draw exactly as before
            other = rng.random(n) >= correlation
            shift = rng.integers(1, len(TRAIN_FOREGROUND), size=n)
            painted = np.where(other, (digits + shift) % len(TRAIN_FOREGROUND), digits)
        foreground = TRAIN_FOREGROUND[painted, fg_id]
        background = TRAIN_BACKGROUND[painted, bg_id]
        if correlation < 1:
            colored = paint(images, foreground, background)
            return colored, digits.astype(np.int64), np.stack([fg_id, bg_id, painted], axis=1).astype(np.int64)
    colored = paint(images, foreground, background)
    return colored, digits.astype(np.int64), np.stack([fg_id, bg_id], axis=1)


def client_flip_probability(partition_id: int, num_partitions: int, low: float, high: float) -> float:
    """Binary task: client ``i`` of ``N`` flips colors with probability spread evenly in [low, high]."""
    if num_partitions == 1:
        return (low + high) / 2
    return low + (high - low) * partition_id / (num_partitions - 1)
