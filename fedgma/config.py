"""The run settings of ``[tool.flwr.app.config]``, parsed and validated once.

Both the ServerApp and the ClientApp call :func:`parse_run_config` on
``context.run_config``; every other module receives a :class:`RunConfig`.
"""

from __future__ import annotations

import tomllib

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

STRATEGIES = ("fedgma", "fedavg", "fedavgm", "fedprox", "fedadam", "fedgma-adam")
VARIANTS = ("ws", "gma")
TASKS = ("binary", "ten-class")
DATASETS = ("fashion-mnist", "mnist")
PARTITIONINGS = ("iid", "non-iid", "dirichlet")


class ConfigError(ValueError):
    """A run setting with a bad value; the message names the key."""


@dataclass(frozen=True)
class RunConfig:
    """Validated run settings (keys of ``[tool.flwr.app.config]``, hyphens as underscores)."""

    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    round_timeout: float
    min_train_replies: int
    max_num_examples: int
    max_update_norm: float  # 0: no bound
    strategy: str
    variant: str
    tau: float | None  # None: the variant's default
    server_lr: float
    agreement_weighted: bool
    server_momentum: float
    proximal_mu: float
    adam_eta: float
    adam_beta_1: float
    adam_beta_2: float
    adam_tau: float
    task: str
    dataset: str
    data_dir: str
    download: bool
    partitioning: str
    dirichlet_alpha: float
    train_images: int
    test_images: int
    color_flip_min: float
    color_flip_max: float
    ood_color_flip: float
    label_noise: float
    seed: int
    local_epochs: int
    client_lr: float
    batch_size: int
    output_dir: str
    run_name: str
    resume: str  # a run directory (absolute, or relative to output-dir) to continue; "" = new run

    @property
    def num_classes(self) -> int:
        """Number of labels of the task."""
        return 2 if self.task == "binary" else 10

    @property
    def data_path(self) -> Path:
        """Where data sets and cached partitions live."""
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        env = os.environ.get("FEDGMA_DATA_DIR")
        if env:
            return Path(env).expanduser()
        return Path.home() / ".cache" / "fedgma"


def _number(
    raw: dict[str, Any], key: str, kind: type, low=None, high=None, low_open=False, where="run config"
):
    if key not in raw:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key!r} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ConfigError(f"{where}: {key!r} must be a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{where}: {key!r} must be finite, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ConfigError(f"{where}: {key!r} must be {bound}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{where}: {key!r} must be <= {high}, got {value!r}")
    return value


def _choice(raw: dict[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = raw.get(key)
    if value not in choices:
        raise ConfigError(f"run config: {key!r} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _flag(raw: dict[str, Any], key: str) -> bool:
    value = raw.get(key)
    if not isinstance(value, bool):
        raise ConfigError(f"run config: {key!r} must be true or false, got {value!r}")
    return value


def _text(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"run config: {key!r} must be a string, got {value!r}")
    return value


def _tau(raw: dict[str, Any]) -> float | None:
    if raw.get("tau") == "auto":
        return None
    try:
        return _number(raw, "tau", float, 0.0, 1.0)
    except ConfigError as err:
        raise ConfigError(f"{err} (or \"auto\")") from None


def parse_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate ``context.run_config`` and return it as a :class:`RunConfig`.

    Raises
    ------
    ConfigError
        Naming the first key that is missing, unknown or out of range.
    """
    known = {f.name.replace("_", "-") for f in fields(RunConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"run config: unknown key(s) {unknown}")
    config = RunConfig(
        num_server_rounds=_number(raw, "num-server-rounds", int, 1),
        fraction_train=_number(raw, "fraction-train", float, 0.0, 1.0, low_open=True),
        fraction_evaluate=_number(raw, "fraction-evaluate", float, 0.0, 1.0),
        min_nodes=_number(raw, "min-nodes", int, 1),
        round_timeout=_number(raw, "round-timeout", float, 0.0, low_open=True),
        min_train_replies=_number(raw, "min-train-replies", int, 0),
        max_num_examples=_number(raw, "max-num-examples", int, 1),
        max_update_norm=_number(raw, "max-update-norm", float, 0.0),
        strategy=_choice(raw, "strategy", STRATEGIES),
        variant=_choice(raw, "variant", VARIANTS),
        tau=_tau(raw),
        server_lr=_number(raw, "server-lr", float, 0.0),
        agreement_weighted=_flag(raw, "agreement-weighted"),
        server_momentum=_number(raw, "server-momentum", float, 0.0, 1.0),
        proximal_mu=_number(raw, "proximal-mu", float, 0.0),
        adam_eta=_number(raw, "adam-eta", float, 0.0, low_open=True),
        adam_beta_1=_number(raw, "adam-beta-1", float, 0.0, 1.0),
        adam_beta_2=_number(raw, "adam-beta-2", float, 0.0, 1.0),
        adam_tau=_number(raw, "adam-tau", float, 0.0, low_open=True),
        task=_choice(raw, "task", TASKS),
        dataset=_choice(raw, "dataset", DATASETS),
        data_dir=_text(raw, "data-dir"),
        download=_flag(raw, "download"),
        partitioning=_choice(raw, "partitioning", PARTITIONINGS),
        dirichlet_alpha=_number(raw, "dirichlet-alpha", float, 0.0, low_open=True),
        train_images=_number(raw, "train-images", int, 0),
        test_images=_number(raw, "test-images", int, 0),
        color_flip_min=_number(raw, "color-flip-min", float, 0.0, 1.0),
        color_flip_max=_number(raw, "color-flip-max", float, 0.0, 1.0),
        ood_color_flip=_number(raw, "ood-color-flip", float, 0.0, 1.0),
        label_noise=_number(raw, "label-noise", float, 0.0, 1.0),
        seed=_number(raw, "seed", int, 0),
        local_epochs=_number(raw, "local-epochs", int, 1),
        client_lr=_number(raw, "client-lr", float, 0.0, low_open=True),
        batch_size=_number(raw, "batch-size", int, 1),
        output_dir=_text(raw, "output-dir"),
        run_name=_text(raw, "run-name"),
        resume=_text(raw, "resume"),
    )
    if config.color_flip_min > config.color_flip_max:
        raise ConfigError(
            "run config: 'color-flip-min' must be <= 'color-flip-max', got "
            f"{config.color_flip_min} > {config.color_flip_max}"
        )
    if "/" in config.run_name or config.run_name in (".", ".."):
        raise ConfigError(f"run config: 'run-name' must be a plain name, got {config.run_name!r}")
    return config


@dataclass(frozen=True)
class NodeIdentity:
    """A client's place in the federation, from ``--node-config``."""

    partition_id: int
    num_partitions: int


def parse_node_config(raw: dict[str, Any]) -> NodeIdentity:
    """Validate ``context.node_config`` (``partition-id``, ``num-partitions``)."""
    num_partitions = _number(raw, "num-partitions", int, 1, where="node config")
    partition_id = _number(raw, "partition-id", int, 0, num_partitions - 1, where="node config")
    return NodeIdentity(partition_id=partition_id, num_partitions=num_partitions)


def app_defaults() -> dict[str, Any]:
    """The default run settings: ``[tool.flwr.app.config]`` of the app's ``pyproject.toml``."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    return dict(tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"])
