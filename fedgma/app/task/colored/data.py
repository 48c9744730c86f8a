"""Client partitions and central test sets of the colored tasks, cached on disk.

Flower 1.39 starts a fresh ClientApp process for every message in deployment, so
a client's colored partition is built once and then read back from an ``.npz``
file under ``<data-dir>/cache/`` (a few MB, milliseconds to load). The cache key
is a hash of every setting the data depends on.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fedgma.loop.atomic import atomic_write

from ...config import DataSource
from ...settings import TaskSettings
from ..partition import partition_indices
from .base_data import load_base_images
from .coloring import client_flip_probability, color_binary, color_ten_class

CACHE_VERSION = 2


@dataclass(frozen=True)
class ColoredSet:
    """Colored images (uint8 ``[N, 3, 28, 28]``) with their labels.

    ``digits`` are the base data set's classes, ``colors`` the color ids of
    ``fedgma.app.task.coloring``, ``rows`` the images' indices in the base set.
    """

    images: np.ndarray
    labels: np.ndarray
    digits: np.ndarray
    colors: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @functools.cached_property
    def _dataset(self) -> Dataset[tuple[torch.Tensor, torch.Tensor]]:
        # Made once per set: the server evaluates on the same test sets every round.
        images = torch.from_numpy(self.images).float().div_(255.0)
        return cast(Dataset[tuple[torch.Tensor, torch.Tensor]], TensorDataset(images, torch.from_numpy(self.labels)))

    def loader(self, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
        """A DataLoader of float images in [0, 1] and int64 labels."""
        dataset = self._dataset
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


_FIELDS = ("images", "labels", "digits", "colors", "rows")


def _key(config: TaskSettings, **extra: Any) -> str:
    settings = {
        "version": CACHE_VERSION,
        "dataset": config.dataset,
        "task": config.name,
        "seed": config.seed,
        **extra,
    }
    if config.name == "binary":
        settings["label_noise"] = config.label_noise
    blob = json.dumps(settings, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _cached(path: Path, build: Callable[[], ColoredSet]) -> ColoredSet:
    if path.is_file():
        with np.load(path) as stored:
            return ColoredSet(**{k: stored[k] for k in _FIELDS})
    data: ColoredSet = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **{k: getattr(data, k) for k in _FIELDS}))
    return data


def _subset(n: int, wanted: int, seed: int) -> np.ndarray:
    """Sorted random subset of ``range(n)`` of size ``wanted`` (all when 0 or >= n)."""
    if wanted == 0 or wanted >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=wanted, replace=False))


def _color(config: TaskSettings, images: np.ndarray, digits: np.ndarray, rows: np.ndarray, flip: float, ood: bool,
           rng: np.random.Generator) -> ColoredSet:
    images, digits = images[rows], digits[rows]
    if config.name == "binary":
        noise = 0.0 if ood else config.label_noise
        colored, labels, colors = color_binary(images, digits, flip, rng, noise)
    else:
        colored, labels, colors = color_ten_class(images, digits, ood, rng)
    return ColoredSet(colored, labels, digits, colors, rows)


@functools.lru_cache(maxsize=2)
def _training_split(
    dataset: str, data_path: Path, download: bool, train_images: int,
    num_partitions: int, partitioning: str, alpha: float, seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """The base training set, the drawn rows and every partition's rows, once per process.

    The partitioner splits all partitions at once; a simulation worker runs many
    clients, so it reads and splits once instead of once per client (3.1 s per
    client at 1,000 clients before). The arrays are shared: only read them.
    """
    images, digits = load_base_images(dataset, data_path, True, download)
    rows = _subset(len(digits), train_images, seed)
    parts = partition_indices(digits[rows], num_partitions, partitioning, alpha, seed)
    return images, digits, rows, parts


def load_client_partition(
    config: TaskSettings, partition_id: int, num_partitions: int, source: DataSource
) -> ColoredSet:
    """Return the colored training data of one client (built once, then cached under ``source``)."""
    key = _key(
        config,
        split="train",
        train_images=config.train_images,
        partitioning=config.partitioning,
        alpha=config.dirichlet_alpha if config.partitioning == "dirichlet" else None,
        num_partitions=num_partitions,
        flip=[config.color_flip_min, config.color_flip_max],
    )
    path = source.path / "cache" / key / f"partition-{partition_id}-of-{num_partitions}.npz"

    def build() -> ColoredSet:
        images, digits, rows, parts = _training_split(
            config.dataset, source.path, source.download, config.train_images,
            num_partitions, config.partitioning, config.dirichlet_alpha, config.seed,
        )
        mine = rows[parts[partition_id]]
        flip = client_flip_probability(
            partition_id, num_partitions, config.color_flip_min, config.color_flip_max
        )
        rng = np.random.default_rng([config.seed, partition_id, num_partitions])
        return _color(config, images, digits, mine, flip, ood=False, rng=rng)

    return _cached(path, build)


def partition_sizes(config: TaskSettings, source: DataSource) -> Callable[[int, int], int]:
    """``size(partition_id, num_partitions)``: how many training examples that client holds,
    computed by the server from the same base set, partitioner, seed and settings the
    clients use (only the split; no partition is colored), once per ``num_partitions``.
    The round loop weights each reply by it instead of the client's claim."""

    @functools.lru_cache(maxsize=4)
    def sizes(num_partitions: int) -> tuple[int, ...]:
        _, _, _, parts = _training_split(
            config.dataset, source.path, source.download, config.train_images,
            num_partitions, config.partitioning, config.dirichlet_alpha, config.seed,
        )
        return tuple(len(part) for part in parts)

    def size(partition_id: int, num_partitions: int) -> int:
        return sizes(num_partitions)[partition_id]

    return size


def load_test_set(config: TaskSettings, source: DataSource, ood: bool) -> ColoredSet:
    """Return the central in-distribution (``ood=False``) or OOD test set."""
    flip = config.ood_color_flip if ood else (config.color_flip_min + config.color_flip_max) / 2
    key = _key(config, split="test", test_images=config.test_images, ood=ood, flip=flip)
    path = source.path / "cache" / key / ("test-ood.npz" if ood else "test-id.npz")

    def build() -> ColoredSet:
        images, digits = load_base_images(config.dataset, source.path, False, source.download)
        rows = _subset(len(digits), config.test_images, config.seed)
        rng = np.random.default_rng([config.seed, int(ood), 7919])
        return _color(config, images, digits, rows, flip, ood=ood, rng=rng)

    return _cached(path, build)
