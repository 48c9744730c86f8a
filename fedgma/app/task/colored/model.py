"""The CNN trained on colored 28x28 images."""

from __future__ import annotations

import torch
from torch import nn


class ColoredMnistCNN(nn.Module):
    """Two 5x5 convolutions with max-pooling, then two fully connected layers.

    47,010 parameters for two classes, 47,530 for ten.

    Parameters
    ----------
    num_classes : int
        Number of output logits.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=5),   # 16 x 24 x 24
            nn.ReLU(),
            nn.MaxPool2d(2),                   # 16 x 12 x 12
            nn.Conv2d(16, 32, kernel_size=5),  # 32 x 8 x 8
            nn.ReLU(),
            nn.MaxPool2d(2),                   # 32 x 4 x 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for a batch ``[B, 3, 28, 28]``."""
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits


def build_model(num_classes: int, seed: int | None = None) -> ColoredMnistCNN:
    """A freshly initialised model; ``seed`` makes the initial weights reproducible."""
    if seed is None:
        return ColoredMnistCNN(num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ColoredMnistCNN(num_classes)
