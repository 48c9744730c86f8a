"""FedGMA on Flower: gradient-masked federated averaging with PyTorch clients."""

__version__ = "0.1.0"
