"""The task: linear regression on three features, with NumPy.

Feature 0 and 1 predict the target the same way on every client (weights 2 and -1).
Feature 2 is spurious: on each client it is tied to the target with a different
sign, so the clients' updates disagree on it, which is what FedGMA's mask is for.
"""

from __future__ import annotations

import numpy as np

TRUE_WEIGHTS = np.array([2.0, -1.0, 0.0], dtype=np.float32)
EXAMPLES = 200


def client_data(partition_id: int, num_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """``(features, targets)`` of one client, the same on every call."""
    rng = np.random.default_rng(1000 + partition_id)
    features = rng.normal(size=(EXAMPLES, 3)).astype(np.float32)
    targets = features @ TRUE_WEIGHTS + 0.1 * rng.normal(size=EXAMPLES).astype(np.float32)
    sign = 1.0 if partition_id % 2 == 0 else -1.0  # the spurious link flips between clients
    features[:, 2] = sign * 0.5 * targets + rng.normal(size=EXAMPLES).astype(np.float32)
    return features, targets.astype(np.float32)


def loss(weights: np.ndarray, features: np.ndarray, targets: np.ndarray) -> float:
    """Mean squared error."""
    return float(np.mean((features @ weights - targets) ** 2))


def gradient_steps(weights: np.ndarray, features: np.ndarray, targets: np.ndarray,
                   steps: int, lr: float) -> np.ndarray:
    """Plain gradient descent on the mean squared error."""
    weights = weights.copy()
    for _ in range(steps):
        weights -= lr * 2.0 * features.T @ (features @ weights - targets) / len(targets)
    return weights
