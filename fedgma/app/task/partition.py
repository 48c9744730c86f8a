"""Split a labelled set across clients with flwr-datasets' partitioners.

- ``iid``: shuffle, then :class:`IidPartitioner` (equal contiguous shards).
- ``non-iid``: the paper's split (McMahan et al. 2017): every client holds about
  equally many images of exactly two classes, :class:`PathologicalPartitioner`
  with deterministic assignment (client ``i`` gets classes ``i`` and ``i + 1``
  modulo the number of classes; a class is split evenly among the clients that
  hold it, so all clients are equally large when every class is used equally
  often, e.g. 10 or 20 clients on 10 classes).
- ``dirichlet``: :class:`DirichletPartitioner` with concentration ``alpha``.

The partitioners work on a Hugging Face ``Dataset``; only the labels and row
indices are handed to them, never the images.
"""

from __future__ import annotations

import numpy as np


def partition_indices(
    labels: np.ndarray, num_partitions: int, partitioning: str, alpha: float, seed: int
) -> list[np.ndarray]:
    """Return, for every partition, the sorted row indices into ``labels``."""
    # Imported here: loading flwr-datasets (and Hugging Face datasets) costs about a
    # second, paid only when a partition is not cached on disk yet.
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    num_classes = len(np.unique(labels))
    if partitioning == "non-iid" and num_classes < 2:
        raise ValueError("the non-iid split needs at least two classes")
    table = datasets.Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
    if partitioning == "iid":
        table = table.shuffle(seed=seed)
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif partitioning == "non-iid":
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=2,
            class_assignment_mode="deterministic",
            seed=seed,
        )
    elif partitioning == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=alpha, seed=seed
        )
    else:
        raise ValueError(f"unknown partitioning {partitioning!r}")
    partitioner.dataset = table
    return [
        np.sort(np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64))
        for i in range(num_partitions)
    ]
