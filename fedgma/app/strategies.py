"""Build the strategy named by the run setting ``strategy``.

FedGMA is ours; every baseline is Flower's own class, configured, not rewritten.
"""

from __future__ import annotations

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx

from fedgma.strategy import FedGMA, FedGMAAdam, ReplyBounds

from .config import RunConfig


def build_strategy(config: RunConfig) -> FedAvg:
    """Return the configured strategy (all of them are FedAvg subclasses).

    The round loop checks every reply once, for every strategy; FedGMA takes the same
    bounds, which it applies only to replies the loop has not checked.
    """
    common = {
        "fraction_train": config.fraction_train,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": config.min_nodes,
        "min_evaluate_nodes": config.min_nodes,  # FedAvg sets it to 0 when fraction_evaluate is 0
        "min_available_nodes": config.min_nodes,
    }
    if config.strategy == "fedgma":
        return FedGMA(
            variant=config.variant,
            mask_tau=config.mask_tau,
            server_lr=config.server_lr,
            agreement_weighted=config.agreement_weighted,
            bounds=ReplyBounds(**config.reply_bounds),
            **common,
        )
    if config.strategy == "fedavg":
        return FedAvg(**common)
    if config.strategy == "fedavgm":
        return FedAvgM(
            server_learning_rate=config.server_lr, server_momentum=config.server_momentum, **common
        )
    if config.strategy == "fedprox":
        return FedProx(proximal_mu=config.proximal_mu, **common)
    adam = {
        "eta": config.adam_eta,
        "eta_l": config.client_lr,
        "beta_1": config.adam_beta_1,
        "beta_2": config.adam_beta_2,
        "tau": config.adam_tau,
    }
    if config.strategy == "fedadam":
        return FedAdam(**adam, **common)
    if config.strategy == "fedgma-adam":
        # The gma mask replaces FedAdam's average; `tau` is the mask's, `adam-tau` Adam's.
        return FedGMAAdam(
            mask_tau=config.mask_tau, agreement_weighted=config.agreement_weighted,
            bounds=ReplyBounds(**config.reply_bounds), **adam, **common,
        )
    raise ValueError(f"unknown strategy {config.strategy!r}")


def describe(config: RunConfig) -> str:
    """A short label such as ``fedgma-ws(tau=0.8,lr=1)`` or ``fedavg``."""
    if config.strategy == "fedgma-adam":
        return f"fedgma-gma+fedadam(tau={config.mask_tau:g})"
    if config.strategy != "fedgma":
        return config.strategy
    return f"fedgma-{config.variant}(tau={config.mask_tau:g},lr={config.server_lr:g})"
