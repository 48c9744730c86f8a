"""Colored MNIST-family images (the paper's IRM-style task): 3x28x28 inputs, two or ten labels.

The binary task's colour (or, with ``shortcut = marker``, each client's private blue marker)
agrees with the label in training and is flipped in the OOD test set; its ``plain`` test set
carries no shortcut. The ten-class task paints each class its own colour. Everything here
reads only the task's own settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ...config import DataSource
from ...settings import TaskSettings, Training
from .. import TaskData
from ..training import evaluate, train
from .data import TEST_SETS, ColoredSet, load_client_partition, load_test_set, partition_sizes
from .model import build_model

EVAL_BATCH_SIZE = 512
FIRST_LAYER = "features.0.weight"  # conv 3 -> 16, [16, 3, 5, 5]
CHANNELS = ("red", "green", "blue")


class ColoredTask:
    """The :class:`fedgma.app.task.Task` of the ``binary`` and ``ten-class`` settings."""

    def __init__(self, settings: TaskSettings) -> None:
        self.settings = settings
        self.num_classes = 2 if settings.name == "binary" else 10

    def client_data(self, source: DataSource, partition_id: int, num_partitions: int) -> ColoredSet:
        return load_client_partition(self.settings, partition_id, num_partitions, source)

    def partition_sizes(self, source: DataSource) -> Callable[[int, int], int]:
        return partition_sizes(self.settings, source)

    def test_sets(self, source: DataSource) -> dict[str, ColoredSet]:
        return {name: load_test_set(self.settings, source, name=name) for name in TEST_SETS[self.settings.name]}

    def model(self, seed: int | None = None) -> nn.Module:
        return build_model(self.num_classes, seed=seed)

    def train(self, model: nn.Module, data: TaskData, training: Training, seed: int, proximal_mu: float) -> float:
        # Shuffling differs per round and client but is reproducible from the seed.
        torch.manual_seed(seed)
        loader = data.loader(training.batch_size, shuffle=True, seed=seed)
        return train(model, loader, epochs=training.local_epochs, lr=training.client_lr, proximal_mu=proximal_mu)

    def evaluate(self, model: nn.Module, data: TaskData) -> tuple[float, float]:
        return evaluate(model, data.loader(EVAL_BATCH_SIZE, shuffle=False))

    def mask_metrics(self, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The share of the first conv layer's weights the mask keeps (value >= 1 - 1e-6), per
        input channel: ``mask-kept-red``, ``-green``, ``-blue`` (the digits are drawn in red
        and green; only the marker shortcut lights blue). Empty without that layer's mask."""
        if FIRST_LAYER not in masks:
            return {}
        kept = np.asarray(masks[FIRST_LAYER]) >= 1 - 1e-6
        if kept.ndim != 4 or kept.shape[1] != len(CHANNELS):
            raise ValueError(f"mask of {FIRST_LAYER} has shape {kept.shape}, expected [out, 3, k, k]")
        return {f"mask-kept-{name}": float(kept[:, i].mean()) for i, name in enumerate(CHANNELS)}
