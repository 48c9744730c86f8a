"""The strategies a run may name: one registry entry each (its builder and its label).

FedGMA is ours; every baseline is Flower's own class, configured, not rewritten.
Adding a strategy is one entry in :data:`STRATEGIES`; the ``strategy`` setting, the
app, the grids and the report all read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from fedgma.strategy.masking import MaskObserver, Variant, resolve_tau

# The strategies are imported when one is built: the ClientApp reads the registry's names
# (the `strategy` setting's choices) and never builds one.
if TYPE_CHECKING:
    from flwr.serverapp.strategy import FedAvg

    from .settings import RunConfig, StrategySettings


def mask_tau(settings: StrategySettings) -> float:
    """FedGMA's agreement threshold for the label: ``tau``, or the variant's default for "auto"
    (fedgma-adam always uses the ``gma`` mask). The builders hand ``tau`` (None for "auto") to
    the strategy, which resolves it with the same function."""
    return resolve_tau("gma" if settings.name == "fedgma-adam" else settings.variant, settings.tau)


def _common(config: RunConfig) -> dict[str, Any]:
    nodes = config.federation.min_nodes
    return {
        "fraction_train": config.federation.fraction_train,
        "fraction_evaluate": config.federation.fraction_evaluate,
        "min_train_nodes": nodes,
        "min_evaluate_nodes": nodes,  # FedAvg sets it to 0 when fraction_evaluate is 0
        "min_available_nodes": nodes,
    }


def _adam(config: RunConfig) -> dict[str, Any]:
    s = config.strategy
    return {"eta": s.adam_eta, "eta_l": config.training.client_lr, "beta_1": s.adam_beta_1,
            "beta_2": s.adam_beta_2, "tau": s.adam_tau}


def _mask(config: RunConfig, observer: MaskObserver | None) -> dict[str, Any]:
    # The random control's masks are seeded by the run's seed.
    s = config.strategy
    return {"mask_tau": s.tau, "agreement_weighted": s.agreement_weighted, "bounds": config.federation.reply_bounds,
            "mask_control": s.mask_control, "mask_seed": config.task.seed, "mask_metrics": observer}


def _fedgma(config: RunConfig, observer: MaskObserver | None) -> FedAvg:
    from fedgma.strategy import FedGMA

    s = config.strategy
    return FedGMA(variant=cast(Variant, s.variant), server_lr=s.server_lr, **_mask(config, observer),
                  **_common(config))


def _fedgma_adam(config: RunConfig, observer: MaskObserver | None) -> FedAvg:
    # The gma mask replaces FedAdam's average; `tau` is the mask's, `adam-tau` Adam's.
    from fedgma.strategy import FedGMAAdam

    return FedGMAAdam(**_mask(config, observer), **_adam(config), **_common(config))


@dataclass(frozen=True)
class StrategyEntry:
    """How to build a strategy from the run settings, and how to name it in outputs."""

    build: Callable[[RunConfig, MaskObserver | None], FedAvg]
    label: Callable[[StrategySettings], str]


def _plain(name: str) -> Callable[[StrategySettings], str]:
    return lambda _: name


def _flower(name: str, options: Callable[[RunConfig], dict[str, Any]] = lambda _: {}
            ) -> Callable[[RunConfig, MaskObserver | None], FedAvg]:
    """A builder of Flower's own strategy class ``name``, configured, not rewritten (it has no mask
    to observe)."""

    def build(config: RunConfig, observer: MaskObserver | None) -> FedAvg:
        from flwr.serverapp import strategy

        built: FedAvg = getattr(strategy, name)(**options(config), **_common(config))
        return built

    return build


def _control(settings: StrategySettings) -> str:
    return "" if settings.mask_control == "none" else f",mask={settings.mask_control}"


STRATEGIES: dict[str, StrategyEntry] = {
    "fedgma": StrategyEntry(
        _fedgma, lambda s: f"fedgma-{s.variant}(tau={mask_tau(s):g},lr={s.server_lr:g}{_control(s)})"),
    "fedavg": StrategyEntry(_flower("FedAvg"), _plain("fedavg")),
    "fedavgm": StrategyEntry(
        _flower("FedAvgM", lambda c: {"server_learning_rate": c.strategy.server_lr,
                                      "server_momentum": c.strategy.server_momentum}),
        _plain("fedavgm")),
    "fedprox": StrategyEntry(_flower("FedProx", lambda c: {"proximal_mu": c.strategy.proximal_mu}),
                             _plain("fedprox")),
    "fedadam": StrategyEntry(_flower("FedAdam", _adam), _plain("fedadam")),
    "fedgma-adam": StrategyEntry(_fedgma_adam, lambda s: f"fedgma-gma+fedadam(tau={mask_tau(s):g}{_control(s)})"),
}


def build_strategy(config: RunConfig, mask_metrics: MaskObserver | None = None) -> FedAvg:
    """Return the configured strategy (all of them are FedAvg subclasses).

    The round loop checks every reply once, for every strategy; FedGMA takes the same
    bounds, which it applies only to replies the loop has not checked. ``mask_metrics``
    (FedGMA's only) observes each round's applied mask and adds its metrics to the round's.
    """
    return STRATEGIES[config.strategy.name].build(config, mask_metrics)


def describe(settings: StrategySettings) -> str:
    """A short label such as ``fedgma-ws(tau=0.8,lr=1)`` or ``fedavg``."""
    return STRATEGIES[settings.name].label(settings)
