"""Client partitions and central test sets of the colored tasks, cached on disk.

Flower 1.39 starts a fresh ClientApp process for every message in deployment, so
a client's colored partition is built once and then read back from an ``.npz``
file under ``<data-dir>/cache/`` (a few MB, milliseconds to load). The cache key
is a hash of every setting the data depends on; a setting added later enters it only
where it differs from its default, so the caches of earlier settings stay valid.
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
from ...settings import MARKER_CELLS, ConfigError, TaskSettings
from ..partition import partition_indices
from .base_data import load_base_images
from .coloring import (
    client_flip_probability,
    color_binary,
    color_marker,
    color_plain,
    color_ten_class,
    marker_positions,
    reversed_client,
)

TEST_SETS = {"binary": ("id", "ood", "plain"), "ten-class": ("id", "ood")}

CACHE_VERSION = 2


@dataclass(frozen=True)
class ColoredSet:
    """Colored images (uint8 ``[N, 3, 28, 28]``) with their labels.

    ``digits`` are the base data set's classes, ``colors`` the color ids of
    ``fedgma.app.task.colored.coloring`` (binary: 1 where green, -1 in the colour-neutral
    ``plain`` set; marker shortcut: ``[:, 0]`` green, ``[:, 1]`` whose marker or -1),
    ``rows`` the images' indices in the base set.
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
        if config.shortcut != "color":
            settings["shortcut"] = config.shortcut
            settings["marker_clients"] = config.marker_clients
        if config.shortcut_reversed_share != 0:
            settings["shortcut_reversed_share"] = config.shortcut_reversed_share
    elif config.color_class_correlation != 1:
        settings["color_class_correlation"] = config.color_class_correlation
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


def _color(config: TaskSettings, images: np.ndarray, digits: np.ndarray, rows: np.ndarray, flip: float,
           rng: np.random.Generator, which: str = "train", client: int = 0) -> ColoredSet:
    """Color ``rows``: one client's partition (``which = "train"``) or a test set (id, ood, plain)."""
    images, digits = images[rows], digits[rows]
    if config.name != "binary":
        colored, labels, colors = color_ten_class(images, digits, which == "ood", rng,
                                                  1.0 if which == "ood" else config.color_class_correlation)
        return ColoredSet(colored, labels, digits, colors, rows)
    noise = 0.0 if which in ("ood", "plain") else config.label_noise
    share = config.shortcut_reversed_share
    # The probability that an image's relation is reversed: its client's, or a random
    # client's in the ID set; the OOD set reverses the non-reversed clients' relation by its flip.
    reverse = {"train": float(reversed_client(client, share)), "id": share}.get(which, 0.0)
    if config.shortcut == "color":
        if which == "plain":
            colored, labels, colors = color_plain(images, digits)
        else:
            colored, labels, colors = color_binary(images, digits, flip, rng, noise, reverse)
    else:
        clients = (None if which == "plain" else np.array([client]) if which == "train"
                   else np.arange(config.marker_clients or MARKER_CELLS))
        colored, labels, colors = color_marker(images, digits, flip, rng, clients, marker_positions(config.seed),
                                               share, noise)
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
    if config.name == "binary" and config.shortcut == "marker" and num_partitions > MARKER_CELLS:
        raise ConfigError(f"shortcut = marker gives each client one of {MARKER_CELLS} marker positions, so at "
                          f"most {MARKER_CELLS} clients; this federation has {num_partitions}")
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
        return _color(config, images, digits, mine, flip, rng, "train", partition_id)

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


def load_test_set(config: TaskSettings, source: DataSource, ood: bool = False, name: str | None = None) -> ColoredSet:
    """Return a central test set by ``name`` (:data:`TEST_SETS` of the task): ``id``, ``ood``
    or the binary task's ``plain`` (no shortcut); without a name, ``ood`` picks id or ood."""
    name = name or ("ood" if ood else "id")
    if name not in TEST_SETS[config.name]:
        raise ValueError(f"the {config.name} task has no test set {name!r}")
    flip = config.ood_color_flip if name == "ood" else (config.color_flip_min + config.color_flip_max) / 2
    # id and ood keep the key they always had; plain is keyed apart.
    extra: dict[str, Any] = {"ood": name == "ood", "flip": flip} if name != "plain" else {"set": name}
    key = _key(config, split="test", test_images=config.test_images, **extra)
    path = source.path / "cache" / key / f"test-{name}.npz"

    def build() -> ColoredSet:
        images, digits = load_base_images(config.dataset, source.path, False, source.download)
        rows = _subset(len(digits), config.test_images, config.seed)
        rng = np.random.default_rng([config.seed, TEST_SETS["binary"].index(name), 7919])
        return _color(config, images, digits, rows, flip, rng, name)

    return _cached(path, build)
