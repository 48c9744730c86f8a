"""The run settings of ``[tool.flwr.app.config]``, parsed and validated once, and what
each process takes from its own host: the node's data, the server's output root.

Both the ServerApp and the ClientApp call :func:`parse_run_config` on
``context.run_config``; every other module receives a :class:`RunConfig`.

Whoever submits a run chooses its settings, so nothing in them may reach outside
the places the hosts' operators chose: where data lives and whether it may be
downloaded come from the node (:func:`data_source`, the server's from its
environment), and output paths are names under the server's output root
(:func:`output_root`, :func:`run_path`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from fedgma.strategy.masking import DEFAULT_TAU

STRATEGIES = ("fedgma", "fedavg", "fedavgm", "fedprox", "fedadam", "fedgma-adam")
VARIANTS = ("ws", "gma")
TASKS = ("binary", "ten-class")
DATASETS = ("fashion-mnist", "mnist")
PARTITIONINGS = ("iid", "non-iid", "dirichlet")

# Set by the operator of each host, never by a run.
OUTPUT_ROOT_ENV = "FEDGMA_OUTPUT_ROOT"  # server: every run's outputs go below it
DATA_DIR_ENV = "FEDGMA_DATA_DIR"  # server and nodes: data sets and cached partitions
DOWNLOAD_ENV = "FEDGMA_DOWNLOAD"  # server and nodes: may torchvision download a missing data set
DEVICE_ENV = "FEDGMA_DEVICE"  # nodes: where the ClientApp trains (auto | cpu | cuda | cuda:N)
BINDINGS_ENV = "FEDGMA_PARTITION_BINDINGS"  # server: JSON file {"<node id>": <partition id>}


# Settings that do not change the result of the rounds already made (a run may resume with others).
NOT_RESULT_SETTINGS = frozenset(
    {"output_dir", "run_name", "round_timeout", "reply_poll_interval", "num_server_rounds", "resume",
     "max_failed_rounds", "skip_timed_out_rounds"}
)


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
    reply_poll_interval: float  # 0: Flower's own Grid.send_and_receive
    min_train_replies: int
    max_failed_rounds: int  # 0: never end the run for rounds without a model update
    max_num_examples: int
    max_weight_ratio: float  # 0: no bound
    max_update_norm: float  # 0: no bound
    max_norm_ratio: float  # 0: no bound
    skip_timed_out_rounds: int  # 0: a node that timed out is sampled as usual
    num_partitions: int  # 0: each reply's own declaration bounds its partition-id
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
    output_dir: str  # relative to the server's output root
    run_name: str
    resume: str  # a run directory (relative to output-dir) to continue; "" = new run

    @property
    def num_classes(self) -> int:
        """Number of labels of the task."""
        return 2 if self.task == "binary" else 10

    # Defaults resolved here, once: "auto" and 0-means-off become what the library takes.
    @property
    def mask_tau(self) -> float:
        """FedGMA's agreement threshold: ``tau``, or the variant's default for "auto"
        (fedgma-adam always uses the ``gma`` mask)."""
        if self.tau is not None:
            return self.tau
        return DEFAULT_TAU["gma" if self.strategy == "fedgma-adam" else self.variant]

    @property
    def reply_bounds(self) -> dict[str, float | None]:
        """The bounds every training reply must respect, as the keyword arguments that
        ``RoundLoop``, ``FedGMA`` and ``FedGMAAdam`` all take; a setting of 0 is no bound."""
        return {
            "max_num_examples": self.max_num_examples,
            "max_update_norm": self.max_update_norm or None,
            "max_weight_ratio": self.max_weight_ratio or None,
            "max_norm_ratio": self.max_norm_ratio or None,
        }

    @property
    def poll_interval(self) -> float | None:
        """Seconds between the round loop's pulls for replies; None (a setting of 0) leaves
        the wait to the grid's own ``send_and_receive`` (Flower 1.39 deployed: every 3 s)."""
        return self.reply_poll_interval or None

    @property
    def failed_rounds_bound(self) -> int | None:
        """``max-failed-rounds`` as the round loop takes it: None when 0 (never fail for it)."""
        return self.max_failed_rounds or None

    @property
    def partitions_bound(self) -> int | None:
        """``num-partitions``, None when 0 (each reply's own declaration bounds it)."""
        return self.num_partitions or None

    def result_settings(self) -> dict[str, Any]:
        """The settings whose change would change the run's result, hyphenated (a checkpoint
        keeps them, and a resumed run must have the same)."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items() if k not in NOT_RESULT_SETTINGS}


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


def _relative_path(raw: dict[str, Any], key: str) -> str:
    """A path that stays below the folder it is relative to: no absolute path, ``~`` or ``..``."""
    value = _text(raw, key)
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~") or ".." in path.parts or "\\" in value:
        raise ConfigError(
            f"run config: {key!r} must be a relative path below the server's output root "
            f"(no absolute path, '~' or '..'), got {value!r}"
        )
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
        reply_poll_interval=_number(raw, "reply-poll-interval", float, 0.0, 60.0),
        min_train_replies=_number(raw, "min-train-replies", int, 0),
        max_failed_rounds=_number(raw, "max-failed-rounds", int, 0),
        max_num_examples=_number(raw, "max-num-examples", int, 1),
        max_weight_ratio=_number(raw, "max-weight-ratio", float, 0.0),
        max_update_norm=_number(raw, "max-update-norm", float, 0.0),
        max_norm_ratio=_number(raw, "max-norm-ratio", float, 0.0),
        skip_timed_out_rounds=_number(raw, "skip-timed-out-rounds", int, 0),
        num_partitions=_number(raw, "num-partitions", int, 0),
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
        output_dir=_relative_path(raw, "output-dir"),
        run_name=_text(raw, "run-name"),
        resume=_relative_path(raw, "resume"),
    )
    if config.color_flip_min > config.color_flip_max:
        raise ConfigError(
            "run config: 'color-flip-min' must be <= 'color-flip-max', got "
            f"{config.color_flip_min} > {config.color_flip_max}"
        )
    if "/" in config.run_name or "\\" in config.run_name or config.run_name in (".", ".."):
        raise ConfigError(f"run config: 'run-name' must be a plain name, got {config.run_name!r}")
    for key, ratio in (("max-weight-ratio", config.max_weight_ratio), ("max-norm-ratio", config.max_norm_ratio)):
        if 0 < ratio < 1:
            raise ConfigError(f"run config: {key!r} must be 0 (no bound) or >= 1, got {ratio}")
    return config


def output_root(environ: Mapping[str, str] | None = None) -> Path:
    """The folder every run's outputs go below: ``$FEDGMA_OUTPUT_ROOT``, else ``./outputs``.

    Set by whoever runs the ServerApp's process (the SuperLink's operator), never by a run.
    """
    value = (os.environ if environ is None else environ).get(OUTPUT_ROOT_ENV, "")
    return Path(value).expanduser().resolve() if value else (Path.cwd() / "outputs").resolve()


def run_path(root: Path, key: str, *parts: str) -> Path:
    """``root / parts``, refused with a message naming ``key`` if it leaves ``root``.

    The settings are checked when parsed; this also catches a symbolic link below the
    root that points elsewhere.
    """
    root = root.resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"run config: {key!r} leads to {path}, outside the output root {root}")
    return path


def partition_bindings(environ: Mapping[str, str] | None = None) -> dict[int, int] | None:
    """The operator's node-to-partition bindings: the JSON file named by
    ``$FEDGMA_PARTITION_BINDINGS`` (``{"<node id>": <partition id>, ...}``, as
    ``python -m fedgma.lab.deploy register`` writes it); None when unset.

    Set by whoever runs the ServerApp's process (the SuperLink's operator), never by a run.
    """
    value = (os.environ if environ is None else environ).get(BINDINGS_ENV, "")
    if not value:
        return None
    path = Path(value).expanduser()
    try:
        raw = json.loads(path.read_text())
        bindings = {int(node): partition for node, partition in raw.items()}
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"environment: {BINDINGS_ENV}={value}: not a readable JSON object of "
                          f'{{"<node id>": <partition id>}}: {err}') from err
    bad = {node: p for node, p in bindings.items() if isinstance(p, bool) or not isinstance(p, int) or p < 0}
    if bad or not bindings:
        raise ConfigError(f"environment: {BINDINGS_ENV}={value}: partition ids must be integers >= 0 "
                          f"and at least one node bound, got {bad or raw}")
    return bindings


@dataclass(frozen=True)
class DataSource:
    """Where a host keeps its data sets, and whether a missing one may be downloaded."""

    path: Path
    download: bool


def _environment_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ConfigError(f"environment: {name} must be true or false, got {value!r}")


def data_source(
    node_config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> DataSource:
    """This host's :class:`DataSource`: node config, else environment, else defaults.

    ``data-dir`` / ``download`` in ``--node-config``, else ``$FEDGMA_DATA_DIR`` /
    ``$FEDGMA_DOWNLOAD``, else ``~/.cache/fedgma`` and ``true``. The ServerApp has no
    node config: its central test sets come from its environment.
    """
    node_config = node_config or {}
    environ = os.environ if environ is None else environ
    folder = node_config["data-dir"] if "data-dir" in node_config else environ.get(DATA_DIR_ENV, "")
    if not isinstance(folder, str):
        raise ConfigError(f"node config: 'data-dir' must be a string, got {folder!r}")
    if "download" in node_config:
        download = node_config["download"]
        if not isinstance(download, bool):
            raise ConfigError(f"node config: 'download' must be true or false, got {download!r}")
    else:
        download = _environment_flag(environ, DOWNLOAD_ENV, True)
    path = Path(folder).expanduser() if folder else Path.home() / ".cache" / "fedgma"
    return DataSource(path=path, download=download)


@dataclass(frozen=True)
class NodeIdentity:
    """A client's place in the federation and its data, from ``--node-config``."""

    partition_id: int
    num_partitions: int
    data: DataSource
    device: str  # "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"


NODE_KEYS = ("partition-id", "num-partitions", "data-dir", "download", "device")


def _device(raw: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    """``device`` from the node config, else ``$FEDGMA_DEVICE``, else ``auto``."""
    value = raw["device"] if "device" in raw else environ.get(DEVICE_ENV, "") or "auto"
    named = isinstance(value, str) and (
        value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    )
    if not named:
        raise ConfigError(f"node config: 'device' must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def parse_node_config(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> NodeIdentity:
    """Validate ``context.node_config``: ``partition-id``, ``num-partitions`` and,
    optionally, ``data-dir`` and ``download`` (see :func:`data_source`) and ``device``
    (else ``$FEDGMA_DEVICE``, else ``auto``)."""
    unknown = sorted(set(raw) - set(NODE_KEYS))
    if unknown:
        raise ConfigError(f"node config: unknown key(s) {unknown}; known: {', '.join(NODE_KEYS)}")
    num_partitions = _number(raw, "num-partitions", int, 1, where="node config")
    partition_id = _number(raw, "partition-id", int, 0, num_partitions - 1, where="node config")
    environ = os.environ if environ is None else environ
    return NodeIdentity(
        partition_id=partition_id, num_partitions=num_partitions, data=data_source(raw, environ),
        device=_device(raw, environ),
    )

