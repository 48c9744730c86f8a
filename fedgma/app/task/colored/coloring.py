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

A grayscale intensity ``v`` in [0, 1] becomes ``v * foreground + (1 - v) * background``.
"""

from __future__ import annotations

import colorsys

import numpy as np

RED = np.array([1.0, 0.0, 0.0])
GREEN = np.array([0.0, 1.0, 0.0])
BLACK = np.zeros(3)


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Binary task: returns ``(colored, labels, green)``.

    ``green`` is 1 where the image is drawn in green; it equals the label except
    where the color was flipped (probability ``flip``).
    """
    labels = binary_labels(digits)
    if label_noise > 0:
        labels ^= (rng.random(len(labels)) < label_noise).astype(np.int64)
    green = labels ^ (rng.random(len(labels)) < flip).astype(np.int64)
    foreground = np.where(green[:, None] == 1, GREEN, RED)
    background = np.broadcast_to(BLACK, foreground.shape)
    return paint(images, foreground, background), labels, green


def color_ten_class(
    images: np.ndarray, digits: np.ndarray, ood: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ten-class task: returns ``(colored, labels, color_ids)``.

    ``color_ids[:, 0]`` and ``[:, 1]`` index the foreground and background colors:
    into ``TRAIN_FOREGROUND[label]`` / ``TRAIN_BACKGROUND[label]`` (0 or 1) in
    distribution, into ``OOD_COLORS`` (0..9, never equal) out of distribution.
    """
    n = len(digits)
    if ood:
        fg_id = rng.integers(0, len(OOD_COLORS), size=n)
        bg_id = (fg_id + rng.integers(1, len(OOD_COLORS), size=n)) % len(OOD_COLORS)
        foreground, background = OOD_COLORS[fg_id], OOD_COLORS[bg_id]
    else:
        fg_id = rng.integers(0, 2, size=n)
        bg_id = rng.integers(0, 2, size=n)
        foreground = TRAIN_FOREGROUND[digits, fg_id]
        background = TRAIN_BACKGROUND[digits, bg_id]
    colored = paint(images, foreground, background)
    return colored, digits.astype(np.int64), np.stack([fg_id, bg_id], axis=1)


def client_flip_probability(partition_id: int, num_partitions: int, low: float, high: float) -> float:
    """Binary task: client ``i`` of ``N`` flips colors with probability spread evenly in [low, high]."""
    if num_partitions == 1:
        return (low + high) / 2
    return low + (high - low) * partition_id / (num_partitions - 1)
