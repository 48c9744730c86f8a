"""The seam between the app and its ML task: data, partitions, test sets, model, training.

A task is one module with a class that satisfies :class:`Task`, plus an entry in
:data:`TASKS` (the ``task`` setting's values). The app calls nothing else of it, and a
task sees only its own settings (:class:`fedgma.app.settings.TaskSettings` and
:class:`fedgma.app.settings.Training`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeAlias

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import DataLoader

    from ..config import DataSource
    from ..settings import TaskSettings, Training


# (inputs, labels) batches
Batches: TypeAlias = "DataLoader[tuple[torch.Tensor, torch.Tensor]]"


class TaskData(Protocol):
    """A labelled set: how many examples it holds and a loader over them."""

    def __len__(self) -> int: ...

    def loader(self, batch_size: int, shuffle: bool, seed: int = 0) -> Batches: ...


class Task(Protocol):
    """What the ServerApp and the ClientApp need from a task."""

    def client_data(self, source: DataSource, partition_id: int, num_partitions: int) -> TaskData:
        """One client's training partition, read from ``source`` (the node's data folder)."""
        ...

    def partition_sizes(self, source: DataSource) -> Callable[[int, int], int]:
        """``size(partition_id, num_partitions)`` as the server computes it, for vouched weights."""
        ...

    def test_sets(self, source: DataSource) -> Mapping[str, TaskData]:
        """The central test sets by name; the server reports ``<name>-accuracy`` and ``<name>-loss``
        (the run folder's metric columns name ``id``, ``ood`` and ``plain``: a task's set of
        another name needs its columns added to ``fedgma.app.run_folder.METRIC_COLUMNS``)."""
        ...

    def model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model; ``seed`` makes its weights reproducible."""
        ...

    def train(self, model: nn.Module, data: TaskData, training: Training, seed: int, proximal_mu: float) -> float:
        """Train ``model`` in place on ``data``; return the mean training loss."""
        ...

    def evaluate(self, model: nn.Module, data: TaskData) -> tuple[float, float]:
        """``(mean loss, accuracy)`` of ``model`` on ``data``."""
        ...

    def mask_metrics(self, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Round metrics read off a strategy's mask, given by the model's array names (e.g. the
        colored task's ``mask-kept-red``/``-green``/``-blue``); ``{}`` when there is nothing to
        report. Each key must be one of the run folder's metric columns."""
        ...


def _colored(settings: TaskSettings) -> Task:
    from .colored import ColoredTask  # torch and torchvision load only when a task is built

    return ColoredTask(settings)


# The ``task`` setting's values. binary and ten-class are the two label sets of one module.
TASKS: dict[str, Callable[[TaskSettings], Task]] = {"binary": _colored, "ten-class": _colored}


def make_task(settings: TaskSettings) -> Task:
    """The task named by ``settings.name``, configured by its own settings."""
    return TASKS[settings.name](settings)
