"""Local training: SGD learns, FedProx's proximal term holds the weights near the start."""

import copy

import torch
from torch.utils.data import DataLoader, TensorDataset

from fedgma.app.task.colored.model import build_model
from fedgma.app.task.training import count_parameters, evaluate, train


def separable_loader(seed=0, n=256):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.rand(n, 3, 28, 28, generator=generator) * 0.2
    images[:, 0] += labels[:, None, None] * 0.8  # label 1 lights the red channel
    return DataLoader(TensorDataset(images, labels), batch_size=32, shuffle=False)


def distance(model, reference):
    return sum((p - q).pow(2).sum() for p, q in zip(model.parameters(), reference.parameters(), strict=True)).sqrt()


def test_sgd_learns_a_separable_task():
    loader = separable_loader()
    model = build_model(2, seed=0)
    train(model, loader, epochs=5, lr=0.1)
    _, accuracy = evaluate(model, loader)
    assert accuracy > 0.95


def test_proximal_term_keeps_weights_near_the_global_model():
    loader = separable_loader()
    start = build_model(2, seed=0)
    free, prox = copy.deepcopy(start), copy.deepcopy(start)
    train(free, loader, epochs=3, lr=0.1, proximal_mu=0.0)
    train(prox, loader, epochs=3, lr=0.1, proximal_mu=10.0)
    assert distance(prox, start) < 0.5 * distance(free, start)


def test_model_size_and_seeded_initialisation():
    assert count_parameters(build_model(2)) == 47_010
    assert count_parameters(build_model(10)) == 47_530
    a, b = build_model(2, seed=3), build_model(2, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_devices_auto_is_cuda_only_where_there_is_one_and_cpu_training_is_unchanged():
    import pytest

    from fedgma.app.task.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    # Moving a CPU model "to the CPU" changes nothing: the same weights, bit for bit.
    loader = separable_loader()
    plain, moved = build_model(2, seed=1), build_model(2, seed=1).to(resolve_device("cpu"))
    torch.manual_seed(0)
    train(plain, loader, epochs=1, lr=0.1)
    torch.manual_seed(0)
    train(moved, loader, epochs=1, lr=0.1)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), moved.parameters(), strict=True))
