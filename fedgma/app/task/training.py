"""Local SGD training (optionally with FedProx's proximal term) and evaluation."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader


def resolve_device(name: str) -> torch.device:
    """The torch device for a node's ``device`` setting: ``auto`` is CUDA when available, else CPU.

    Raises
    ------
    ValueError
        If a CUDA device is asked for and there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"node config: 'device' is {name!r}, but this node has "
                         f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA device(s)")
    return device


def train(
    model: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
    epochs: int,
    lr: float,
    proximal_mu: float = 0.0,
) -> float:
    """Train ``model`` in place with plain SGD on the device it is on; return the mean training loss.

    With ``proximal_mu > 0`` the loss gains FedProx's ``mu / 2 * ||w - w_global||^2``,
    ``w_global`` being the weights the model had on entry.
    """
    model.train()
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    criterion = nn.CrossEntropyLoss()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    total_loss, total_examples = 0.0, 0
    for _ in range(epochs):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)  # no copy on the CPU
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            total_loss += loss.item() * len(labels)
            total_examples += len(labels)
            if anchor is not None:
                proximal = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
                loss = loss + proximal_mu / 2 * proximal
            loss.backward()
            optimizer.step()
    if total_examples == 0:
        raise ValueError("local training got no examples")
    return total_loss / total_examples


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` on ``loader``, on its device."""
    model.eval()
    device = next(model.parameters()).device
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss += criterion(logits, labels).item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += len(labels)
    if seen == 0:
        raise ValueError("evaluation got no examples")
    return loss / seen, correct / seen


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
